import Foundation

/// softmax and log_softmax along one axis (numerically stable kernels).
public enum SoftmaxOps {
    static let f = TensorType.f32

    /// (outer, dim, inner) around `axis`.
    static func layout(_ shape: [Int], _ attrs: Attributes) throws -> (Int, Int, Int, Int) {
        var axis = try attrs.int("axis")
        if axis < 0 { axis += shape.count }
        guard (0..<shape.count).contains(axis) else { throw IRError("axis out of range for rank \(shape.count)") }
        return (shape[..<axis].reduce(1, *), shape[axis], shape[(axis + 1)...].reduce(1, *), axis)
    }

    static func op(_ name: String, log: Bool, doc: String, gradient: @escaping OpSpec.GradientRule) -> OpSpec {
        OpSpec(name: name, doc: doc, arity: 1...1, requiredAttributes: ["axis"],
               inferType: { operands, attrs in
                   _ = try layout(operands[0].shape, attrs)
                   return operands[0]
               },
               evaluate: { operands, attrs, type in
                   let (outer, dim, inner, _) = try layout(type.shape, attrs)
                   var out = operands[0].data
                   for o in 0..<outer {
                       for i in 0..<inner {
                           let idx = (0..<dim).map { (o * dim + $0) * inner + i }
                           let m = idx.map { out[$0] }.max() ?? 0
                           let total = idx.reduce(0) { $0 + Foundation.exp(operands[0].data[$1] - m) }
                           for j in idx {
                               out[j] = log ? operands[0].data[j] - m - Foundation.log(total)
                                            : Foundation.exp(operands[0].data[j] - m) / total
                           }
                       }
                   }
                   return HostTensor(type, out)
               },
               gradient: gradient,
               lowering: .kernels { operands, _, attrs in
                   let (outer, dim, inner, _) = try layout(operands[0].shape, attrs)
                   return [KernelCall(name, [.operand(0), .result], ints: [outer, dim, inner])]
               },
               examples: [([f([2, 3, 4])], ["axis": .int(1)]), ([f([2, 5])], ["axis": .int(-1)])],
               recomputable: true)
    }

    public static let all: [OpSpec] = [
        /// ∂x = r·(g − Σ g·r)
        op("softmax", log: false, doc: "%y = softmax(%x) {axis=-1}") { c in
            let b = c.builder
            let axis = try layout(c.result.shape, c.attrs).3
            let dot = try b.sum(try b.mul(c.grad, c.result), axes: [axis], keepDims: true)
            return [try b.mul(c.result, try b.sub(c.grad, dot))]
        },
        /// ∂x = g − exp(r)·Σ g
        op("log_softmax", log: true, doc: "%y = log_softmax(%x) {axis=-1}") { c in
            let b = c.builder
            let axis = try layout(c.result.shape, c.attrs).3
            let total = try b.sum(c.grad, axes: [axis], keepDims: true)
            return [try b.sub(c.grad, try b.mul(try b.unary("exp", c.result), total))]
        },
    ]
}
