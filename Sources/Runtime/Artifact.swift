import ABI
import DDPKernels
import Foundation
import IR

/// A compiled artifact directory (`NAME.ddepc/`), checked and loaded.
public struct Artifact {
    public let directory: URL
    public let manifest: Manifest

    /// Reads and checks the manifest: format, version, kernel ABI and the
    /// hash of `final.ddir` must all match this ddepc.
    public init(directory: URL) throws {
        self.directory = directory
        let fm = FileManager.default
        let manifestURL = directory.appendingPathComponent("manifest.json")
        guard fm.fileExists(atPath: manifestURL.path) else {
            throw RuntimeError("\(directory.path) is not a ddepc artifact (no manifest.json). Create one with `ddepc compile MODEL -o \(directory.lastPathComponent)`.")
        }
        let manifest: Manifest
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: manifestURL))
        } catch {
            throw RuntimeError("\(manifestURL.path) is damaged (\(Self.describe(error))). Recompile the model with `ddepc compile`.")
        }
        guard manifest.format == Manifest.formatVersion, manifest.ddepcVersion == ddepcVersion else {
            throw RuntimeError("\(directory.path) was built by ddepc \(manifest.ddepcVersion) (format \(manifest.format)); this is ddepc \(ddepcVersion). Recompile it with `ddepc compile`.")
        }
        guard manifest.kernelABI == KernelTable.abiHash else {
            throw RuntimeError("\(directory.path) was built against a different runtime kernel table. Recompile it with `ddepc compile`.")
        }
        let irURL = directory.appendingPathComponent("final.ddir")
        guard let ir = try? String(contentsOf: irURL, encoding: .utf8), Hashing.fnv1a(ir) == manifest.irHash else {
            throw RuntimeError("\(irURL.path) is missing or does not match the manifest's IR hash \(manifest.irHash): the artifact was modified or is incomplete. Recompile it with `ddepc compile`.")
        }
        try Self.checkFingerprint(of: manifest, against: ir, manifestURL: manifestURL)
        self.manifest = manifest
    }

    /// The generated code addresses its buffers by the layout in the
    /// manifest, which the IR hash does not cover: an edited size, batch,
    /// offset or byte count would make the code write outside its buffers,
    /// an edited β train with the wrong bias corrections. So they must match
    /// what the compile recorded in `final.ddir`.
    static func checkFingerprint(of manifest: Manifest, against ir: String, manifestURL: URL) throws {
        let recompile = "the artifact was modified. Recompile it with `ddepc compile`."
        guard let recorded = ArtifactFingerprint(firstLineOf: ir) else {
            throw RuntimeError("\(manifestURL.deletingLastPathComponent().path)/final.ddir does not start with the artifact's fingerprint; \(recompile)")
        }
        let expected = ArtifactFingerprint(manifest)
        guard (recorded.batch, recorded.size, recorded.classes) == (expected.batch, expected.size, expected.classes) else {
            throw RuntimeError("\(manifestURL.path) does not match its final.ddir (batch \(manifest.batch), size \(manifest.size), \(manifest.classes) classes vs batch \(recorded.batch), size \(recorded.size), \(recorded.classes) classes in the IR); \(recompile)")
        }
        guard recorded.contractHash == expected.contractHash else {
            throw RuntimeError("\(manifestURL.path) does not match its final.ddir (the buffer layout or the optimizer's constants differ); \(recompile)")
        }
    }

    /// A decoding failure in words: which field and what is wrong with it.
    static func describe(_ error: Error) -> String {
        func field(_ path: [CodingKey]) -> String {
            path.map { $0.intValue.map { "[\($0)]" } ?? "." + $0.stringValue }.joined().drop { $0 == "." }.description
        }
        switch error as? DecodingError {
        case .keyNotFound(let key, let context)?:
            let parent = field(context.codingPath)
            return "it lacks \"\(parent.isEmpty ? "" : parent + ".")\(key.stringValue)\""
        case .typeMismatch(_, let context)?, .valueNotFound(_, let context)?:
            return "\"\(field(context.codingPath))\" has the wrong type or is null"
        case .dataCorrupted(let context)?:
            return context.codingPath.isEmpty ? "it is not valid JSON" : "\"\(field(context.codingPath))\" is invalid"
        default:
            return FileProblem.message(error) ?? "\(error)"
        }
    }

    public var finalIR: String {
        get throws { try String(contentsOf: directory.appendingPathComponent("final.ddir"), encoding: .utf8) }
    }

    public func load() throws -> LoadedModule {
        let library = directory.appendingPathComponent("module.so")
        // dlopen of a truncated library can crash the process (SIGBUS), not fail.
        if let expected = manifest.moduleHash {
            guard let data = try? Data(contentsOf: library) else {
                throw RuntimeError("\(library.path) is missing or unreadable. Recompile the artifact with `ddepc compile`.")
            }
            guard Hashing.fnv1a(data) == expected else {
                throw RuntimeError("\(library.path) does not match the manifest's module hash \(expected): it was truncated, replaced or modified. Recompile the artifact with `ddepc compile`.")
            }
        }
        return try LoadedModule(library: library, layout: manifest.layout)
    }
}

