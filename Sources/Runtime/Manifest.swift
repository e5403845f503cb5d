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
}

/// A user-facing runtime error: what went wrong, where, and what to do.
public struct RuntimeError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "error: \(message)" }
}
