import ABI
import Foundation

/// Checks a large request against the machine's memory before allocating:
/// Swift aborts the process when an allocation fails, so sizes that follow
/// from options (batch, image size, resize) are checked here first and
/// refused with how much was needed. Sizes are multiplied as Double, which
/// cannot overflow.
public enum MemoryBudget {
    /// Installed memory. A request beyond it cannot be served (swap aside).
    public static var physicalBytes: Double {
        Double(sysconf(Int32(_SC_PHYS_PAGES))) * Double(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Throws when `bytes` exceed the machine's memory: `what` needs them
    /// ("@pretrain_step (batch 100000)"), `advice` says what to do instead.
    public static func require(_ bytes: Double, for what: String, advice: String) throws {
        let available = physicalBytes
        guard bytes.isFinite, bytes <= available else {
            throw RuntimeError("\(what) needs \(ByteCount.text(bytes)) of memory, more than this machine has (\(ByteCount.text(available))); \(advice)")
        }
    }

    /// The memory one call of `entry` needs: weights, state, I/O and arena.
    public static func bytes(of entry: BufferLayout.Entry, in layout: BufferLayout) -> Double {
        Double(layout.paramsBytes) + Double(layout.stateBytes) + Double(entry.ioBytes) + Double(entry.arenaBytes)
    }

    /// Throws when running `entry` of `artifact` needs more than the machine's memory.
    public static func require(_ entry: BufferLayout.Entry, of artifact: Artifact) throws {
        let manifest = artifact.manifest
        try require(bytes(of: entry, in: manifest.layout),
                    for: "@\(entry.name) of \(artifact.directory.lastPathComponent) (batch \(manifest.batch), \(manifest.size)×\(manifest.size))",
                    advice: "recompile the model with a smaller --batch or --size (ddepc compile ... --batch N)")
    }
}
