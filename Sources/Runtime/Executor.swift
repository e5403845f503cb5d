import ABI
import DDPKernels
import Foundation
import IR

/// Calls any entry point of a loaded artifact with named host tensors — the
/// bridge the numeric tests and evaluation use to compare compiled code
/// with the reference interpreter.
public final class Executor {
    public let artifact: Artifact
    public let store: ParameterStore
    let module: LoadedModule

    public init(artifact: Artifact) throws {
        self.artifact = artifact
        module = try artifact.load()
        store = ParameterStore(layout: artifact.manifest.layout)
    }

    /// Set a weight or state tensor by name.
    public func set(_ name: String, _ tensor: HostTensor) throws {
        let layout = artifact.manifest.layout
        if let slot = layout.param(name) {
            write(tensor, to: store.params.pointer + slot.offset, slot: slot)
        } else if let slot = layout.stateSlot(name) {
            write(tensor, to: store.state.pointer + slot.offset, slot: slot)
        } else {
            throw RuntimeError("the artifact has no weight or state named \"\(name)\"")
        }
    }

    /// Read a weight or state tensor by name.
    public func get(_ name: String) throws -> HostTensor {
        let layout = artifact.manifest.layout
        if let slot = layout.param(name) { return read(store.params.pointer + slot.offset, slot: slot) }
        if let slot = layout.stateSlot(name) { return read(store.state.pointer + slot.offset, slot: slot) }
        throw RuntimeError("the artifact has no weight or state named \"\(name)\"")
    }

    /// Run `entry` with the given inputs; returns its outputs by name.
    public func run(_ entry: String, inputs: [String: HostTensor]) throws -> [String: HostTensor] {
        let call = try prepare(entry, inputs: inputs)
        try call.run()
        var outputs: [String: HostTensor] = [:]
        for slot in call.layout.outputs { outputs[slot.name] = read(call.io.pointer + slot.offset, slot: slot) }
        return outputs
    }

    /// An entry point with its inputs written, its buffers allocated and its
    /// weights prepared (`LoadedModule.prepareWeights`), to be called again
    /// and again with nothing else done per call (benchmarks) while the
    /// weights stay as they are.
    public final class PreparedCall {
        let executor: Executor
        public let layout: BufferLayout.Entry
        let io: AlignedBuffer
        let arena: AlignedBuffer

        init(executor: Executor, layout: BufferLayout.Entry) {
            self.executor = executor
            self.layout = layout
            io = AlignedBuffer(byteCount: layout.ioBytes)
            arena = AlignedBuffer(byteCount: layout.arenaBytes)
        }

        public func run(kernels: UnsafePointer<ddp_kernel_fn?> = ddp_kernel_table()) throws {
            try executor.module.call(layout.name, params: executor.store.params.pointer, state: executor.store.state.pointer,
                                     io: io.pointer, arena: arena.pointer, kernels: kernels)
        }
    }

    public func prepare(_ entry: String, inputs: [String: HostTensor]) throws -> PreparedCall {
        guard let layout = artifact.manifest.layout.entry(entry) else { throw RuntimeError("no entry point \(entry)") }
        try module.prepareWeights(for: entry, params: store.params.pointer, state: store.state.pointer)
        let call = PreparedCall(executor: self, layout: layout)
        for slot in layout.inputs {
            guard let tensor = inputs[slot.name] else { throw RuntimeError("entry \(entry) needs input \"\(slot.name)\"") }
            write(tensor, to: call.io.pointer + slot.offset, slot: slot)
        }
        return call
    }

    private func write(_ tensor: HostTensor, to pointer: UnsafeMutableRawPointer, slot: BufferLayout.Slot) {
        precondition(tensor.data.count == slot.shape.reduce(1, *), "\(slot.name): \(tensor.data.count) values for \(slot.shape)")
        for (i, v) in tensor.data.enumerated() {
            switch DType(rawValue: slot.dtype)! {
            case .f32: pointer.storeBytes(of: Float(v), toByteOffset: 4 * i, as: Float.self)
            case .f64: pointer.storeBytes(of: v, toByteOffset: 8 * i, as: Double.self)
            case .i32: pointer.storeBytes(of: Int32(v), toByteOffset: 4 * i, as: Int32.self)
            case .i64: pointer.storeBytes(of: Int64(v), toByteOffset: 8 * i, as: Int64.self)
            }
        }
    }

    private func read(_ pointer: UnsafeMutableRawPointer, slot: BufferLayout.Slot) -> HostTensor {
        let dtype = DType(rawValue: slot.dtype)!
        let count = slot.shape.reduce(1, *)
        let data: [Double] = (0..<count).map { i in
            switch dtype {
            case .f32: return Double(pointer.load(fromByteOffset: 4 * i, as: Float.self))
            case .f64: return pointer.load(fromByteOffset: 8 * i, as: Double.self)
            case .i32: return Double(pointer.load(fromByteOffset: 4 * i, as: Int32.self))
            case .i64: return Double(pointer.load(fromByteOffset: 8 * i, as: Int64.self))
            }
        }
        return HostTensor(TensorType(dtype, slot.shape), data)
    }
}
