import ABI
import Foundation
import IR

/// The weight and state buffers of one artifact: initialization from a seed,
/// and exchange with safetensors files by name.
public final class ParameterStore {
    public let layout: BufferLayout
    public let params: AlignedBuffer
    public let state: AlignedBuffer

    public init(layout: BufferLayout) {
        self.layout = layout
        params = AlignedBuffer(byteCount: layout.paramsBytes)
        state = AlignedBuffer(byteCount: layout.stateBytes)
    }

    /// Fill every slot by its init rule. Each tensor's numbers depend only on
    /// the seed and its name, not on the order of parameters.
    public func initialize(seed: UInt64) {
        for slot in layout.params { fill(slot, in: params, seed: seed) }
        for slot in layout.state { fill(slot, in: state, seed: seed) }
    }

    private func fill(_ slot: BufferLayout.Slot, in buffer: AlignedBuffer, seed: UInt64) {
        let count = slot.shape.reduce(1, *)
        let values = buffer.floats(at: slot.offset, count: count)
        var rng = SplitMix64(seed: seed ^ UInt64(Hashing.fnv1a(slot.name), radix: 16)!)
        func normal() -> Double {
            let u1 = Double((rng.next() >> 11) + 1) * 0x1p-53, u2 = Double(rng.next() >> 11) * 0x1p-53
            return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
        }
        func symmetric(_ bound: Double) -> Float { Float((Double(rng.next() >> 11) * 0x1p-53 * 2 - 1) * bound) }
        let rule = slot.initRule.flatMap(InitRule.init(text:)) ?? .zeros
        let std = rule.standardDeviation(shape: slot.shape)
        let bound = rule.uniformBound(shape: slot.shape) ?? 0
        for i in 0..<count {
            switch rule {
            case .zeros: if values[i] != 0 { values[i] = 0 }  // fresh buffers are zero: leave their pages untouched
            case .ones: values[i] = 1
            case .he, .heFanOut, .normal: values[i] = Float(normal() * std)
            case .kaimingUniform, .xavier, .uniform: values[i] = symmetric(bound)
            }
        }
    }

    public func values(_ name: String) -> [Float]? {
        if let slot = layout.param(name) { return Array(params.floats(at: slot.offset, count: slot.shape.reduce(1, *))) }
        if let slot = layout.stateSlot(name) { return Array(state.floats(at: slot.offset, count: slot.shape.reduce(1, *))) }
        return nil
    }

    /// Every parameter and state tensor, by name, for `body` to write: the
    /// tensors read the buffers in place, so the file is valid only inside
    /// `body` and while no step runs. Copied, a TransUNet checkpoint's 1.26 GB
    /// of weights and moments were held twice more while it was written
    /// (once per tensor, once as the file's bytes): a training process peaked
    /// at 4.3 GB for a step that needs 1.8.
    public func withExport<Result>(metadata: [String: String], _ body: (SafetensorsFile) throws -> Result) throws -> Result {
        var file = SafetensorsFile(metadata: metadata)
        for (slot, buffer) in savedSlots {
            let bytes = Data(bytesNoCopy: buffer.pointer + slot.offset, count: slot.shape.reduce(1, *) * MemoryLayout<Float>.stride,
                             deallocator: .none)
            try file.set(slot.name, SafetensorsTensor(dtype: .f32, shape: slot.shape, data: bytes))
        }
        return try body(file)
    }

    /// The slots a checkpoint holds, with their buffers: every parameter and
    /// the state not prepared from the weights (that is computed for this
    /// CPU, never saved or loaded).
    private var savedSlots: [(BufferLayout.Slot, AlignedBuffer)] {
        layout.params.map { ($0, params) } + layout.state.filter { !PreparedWeights.isPrepared($0.name) }.map { ($0, state) }
    }

    public struct LoadReport {
        public var loaded: [String] = []
        public var missing: [String] = []
        public var unexpected: [String] = []
    }

    /// Load tensors by name (those `including` accepts). A shape mismatch is
    /// always an error; missing names are an error unless `allowMissing`
    /// says which may be absent. Each tensor is read straight into its slot;
    /// after an error the store holds part of the file.
    @discardableResult
    public func load(_ source: some TensorSource, from path: String, including: (String) -> Bool = { _ in true },
                     allowMissing: (String) -> Bool = { _ in false }) throws -> LoadReport {
        var report = LoadReport()
        let available = Set(source.names.filter(including))
        let slots = savedSlots
        for (slot, buffer) in slots {
            guard available.contains(slot.name) else {
                report.missing.append(slot.name)
                continue
            }
            let (dtype, shape) = try source.typeAndShape(of: slot.name)
            guard shape == slot.shape, dtype == .f32 else {
                throw RuntimeError("\(path): tensor \"\(slot.name)\" is \(dtype.rawValue)\(shape) but the model needs F32\(slot.shape). Was it written for another model or size?")
            }
            let values = buffer.floats(at: slot.offset, count: slot.shape.reduce(1, *))
            try source.read(slot.name, into: UnsafeMutableRawBufferPointer(values))
            // NaN/Inf weights train "successfully" (ReLU maps NaN to 0 in the
            // loss) while every gradient is NaN: refuse them here.
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                let count = values.lazy.filter { !$0.isFinite }.count
                throw RuntimeError("\(path): tensor \"\(slot.name)\" holds \(values[bad]) (\(count) of its \(values.count) values are not finite, the first at index \(bad)); the file is damaged or comes from a diverged run. Use an earlier checkpoint.")
            }
            report.loaded.append(slot.name)
        }
        let known = Set(slots.map(\.0.name))
        report.unexpected = source.names.filter { including($0) && !known.contains($0) }
        let fatal = report.missing.filter { !allowMissing($0) }
        if !fatal.isEmpty {
            throw RuntimeError("\(path) lacks \(fatal.count) tensor(s) the model needs: \(fatal.prefix(8).joined(separator: ", "))\(fatal.count > 8 ? ", ..." : ""). Is it a checkpoint of this model?")
        }
        return report
    }
}

/// Named tensors a `ParameterStore` loads: a file read whole, or a file on
/// disk read a tensor at a time.
public protocol TensorSource {
    /// The tensor names, sorted.
    var names: [String] { get }
    func typeAndShape(of name: String) throws -> (SafetensorsDType, [Int])
    /// Copies tensor `name`'s bytes into `destination`, which is its size.
    func read(_ name: String, into destination: UnsafeMutableRawBufferPointer) throws
}

extension SafetensorsFile: TensorSource {
    public func typeAndShape(of name: String) throws -> (SafetensorsDType, [Int]) {
        let tensor = try tensor(name)
        return (tensor.dtype, tensor.shape)
    }

    public func read(_ name: String, into destination: UnsafeMutableRawBufferPointer) throws {
        let tensor = try tensor(name)
        precondition(destination.count == tensor.data.count, "a destination of \(destination.count) bytes for \(tensor.data.count)")
        _ = tensor.data.copyBytes(to: destination)
    }
}

extension SafetensorsFileReader: TensorSource {
    public func typeAndShape(of name: String) throws -> (SafetensorsDType, [Int]) {
        let tensor = try tensor(name)
        return (tensor.dtype, tensor.shape)
    }
}
