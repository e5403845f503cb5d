import Foundation
import IR

/// Deterministic test data.
public struct TestRNG {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    public mutating func uniform(_ lo: Double = -1, _ hi: Double = 1) -> Double {
        lo + (hi - lo) * Double(next() >> 11) * 0x1p-53
    }
}

/// Inputs for one example of an op: positive where the op's domain needs it,
/// valid class labels (with some ignored pixels) for integer operands.
public func sampleTensor(_ type: TensorType, op: String, operand: Int, rng: inout TestRNG) -> HostTensor {
    let positive: [String: Set<Int>] = ["log": [0], "sqrt": [0], "rsqrt": [0], "batch_norm": [2], "div": [1]]
    switch type.dtype {
    case .i32:
        return HostTensor(type, (0..<type.count).map { _ in
            let r = rng.next() % 4
            return r == 3 ? 255 : Double(r % 3)
        })
    case .i64:
        return HostTensor(type, (0..<type.count).map { _ in Double(rng.next() % 1000) })
    case .f32, .f64:
        let isPositive = positive[op]?.contains(operand) ?? false
        return HostTensor(type, (0..<type.count).map { _ in isPositive ? rng.uniform(0.5, 2) : rng.uniform() })
    }
}

/// A function computing one op on its example operands; float operands are
/// trainable params named "a0", "a1", ...; integer operands are inputs.
public func singleOpFunction(_ spec: OpSpec, operands: [TensorType], attrs: Attributes,
                             withLoss: Bool) throws -> Function {
    let b = FunctionBuilder(name: spec.name)
    let args = operands.enumerated().map { i, type in
        b.argument("a\(i)", type, role: type.dtype.isFloat ? .param : .input)
    }
    let result = try b.emit(spec.name, args, attrs)
    b.output(result, name: "result")
    if withLoss {
        // loss = Σ result · r with a fixed random r, so every output element matters.
        let r = b.argument("r", result.type, role: .input)
        let loss = try b.sum(try b.mul(result, r), axes: Array(0..<result.rank))
        b.output(loss, name: "loss")
    }
    return b.function
}

/// Max |a − b| / (atol + rtol·|b|) over all elements; ≤ 1 means "close".
public func closeness(_ a: [Double], _ b: [Double], atol: Double, rtol: Double) -> Double {
    precondition(a.count == b.count)
    var worst = 0.0
    for (x, y) in zip(a, b) {
        if x.isNaN || y.isNaN { return .infinity }
        worst = max(worst, abs(x - y) / (atol + rtol * abs(y)))
    }
    return worst
}
