import Foundation

/// Training losses: mean squared error and pixel-wise cross-entropy with an
/// ignore label.
public enum LossOps {
    static let f = TensorType.f32

    /// logits [N, C, *] and labels [N, *] → (N, C, pixels per image).
    static func classLayout(_ logits: [Int], _ labels: TensorType) throws -> (Int, Int, Int) {
        guard logits.count >= 2 else { throw IRError("logits need shape [N, C, ...]") }
        guard labels.dtype == .i32 || labels.dtype == .i64 else { throw IRError("labels must be integers (i32)") }
        guard labels.shape == [logits[0]] + logits.dropFirst(2) else {
            throw IRError("labels \(labels) do not match logits [N, C, ...] = \(logits)")
        }
        return (logits[0], logits[1], logits.dropFirst(2).reduce(1, *))
    }

    static func ignoreIndex(_ attrs: Attributes) throws -> Int {
        try attrs["ignore_index"] == nil ? 255 : attrs.int("ignore_index")
    }

    /// Per-pixel softmax probabilities and the number of counted pixels.
    static func softmaxAndCount(_ logits: HostTensor, _ labels: HostTensor, ignore: Int) throws -> ([Double], Int, (Int, Int, Int)) {
        let (n, c, p) = try classLayout(logits.shape, labels.type)
        var probs = logits.data
        var counted = 0
        for b in 0..<n {
            for q in 0..<p {
                let idx = (0..<c).map { (b * c + $0) * p + q }
                let m = idx.map { logits.data[$0] }.max() ?? 0
                let total = idx.reduce(0) { $0 + exp(logits.data[$1] - m) }
                for i in idx { probs[i] = exp(logits.data[i] - m) / total }
                let label = Int(labels.data[b * p + q])
                if label != ignore && label >= 0 && label < c { counted += 1 }
            }
        }
        return (probs, counted, (n, c, p))
    }

    static let ceExamples: [(operands: [TensorType], attrs: Attributes)] = [
        ([f([2, 3, 2, 2]), TensorType(.i32, [2, 2, 2])], ["ignore_index": .int(255)]),
    ]

    public static let all: [OpSpec] = [
        /// ∂a = 2(a − b)/n·g, ∂b = −∂a
        OpSpec(name: "mse", doc: "%l = mse(%a, %b) : f32[]: mean((a − b)²)",
               arity: 2...2,
               inferType: { operands, _ in
                   guard operands[0] == operands[1], operands[0].dtype.isFloat else {
                       throw IRError("operands must have one floating-point type and shape")
                   }
                   return operands[0].with(shape: [])
               },
               evaluate: { operands, _, type in
                   let a = operands[0].data, b = operands[1].data
                   let total = zip(a, b).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
                   return HostTensor(type, [total / Double(max(a.count, 1))])
               },
               gradient: { c in
                   let b = c.builder
                   let scale = try b.mul(c.grad, try b.constant(2 / Double(c.operands[0].type.count), like: c.grad))
                   let da = try b.mul(try b.sub(c.operands[0], c.operands[1]), scale)
                   return [da, try b.neg(da)]
               },
               lowering: .kernels { operands, _, _ in
                   [KernelCall("mse", [.operand(0), .operand(1), .result], ints: [operands[0].count])]
               },
               examples: [([f([2, 3, 4]), f([2, 3, 4])], [:])]),

        /// ∂logits = cross_entropy_grad(logits, labels, g); labels get none
        OpSpec(name: "cross_entropy", doc: "%l = cross_entropy(%logits, %labels) {ignore_index=255} : f32[]: mean −log softmax[label] over counted pixels",
               arity: 2...2,
               inferType: { operands, _ in
                   _ = try classLayout(operands[0].shape, operands[1])
                   return operands[0].with(shape: [])
               },
               evaluate: { operands, attrs, type in
                   let ignore = try ignoreIndex(attrs)
                   let (probs, counted, (_, c, p)) = try softmaxAndCount(operands[0], operands[1], ignore: ignore)
                   var total = 0.0
                   for (q, labelValue) in operands[1].data.enumerated() {
                       let label = Int(labelValue)
                       guard label != ignore, label >= 0, label < c else { continue }
                       total -= log(probs[((q / p) * c + label) * p + q % p])
                   }
                   return HostTensor(type, [counted == 0 ? 0 : total / Double(counted)])
               },
               gradient: { c in
                   [try c.builder.emit("cross_entropy_grad", [c.operands[0], c.operands[1], c.grad], c.attrs), nil]
               },
               lowering: .kernels { operands, _, attrs in
                   let (n, c, p) = try classLayout(operands[0].shape, operands[1])
                   return [KernelCall("cross_entropy", [.operand(0), .operand(1), .result], ints: [n, c, p, try ignoreIndex(attrs)])]
               },
               examples: ceExamples),

        OpSpec(name: "cross_entropy_grad", doc: "%d = cross_entropy_grad(%logits, %labels, %g) {ignore_index=255}: g·(softmax − onehot)/count",
               arity: 3...3,
               inferType: { operands, _ in
                   _ = try classLayout(operands[0].shape, operands[1])
                   guard operands[2].shape == [] else { throw IRError("g must be a scalar") }
                   return operands[0]
               },
               evaluate: { operands, attrs, type in
                   let ignore = try ignoreIndex(attrs)
                   var (probs, counted, (n, c, p)) = try softmaxAndCount(operands[0], operands[1], ignore: ignore)
                   let scale = counted == 0 ? 0 : operands[2].scalar / Double(counted)
                   for b in 0..<n {
                       for q in 0..<p {
                           let label = Int(operands[1].data[b * p + q])
                           let counts = label != ignore && label >= 0 && label < c
                           for k in 0..<c {
                               let i = (b * c + k) * p + q
                               probs[i] = counts ? (probs[i] - (k == label ? 1 : 0)) * scale : 0
                           }
                       }
                   }
                   return HostTensor(type, probs)
               },
               gradient: nil,
               lowering: .kernels { operands, _, attrs in
                   let (n, c, p) = try classLayout(operands[0].shape, operands[1])
                   return [KernelCall("cross_entropy_grad", [.operand(0), .operand(1), .operand(2), .result],
                                      ints: [n, c, p, try ignoreIndex(attrs)])]
               },
               examples: [([f([2, 3, 2, 2]), TensorType(.i32, [2, 2, 2]), f([])], ["ignore_index": .int(255)])]),
    ]
}

extension FunctionBuilder {
    public func mse(_ a: Value, _ b: Value) throws -> Value { try emit("mse", [a, b]) }
    public func crossEntropy(_ logits: Value, _ labels: Value, ignoreIndex: Int = 255) throws -> Value {
        try emit("cross_entropy", [logits, labels], ["ignore_index": .int(ignoreIndex)])
    }
}
