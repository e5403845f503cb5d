import Foundation

/// Elementwise ops: one scalar expression each (ScalarExpr), numpy broadcasting.
/// Their evaluation and lowering both come from that expression.
public enum ElementwiseOps {
    static let f = TensorType.f32

    /// Build an elementwise op from its scalar expression.
    static func op(_ name: String, _ doc: String, arity: Int, _ expr: ScalarExpr,
                   examples: [[TensorType]]? = nil, gradient: OpSpec.GradientRule?) -> OpSpec {
        let defaultExamples: [[TensorType]] = arity == 1
            ? [[f([2, 3])]]
            : [[f([2, 3]), f([2, 3])], [f([2, 1, 3]), f([4, 1])], Array(repeating: f([3]), count: arity)]
        return OpSpec(
            name: name, doc: doc, arity: arity...arity,
            inferType: { operands, _ in try broadcastType(operands) },
            evaluate: { operands, _, type in evaluateElementwise(expr, operands, type) },
            gradient: gradient, lowering: .elementwise { _ in expr },
            examples: (examples ?? defaultExamples).map { ($0, [:]) })
    }

    static func broadcastType(_ operands: [TensorType]) throws -> TensorType {
        guard let first = operands.first else { throw IRError("needs at least one operand") }
        guard first.dtype.isFloat, operands.allSatisfy({ $0.dtype == first.dtype }) else {
            throw IRError("operands must share one floating-point element type")
        }
        guard let shape = broadcastShapes(operands.map(\.shape)) else {
            throw IRError("shapes do not broadcast")
        }
        return TensorType(first.dtype, shape)
    }

    static let x = ScalarExpr.input(0), y = ScalarExpr.input(1), z = ScalarExpr.input(2)
    static func un(_ fn: ScalarExpr.UnaryFn, _ a: ScalarExpr) -> ScalarExpr { .unary(fn, a) }
    static func bin(_ fn: ScalarExpr.BinaryFn, _ a: ScalarExpr, _ b: ScalarExpr) -> ScalarExpr { .binary(fn, a, b) }

    /// gelu(x) = x·Φ(x), Φ(x) = ½(1 + erf(x/√2))  (the exact, erf form)
    static let geluExpr = bin(.mul, x, bin(.mul, .const(0.5), bin(.add, .const(1), un(.erf, bin(.mul, x, .const(1 / 2.0.squareRoot()))))))
    /// ∂gelu/∂x · g = g·(Φ(x) + x·φ(x)), φ(x) = exp(−x²/2)/√(2π); operands (x, g)
    static let geluGradExpr = bin(.mul, y, bin(.add,
        bin(.mul, .const(0.5), bin(.add, .const(1), un(.erf, bin(.mul, x, .const(1 / 2.0.squareRoot()))))),
        bin(.mul, x, bin(.mul, .const(1 / (2 * Double.pi).squareRoot()),
                         un(.exp, bin(.mul, .const(-0.5), bin(.mul, x, x)))))))

