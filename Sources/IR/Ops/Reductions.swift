/// Reductions over a set of axes: reduce_sum, reduce_mean, reduce_max.
public enum ReductionOps {
    static let f = TensorType.f32

    /// Normalized, sorted, unique axes; negative axes count from the end.
    static func axes(_ attrs: Attributes, rank: Int) throws -> [Int] {
        let raw = try attrs.ints("axes")
        let normalized = raw.map { $0 < 0 ? $0 + rank : $0 }
        guard normalized.allSatisfy({ (0..<rank).contains($0) }), Set(normalized).count == normalized.count else {
            throw IRError("axes \(raw) are not distinct axes of a rank-\(rank) tensor")
        }
        return normalized.sorted()
    }

    static func keptShape(_ shape: [Int], _ axes: [Int]) -> [Int] {
        shape.indices.map { axes.contains($0) ? 1 : shape[$0] }
    }

    static func reduction(_ name: String, kind: Int, _ doc: String, gradient: @escaping OpSpec.GradientRule) -> OpSpec {
        OpSpec(name: name, doc: doc, arity: 1...1, requiredAttributes: ["axes"],
               inferType: { operands, attrs in
                   let x = operands[0]
                   guard x.dtype.isFloat else { throw IRError("needs a floating-point operand") }
                   let axes = try axes(attrs, rank: x.rank)
                   let keep = try attrs["keepdims"] == nil ? false : attrs.bool("keepdims")
                   let shape = keep ? keptShape(x.shape, axes) : x.shape.indices.filter { !axes.contains($0) }.map { x.shape[$0] }
                   return x.with(shape: shape)
               },
               evaluate: { operands, attrs, type in
                   let x = operands[0]
                   let axes = try axes(attrs, rank: x.type.rank)
                   let kept = TensorType(.f64, keptShape(x.shape, axes))
                   let indexer = BroadcastIndexer(from: kept.shape, to: x.shape)
                   var acc = [Double](repeating: kind == 2 ? -.infinity : 0, count: kept.count)
                   for i in 0..<x.data.count {
                       let o = indexer.sourceIndex(i)
                       acc[o] = kind == 2 ? max(acc[o], x.data[i]) : acc[o] + x.data[i]
                   }
                   if kind == 1 {
                       let n = Double(x.data.count / max(kept.count, 1))
                       acc = acc.map { $0 / n }
                   }
                   return HostTensor(type, acc)
               },
               gradient: gradient,
               lowering: .kernels { operands, _, attrs in
                   let x = operands[0]
                   let axes = try axes(attrs, rank: x.rank)
                   return [KernelCall("reduce", [.operand(0), .result],
                                      ints: [kind, x.rank] + x.shape + x.shape.indices.map { axes.contains($0) ? 1 : 0 })]
               },
               examples: [([f([2, 3, 4])], ["axes": .ints([0, 2])]),
                          ([f([2, 3])], ["axes": .ints([-1]), "keepdims": .bool(true)])])
    }

    /// g reshaped to keep the reduced axes, broadcast back to x's shape.
    static func expand(_ c: GradientContext) throws -> Value {
        let x = c.operands[0]
        let axes = try axes(c.attrs, rank: x.rank)
        return try c.builder.broadcast(try c.builder.reshape(c.grad, keptShape(x.shape, axes)), to: x.shape)
    }

    public static let all: [OpSpec] = [
        /// ∂x = broadcast(g)
        reduction("reduce_sum", kind: 0, "%r = reduce_sum(%x) {axes=[...], keepdims=false}: Σ over axes") { c in
            [try expand(c)]
        },
        /// ∂x = broadcast(g)/n
        reduction("reduce_mean", kind: 1, "%r = reduce_mean(%x) {axes=[...], keepdims=false}: mean over axes") { c in
            let n = Double(c.operands[0].type.count / max(c.result.type.count, 1))
            return [try c.builder.mul(try expand(c), try c.builder.constant(1 / n, like: c.grad))]
        },
        /// ∂x = broadcast(g)·[x = max]  (ties all receive the gradient)
        reduction("reduce_max", kind: 2, "%r = reduce_max(%x) {axes=[...], keepdims=false}: max over axes") { c in
            let b = c.builder, x = c.operands[0]
            let axes = try axes(c.attrs, rank: x.rank)
            let maxima = try b.broadcast(try b.reshape(c.result, keptShape(x.shape, axes)), to: x.shape)
            return [try b.mul(try expand(c), try b.compare(.eq, x, maxima))]
        },
    ]
}

extension FunctionBuilder {
    public func reduce(_ op: String, _ x: Value, axes: [Int], keepDims: Bool = false) throws -> Value {
        var attrs: Attributes = ["axes": .ints(axes)]
        if keepDims { attrs["keepdims"] = .bool(true) }
        return try emit(op, [x], attrs)
    }
    public func sum(_ x: Value, axes: [Int], keepDims: Bool = false) throws -> Value {
        try reduce("reduce_sum", x, axes: axes, keepDims: keepDims)
    }
    public func mean(_ x: Value, axes: [Int], keepDims: Bool = false) throws -> Value {
        try reduce("reduce_mean", x, axes: axes, keepDims: keepDims)
    }
}