/// A dlopen'ed `module.so`: owns the handle and closes it once.
public final class LoadedModule {
    private let handle: UnsafeMutableRawPointer
    private var entries: [String: ddp_entry_fn] = [:]
    public let layout: BufferLayout

    public init(library: URL, layout: BufferLayout) throws {
        guard let handle = dlopen(library.path, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "unknown reason"
            throw RuntimeError("cannot load \(library.path): \(reason). Recompile the artifact with `ddepc compile`.")
        }
        self.handle = handle
        self.layout = layout
        for entry in layout.entries {
            guard let symbol = dlsym(handle, "ddp_" + entry.name) else {
                dlclose(handle)
                throw RuntimeError("\(library.path) lacks entry point ddp_\(entry.name). Recompile the artifact.")
            }
            entries[entry.name] = unsafeBitCast(symbol, to: ddp_entry_fn.self)
        }
    }

    deinit { dlclose(handle) }

    public func hasEntry(_ name: String) -> Bool { entries[name] != nil }

    /// Fills the prepared state entry point `name` reads (its `preparedBy`:
    /// the filters of inference's Winograd convolutions, transformed) from
    /// the weights as they are now; nothing when it has none. Call it after
    /// setting the weights, and again after any change to them.
    public func prepareWeights(for name: String, params: UnsafeMutableRawPointer, state: UnsafeMutableRawPointer) throws {
        guard let preparer = layout.entry(name)?.preparedBy.flatMap(layout.entry) else { return }
        let io = AlignedBuffer(byteCount: preparer.ioBytes), arena = AlignedBuffer(byteCount: preparer.arenaBytes)
        try call(preparer.name, params: params, state: state, io: io.pointer, arena: arena.pointer)
    }

    /// Calls an entry point with the four buffers; `kernels` may be the
    /// profiling table (`ddp_profiling_kernel_table()`).
    public func call(_ name: String, params: UnsafeMutableRawPointer, state: UnsafeMutableRawPointer,
                     io: UnsafeMutableRawPointer, arena: UnsafeMutableRawPointer,
                     kernels: UnsafePointer<ddp_kernel_fn?> = ddp_kernel_table()) throws {
        guard let function = entries[name] else { throw RuntimeError("the artifact has no entry point '\(name)'") }
        func bytes(_ pointer: UnsafeMutableRawPointer) -> UnsafeMutablePointer<CChar> { pointer.assumingMemoryBound(to: CChar.self) }
        var buffers = ddp_buffers(params: bytes(params), state: bytes(state), io: bytes(io), arena: bytes(arena))
        let status = withUnsafePointer(to: &buffers) { ddp_run_entry(function, $0, kernels) } // denormals flushed
        guard Int(status) == Int(DDP_OK) else {
            let reason: String
            switch Int(status) {
            case Int(DDP_ERR_NOMEM): reason = "a kernel could not get its working memory; free memory or use a smaller --batch or --size"
            case Int(DDP_ERR_ARGS): reason = "a kernel was given arguments it cannot run (the artifact does not match this ddepc); recompile it with `ddepc compile`"
            case Int(DDP_ERR_COMM): reason = "the gradient exchange between the processes failed (\(String(cString: ddp_mpi_last_error())))"
            default: reason = "status \(status)"
            }
            throw RuntimeError("entry point \(name) stopped: \(reason). Its outputs were not written.")
        }
    }
}

/// A 64-byte-aligned, zeroed byte buffer that frees itself.
///
/// Large buffers are anonymous mappings: the kernel hands out zero pages as
/// they are first written, so bytes a run never touches (the Adam moments of
/// a frozen encoder during DDeP, an arena's unused tail) take no memory.
public final class AlignedBuffer {
    public let pointer: UnsafeMutableRawPointer
    public let byteCount: Int
    private let mapped: Bool

    /// Below this, an ordinary allocation (a mapping costs a system call and a page).
    static let mappingThreshold = 1 << 20

    public init(byteCount: Int) {
        self.byteCount = byteCount
        let length = max(byteCount, 64)
        if length >= Self.mappingThreshold,
           let region = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
           region != MAP_FAILED {
            pointer = region  // page-aligned and zero-filled
            mapped = true
            // Huge pages where the system gives them on request: the kernels
            // stride through activations megabytes apart, and with 4 KiB
            // pages every stride is a TLB miss.
            _ = madvise(region, length, MADV_HUGEPAGE)
        } else {
            pointer = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 64)
            pointer.initializeMemory(as: UInt8.self, repeating: 0, count: length)
            mapped = false
        }
    }

    deinit {
        if mapped { munmap(pointer, max(byteCount, 64)) } else { pointer.deallocate() }
    }

    public func floats(at offset: Int, count: Int) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: (pointer + offset).assumingMemoryBound(to: Float.self), count: count)
    }
}