    public static let all: [OpSpec] = [
        /// ∂a = g, ∂b = g
        op("add", "%r = add(%a, %b): a + b", arity: 2, bin(.add, x, y)) { c in [c.grad, c.grad] },
        /// ∂a = g, ∂b = −g
        op("sub", "%r = sub(%a, %b): a − b", arity: 2, bin(.sub, x, y)) { c in
            [c.grad, try c.builder.neg(c.grad)]
        },
        /// ∂a = g·b, ∂b = g·a
        op("mul", "%r = mul(%a, %b): a · b", arity: 2, bin(.mul, x, y)) { c in
            [try c.builder.mul(c.grad, c.operands[1]), try c.builder.mul(c.grad, c.operands[0])]
        },
        /// ∂a = g/b, ∂b = −g·r/b
        op("div", "%r = div(%a, %b): a / b", arity: 2, bin(.div, x, y),
           examples: [[f([2, 3]), f([2, 3])], [f([2, 3]), f([3])]]) { c in
            let b = c.builder
            let ga = try b.div(c.grad, c.operands[1])
            return [ga, try b.neg(try b.mul(ga, c.result))]
        },
        /// ∂a = g·[a ≥ b], ∂b = g·[b > a]
        op("maximum", "%r = maximum(%a, %b): max(a, b)", arity: 2, bin(.max, x, y)) { c in
            let b = c.builder
            return [try b.mul(c.grad, try b.compare(.ge, c.operands[0], c.operands[1])),
                    try b.mul(c.grad, try b.compare(.gt, c.operands[1], c.operands[0]))]
        },
        /// ∂a = g·[a ≤ b], ∂b = g·[b < a]
        op("minimum", "%r = minimum(%a, %b): min(a, b)", arity: 2, bin(.min, x, y)) { c in
            let b = c.builder
            return [try b.mul(c.grad, try b.compare(.ge, c.operands[1], c.operands[0])),
                    try b.mul(c.grad, try b.compare(.gt, c.operands[0], c.operands[1]))]
        },
        op("greater", "%r = greater(%a, %b): 1 where a > b else 0", arity: 2, bin(.gt, x, y), gradient: nil),
        op("greater_equal", "%r = greater_equal(%a, %b): 1 where a ≥ b else 0", arity: 2, bin(.ge, x, y), gradient: nil),
        op("equal", "%r = equal(%a, %b): 1 where a = b else 0", arity: 2, bin(.eq, x, y), gradient: nil),
        /// ∂c = none, ∂a = g·[c > 0], ∂b = g·[c ≤ 0]
        op("select", "%r = select(%c, %a, %b): c > 0 ? a : b", arity: 3, .select(x, y, z),
           examples: [[f([2, 3]), f([2, 3]), f([2, 3])], [f([2, 3]), f([3]), f([2, 1])]]) { c in
            let b = c.builder
            let zero = try b.constant(0, like: c.grad)
            return [nil, try b.select(c.operands[0], c.grad, zero), try b.select(c.operands[0], zero, c.grad)]
        },
        /// ∂x = −g
        op("neg", "%r = neg(%x): −x", arity: 1, un(.neg, x)) { c in [try c.builder.neg(c.grad)] },
        /// ∂x = g·[r > 0]  (r > 0 exactly where x > 0)
        op("relu", "%r = relu(%x): max(x, 0)", arity: 1, bin(.max, x, .const(0))) { c in
            let b = c.builder
            // From the result, not the input: the next layer keeps the result
            // anyway, so the input (a norm's output) can die after the forward.
            return [try b.mul(c.grad, try b.compare(.gt, c.result, try b.constant(0, like: c.result)))]
        },
        /// ∂x = g·r·(1 − r)
        op("sigmoid", "%r = sigmoid(%x): 1/(1 + e^−x)", arity: 1, un(.sigmoid, x)) { c in
            let b = c.builder
            let oneMinus = try b.sub(try b.constant(1, like: c.result), c.result)
            return [try b.mul(c.grad, try b.mul(c.result, oneMinus))]
        },
        /// ∂x = g·(1 − r²)
        op("tanh", "%r = tanh(%x)", arity: 1, un(.tanh, x)) { c in
            let b = c.builder
            return [try b.mul(c.grad, try b.sub(try b.constant(1, like: c.result), try b.mul(c.result, c.result)))]
        },
        /// ∂x = gelu_grad(x, g)
        op("gelu", "%r = gelu(%x): x·Φ(x), erf form", arity: 1, geluExpr) { c in
            [try c.builder.emit("gelu_grad", [c.operands[0], c.grad])]
        },
        op("gelu_grad", "%r = gelu_grad(%x, %g): g·(Φ(x) + x·φ(x)), gelu's derivative", arity: 2, geluGradExpr, gradient: nil),
        /// ∂x = g·r
        op("exp", "%r = exp(%x)", arity: 1, un(.exp, x)) { c in [try c.builder.mul(c.grad, c.result)] },
        /// ∂x = g/x
        op("log", "%r = log(%x)", arity: 1, un(.log, x), examples: [[f([2, 3])]]) { c in
            [try c.builder.div(c.grad, c.operands[0])]
        },
        /// ∂x = g·½/r
        op("sqrt", "%r = sqrt(%x)", arity: 1, un(.sqrt, x)) { c in
            let b = c.builder
            return [try b.div(try b.mul(c.grad, try b.constant(0.5, like: c.grad)), c.result)]
        },
        /// ∂x = −½·g·r³
        op("rsqrt", "%r = rsqrt(%x): 1/√x", arity: 1, un(.rsqrt, x)) { c in
            let b = c.builder
            let cube = try b.mul(c.result, try b.mul(c.result, c.result))
            return [try b.mul(try b.mul(c.grad, try b.constant(-0.5, like: c.grad)), cube)]
        },
        /// ∂x = g (autodiff sums the broadcast axes back)
        OpSpec(name: "broadcast_to", doc: "%r = broadcast_to(%x) {shape=[...]}: x repeated along size-1 axes",
               arity: 1...1, requiredAttributes: ["shape"],
               inferType: { operands, attrs in
                   let shape = try attrs.ints("shape")
                   guard broadcastShapes([operands[0].shape, shape]) == shape else {
                       throw IRError("cannot broadcast \(operands[0]) to \(shape)")
                   }
                   return operands[0].with(shape: shape)
               },
               evaluate: { operands, _, type in evaluateElementwise(x, operands, type) },
               gradient: { c in [c.grad] }, lowering: .elementwise { _ in x },
               examples: [([f([3, 1])], ["shape": .ints([2, 3, 4])])]),
        OpSpec(name: "constant", doc: "%r = constant() {value=0.5} : f32[]: a scalar (broadcasts where used)",
               arity: 0...0, requiredAttributes: ["value"],
               inferType: { _, attrs in
                   _ = try attrs.float("value")
                   let dtype = try attrs["dtype"].map { _ in try DType(rawValue: attrs.string("dtype")) ?? .f32 } ?? .f32
                   return TensorType(dtype, try attrs["shape"] == nil ? [] : attrs.ints("shape"))
               },
               evaluate: { _, attrs, type in
                   HostTensor(type, [Double](repeating: try attrs.float("value"), count: type.count))
               },
               gradient: { _ in [] }, lowering: .elementwise { attrs in .const(try attrs.float("value")) },
               examples: [([], ["value": .float(0.25)]), ([], ["value": .float(2), "shape": .ints([2, 2])])]),
        OpSpec(name: "fused_elementwise", doc: "%r = fused_elementwise(%a, ...) {expr=add(mul(in0, in1), in2), shape=[...]}: a fused chain (shape: when wider than the operands)",
               arity: 1...64, requiredAttributes: ["expr"],
               inferType: { operands, attrs in
                   let expr = try attrs.expr("expr")
                   guard expr.inputCount <= operands.count else {
                       throw IRError("expression uses in\(expr.inputCount - 1) but has \(operands.count) operands")
                   }
                   let type = try broadcastType(operands)
                   // `shape` widens the result when every operand is broadcast (a fused broadcast_to).
                   guard attrs["shape"] != nil else { return type }
                   let shape = try attrs.ints("shape")
                   guard broadcastShapes([type.shape, shape]) == shape else {
                       throw IRError("operands broadcast to \(type.shape), which does not broadcast to shape \(shape)")
                   }
                   return type.with(shape: shape)
               },
               evaluate: { operands, attrs, type in
                   evaluateElementwise(try attrs.expr("expr"), operands, type)
               },
               gradient: nil, lowering: .elementwise { attrs in try attrs.expr("expr") },
               examples: [([f([2, 3]), f([3]), f([2, 1])], ["expr": .expr(.binary(.add, .binary(.mul, .input(0), .input(1)), .unary(.tanh, .input(2))))]),
                          ([f([3, 1])], ["expr": .expr(.binary(.mul, .input(0), .const(2.5))), "shape": .ints([2, 3, 4])])]),
    ]
}

