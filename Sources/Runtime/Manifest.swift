import Codegen
import Foundation

/// The version written into every artifact; the runtime refuses artifacts
/// from another version (their ABI or numerics may differ).
public let ddepcVersion = "0.1.0"

/// `manifest.json` of an artifact directory.
public struct Manifest: Codable, Equatable {
    public static let formatVersion = 1

    public var format: Int
    public var ddepcVersion: String
    public var backend: String
    /// FNV-1a 64 of `final.ddir`, hex.
    public var irHash: String
    /// Hash of the runtime kernel table's names, in order.
    public var kernelABI: String
    public var source: String
    public var compileFlags: [String]
    public var batch: Int
    public var size: Int
    public var classes: Int
    public var layout: BufferLayout
    /// FNV-1a 64 of `module.so`, hex: a truncated or swapped library is
    /// refused before it is loaded (nil in artifacts written before it existed).
    public var moduleHash: String?
    /// Compiled with --data-parallel: the steps average gradients over the
    /// processes of `mpirun -np N` (nil: a single-process artifact).
    public var dataParallel: Bool?
}

/// What the denoising head learns to predict (a run-time choice: the steps
/// take target_noise and target_image inputs).
public enum DenoiseTargetKind: String, CaseIterable, Codable, Sendable {
    /// The noise ε (the paper's better choice without an input-to-output skip).
    case eps
    /// The clean image x.
    case x
}

public enum Hashing {
    /// FNV-1a, 64-bit, as lowercase hex.
    public static func fnv1a(_ bytes: some Sequence<UInt8>) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return String(format: "%016llx", hash)
    }

    public static func fnv1a(_ text: String) -> String { fnv1a(Array(text.utf8)) }

    /// The same over a file's bytes, without generic iteration (a library is megabytes).
    public static func fnv1a(_ data: Data) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            guard let base = raw.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
            for index in 0..<raw.count {
                hash ^= UInt64(base[index])
                hash = hash &* 0x100_0000_01b3
            }
        }
        return String(format: "%016llx", hash)
    }
}

/// A user-facing runtime error: what went wrong, where, and what to do.
public struct RuntimeError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "error: \(message)" }
}
