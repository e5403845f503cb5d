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

    /// The interpreter's reduction of x over `axes`: kind 0 sum, 1 mean, 2 max.
    static func reduced(_ x: HostTensor, axes: [Int], kind: Int, _ type: TensorType) -> HostTensor {
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
    }

    /// The result shape of reducing `shape` over `axes`.
    static func resultShape(_ shape: [Int], _ attrs: Attributes, axes: [Int]) throws -> [Int] {
        let keep = try attrs["keepdims"] == nil ? false : attrs.bool("keepdims")
        return keep ? keptShape(shape, axes) : shape.indices.filter { !axes.contains($0) }.map { shape[$0] }
    }

    /// The reduce kernel's ints: kind, rank, the shape and a flag per reduced axis.
    static func kernelInts(kind: Int, _ x: TensorType, axes: [Int]) -> [Int] {
        [kind, x.rank] + x.shape + x.shape.indices.map { axes.contains($0) ? 1 : 0 }
    }

    /// What fused_reduce computes, by its `kind` attribute.
    public static let fusedKinds = ["sum": 0, "mean": 1, "max": 2]

    static func reduction(_ name: String, kind: Int, _ doc: String, gradient: @escaping OpSpec.GradientRule) -> OpSpec {
        OpSpec(name: name, doc: doc, arity: 1...1, requiredAttributes: ["axes"],
               inferType: { operands, attrs in
                   let x = operands[0]
                   guard x.dtype.isFloat else { throw IRError("needs a floating-point operand") }
                   return x.with(shape: try resultShape(x.shape, attrs, axes: try axes(attrs, rank: x.rank)))
               },
               evaluate: { operands, attrs, type in
                   reduced(operands[0], axes: try axes(attrs, rank: operands[0].type.rank), kind: kind, type)
               },
               gradient: gradient,
               lowering: .kernels { operands, _, attrs in
                   let x = operands[0]
                   let axes = try axes(attrs, rank: x.rank)
                   return [KernelCall("reduce", [.operand(0), .result], ints: kernelInts(kind: kind, x, axes: axes))]
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

    /// reduce_<kind> of an elementwise expression of same-shaped operands,
    /// which fuse-reductions builds from a reduction and its elementwise
    /// producer: the producer's values are computed in cache, chunk by
    /// chunk, and never stored. Made after autodiff, so it has no gradient.
    static let fusedReduce = OpSpec(
        name: "fused_reduce",
        doc: "%r = fused_reduce(%a, ...) {kind=\"sum\", expr=mul(in0, in1), axes=[...], keepdims=false}: reduce_<kind> of expr over same-shaped operands",
        arity: 1...63, requiredAttributes: ["kind", "expr", "axes"],
        inferType: { operands, attrs in
            let x = operands[0]
            guard fusedKinds[try attrs.string("kind")] != nil else {
                throw IRError("kind=\"\(try attrs.string("kind"))\" is not one of \(fusedKinds.keys.sorted())")
            }
            guard operands.allSatisfy({ $0.shape == x.shape && $0.dtype.isFloat }) else {
                throw IRError("operands must be floating-point tensors of one shape, got \(operands.map(\.description))")
            }
            let expr = try attrs.expr("expr")
            guard expr.inputCount <= operands.count else {
                throw IRError("expression uses in\(expr.inputCount - 1) but has \(operands.count) operands")
            }
            return x.with(shape: try resultShape(x.shape, attrs, axes: try axes(attrs, rank: x.rank)))
        },
        evaluate: { operands, attrs, type in
            let input = operands[0].type
            let values = evaluateElementwise(try attrs.expr("expr"), operands, input)
            return reduced(values, axes: try axes(attrs, rank: input.rank), kind: fusedKinds[try attrs.string("kind")]!, type)
        },
        gradient: nil,
        lowering: .kernelOverLoop(expr: { attrs in try attrs.expr("expr") }, kernel: { operands, _, attrs in
            let x = operands[0], kind = fusedKinds[try attrs.string("kind")]!
            return KernelCall("reduce_loop", [.result] + operands.indices.map { .operand($0) },
                              ints: kernelInts(kind: kind, x, axes: try axes(attrs, rank: x.rank)) + [operands.count])
        }),
        examples: [([f([2, 3, 4]), f([2, 3, 4])], ["kind": .string("sum"), "axes": .ints([0, 2]),
                                                  "expr": .expr(.binary(.mul, .input(0), .input(1)))]),
                   ([f([3, 5])], ["kind": .string("mean"), "axes": .ints([-1]), "keepdims": .bool(true),
                                  "expr": .expr(.binary(.mul, .binary(.sub, .input(0), .const(0.5)), .binary(.sub, .input(0), .const(0.5))))]),
                   ([f([4, 6]), f([4, 6])], ["kind": .string("max"), "axes": .ints([0]),
                                             "expr": .expr(.binary(.add, .input(0), .unary(.exp, .input(1))))])])

    public static let all: [OpSpec] = [
        fusedReduce,
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