/// Evaluate `expr` over broadcast operands (the interpreter's elementwise loop).
func evaluateElementwise(_ expr: ScalarExpr, _ operands: [HostTensor], _ type: TensorType) -> HostTensor {
    let indexers = operands.map { BroadcastIndexer(from: $0.shape, to: type.shape) }
    var out = [Double](repeating: 0, count: type.count)
    var inputs = [Double](repeating: 0, count: operands.count)
    for i in 0..<type.count {
        for k in operands.indices { inputs[k] = operands[k].data[indexers[k].sourceIndex(i)] }
        out[i] = expr.evaluate(inputs)
    }
    return HostTensor(type, out)
}

/// Maps a flat index of a broadcast result to the flat index of one operand.
public struct BroadcastIndexer {
    let outShape: [Int]
    let sourceStrides: [Int]  // per result axis; 0 where broadcast

    public init(from shape: [Int], to outShape: [Int]) {
        self.outShape = outShape
        let offset = outShape.count - shape.count
        let strides = TensorType(.f32, shape).strides
        sourceStrides = outShape.indices.map { axis in
            let sourceAxis = axis - offset
            return sourceAxis < 0 || shape[sourceAxis] == 1 ? 0 : strides[sourceAxis]
        }
    }

    /// Strides in elements of the operand, one per result axis (0 = broadcast).
    public var strides: [Int] { sourceStrides }

    public func sourceIndex(_ flat: Int) -> Int {
        var rest = flat, index = 0
        for axis in stride(from: outShape.count - 1, through: 0, by: -1) {
            let size = outShape[axis]
            index += (rest % size) * sourceStrides[axis]
            rest /= size
        }
        return index
    }
}

extension FunctionBuilder {
    public func add(_ a: Value, _ b: Value) throws -> Value { try emit("add", [a, b]) }
    public func sub(_ a: Value, _ b: Value) throws -> Value { try emit("sub", [a, b]) }
    public func mul(_ a: Value, _ b: Value) throws -> Value { try emit("mul", [a, b]) }
    public func div(_ a: Value, _ b: Value) throws -> Value { try emit("div", [a, b]) }
    public func neg(_ a: Value) throws -> Value { try emit("neg", [a]) }
    public func select(_ c: Value, _ a: Value, _ b: Value) throws -> Value { try emit("select", [c, a, b]) }
    public func unary(_ op: String, _ a: Value) throws -> Value { try emit(op, [a]) }

    public enum Comparison: String { case gt = "greater", ge = "greater_equal", eq = "equal" }
    public func compare(_ kind: Comparison, _ a: Value, _ b: Value) throws -> Value { try emit(kind.rawValue, [a, b]) }

    /// A scalar constant of `like`'s element type (broadcasts against anything).
    public func constant(_ value: Double, like: Value) throws -> Value {
        try constant(value, dtype: like.type.dtype)
    }

    public func constant(_ value: Double, dtype: DType = .f32) throws -> Value {
        var attrs: Attributes = ["value": .float(value)]
        if dtype != .f32 { attrs["dtype"] = .string(dtype.rawValue) }
        return try emit("constant", [], attrs)
    }

    public func broadcast(_ a: Value, to shape: [Int]) throws -> Value {
        a.shape == shape ? a : try emit("broadcast_to", [a], ["shape": .ints(shape)])
    }
}
