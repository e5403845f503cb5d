import Foundation

/// The version written into every artifact; the runtime refuses artifacts
/// from another version (their ABI or numerics may differ).
public let ddepcVersion = "0.1.0"

/// `manifest.json` of an artifact directory.
public struct Manifest: Codable, Equatable {
    /// 2: final.ddir starts with the artifact's fingerprint; the manifest
    /// records the optimizer's settings.
    public static let formatVersion = 2

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
    /// The Adam constants the training steps' updates were compiled with
    /// (nil: no step has an optimizer).
    public var optimizer: AdamSettings?

    public init(format: Int = Manifest.formatVersion, ddepcVersion: String = ABI.ddepcVersion, backend: String, irHash: String,
                kernelABI: String = KernelTable.abiHash, source: String, compileFlags: [String], batch: Int, size: Int,
                classes: Int, layout: BufferLayout, moduleHash: String?, dataParallel: Bool?, optimizer: AdamSettings?) {
        (self.format, self.ddepcVersion, self.backend, self.irHash, self.kernelABI) = (format, ddepcVersion, backend, irHash, kernelABI)
        (self.source, self.compileFlags, self.batch, self.size, self.classes) = (source, compileFlags, batch, size, classes)
        (self.layout, self.moduleHash, self.dataParallel, self.optimizer) = (layout, moduleHash, dataParallel, optimizer)
    }
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

/// The first line of an artifact's `final.ddir`: the manifest's batch, size
/// and classes, and a hash of its buffer layout and Adam constants. The IR
/// hash covers it, so a manifest edited alone (a size, an offset, an arena's
/// bytes: what the generated code trusts to stay inside its buffers; or the
/// β's the trainer's bias corrections are computed from) no longer matches
/// the IR it was compiled with, and the runtime checks that without parsing it.
public struct ArtifactFingerprint: Equatable, Sendable {
    public var batch: Int
    public var size: Int
    public var classes: Int
    /// FNV-1a 64 of the layout's and optimizer's JSON with sorted keys.
    public var contractHash: String

    struct Contract: Encodable {
        var layout: BufferLayout
        var optimizer: AdamSettings?
    }

    public init(batch: Int, size: Int, classes: Int, layout: BufferLayout, optimizer: AdamSettings?) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = (try? encoder.encode(Contract(layout: layout, optimizer: optimizer))) ?? Data()
        (self.batch, self.size, self.classes, self.contractHash) = (batch, size, classes, Hashing.fnv1a(json))
    }

    public init(_ manifest: Manifest) {
        self.init(batch: manifest.batch, size: manifest.size, classes: manifest.classes, layout: manifest.layout,
                  optimizer: manifest.optimizer)
    }

    static let prefix = "// ddepc artifact: "

    /// The comment line final.ddir starts with.
    public var line: String { Self.prefix + "batch \(batch), size \(size), \(classes) classes, layout and optimizer \(contractHash)" }

    /// The fingerprint `ir`'s first line records; nil when it has none.
    public init?(firstLineOf ir: String) {
        let line = ir.prefix { $0 != "\n" }
        guard line.hasPrefix(Self.prefix) else { return nil }
        let words = line.dropFirst(Self.prefix.count).split(separator: " ").map { $0.trimmingCharacters(in: .punctuationCharacters) }
        guard words.count == 10, words[0] == "batch", words[2] == "size", words[5] == "classes",
              words[6...8] == ["layout", "and", "optimizer"], let batch = Int(words[1]), let size = Int(words[3]),
              let classes = Int(words[4]) else { return nil }
        (self.batch, self.size, self.classes, self.contractHash) = (batch, size, classes, words[9])
    }
}
