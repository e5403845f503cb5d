import Codegen
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
            throw RuntimeError("\(manifestURL.path) is damaged (\(error)). Recompile the model with `ddepc compile`.")
        }
        guard manifest.format == Manifest.formatVersion, manifest.ddepcVersion == ddepcVersion else {
            throw RuntimeError("\(directory.path) was built by ddepc \(manifest.ddepcVersion) (format \(manifest.format)); this is ddepc \(ddepcVersion). Recompile it with `ddepc compile`.")
        }
        guard manifest.kernelABI == CompileDriver.kernelABIHash() else {
            throw RuntimeError("\(directory.path) was built against a different runtime kernel table. Recompile it with `ddepc compile`.")
        }
        let irURL = directory.appendingPathComponent("final.ddir")
        guard let ir = try? String(contentsOf: irURL, encoding: .utf8), Hashing.fnv1a(ir) == manifest.irHash else {
            throw RuntimeError("\(irURL.path) is missing or does not match the manifest's IR hash \(manifest.irHash): the artifact was modified or is incomplete. Recompile it with `ddepc compile`.")
        }
        self.manifest = manifest
    }

    public var finalIR: String {
        get throws { try String(contentsOf: directory.appendingPathComponent("final.ddir"), encoding: .utf8) }
    }

    public func load() throws -> LoadedModule {
        try LoadedModule(library: directory.appendingPathComponent("module.so"), layout: manifest.layout)
    }
}

/// A dlopen'ed `module.so`: owns the handle and closes it once.
public final class LoadedModule {
    typealias EntryFunction = @convention(c) (UnsafeRawPointer, UnsafeRawPointer) -> Int32

    private let handle: UnsafeMutableRawPointer
    private var entries: [String: EntryFunction] = [:]
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
            entries[entry.name] = unsafeBitCast(symbol, to: EntryFunction.self)
        }
    }

    deinit { dlclose(handle) }

    public func hasEntry(_ name: String) -> Bool { entries[name] != nil }

    /// Calls an entry point with the four buffers; `kernels` may be the
    /// profiling table (`ddp_profiling_kernel_table()`).
    public func call(_ name: String, params: UnsafeMutableRawPointer, state: UnsafeMutableRawPointer,
                     io: UnsafeMutableRawPointer, arena: UnsafeMutableRawPointer,
                     kernels: UnsafePointer<ddp_kernel_fn?> = ddp_kernel_table()) throws {
        guard let function = entries[name] else { throw RuntimeError("the artifact has no entry point '\(name)'") }
        var buffers: [UnsafeMutableRawPointer?] = [params, state, io, arena]
        let status = buffers.withUnsafeMutableBytes { raw in
            function(UnsafeRawPointer(raw.baseAddress!), UnsafeRawPointer(kernels))
        }
        guard status == 0 else { throw RuntimeError("entry point \(name) failed with status \(status)") }
    }
}

/// A 64-byte-aligned, zeroed byte buffer that frees itself.
public final class AlignedBuffer {
    public let pointer: UnsafeMutableRawPointer
    public let byteCount: Int

    public init(byteCount: Int) {
        self.byteCount = byteCount
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 64), alignment: 64)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, 64))
    }

    deinit { pointer.deallocate() }

    public func floats(at offset: Int, count: Int) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: (pointer + offset).assumingMemoryBound(to: Float.self), count: count)
    }
}
