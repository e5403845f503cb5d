import Foundation

/// Counter-based standard normal noise: element i depends only on (seed, i),
/// so every backend and the interpreter draw identical numbers.
public enum RandomOps {
    /// splitmix64's finalizer (see ddp_kernels.h): well-mixed bits for each
    /// counter value, the counter-based draws the passes use too.
    public static func mix(_ input: UInt64) -> UInt64 {
        var z = input &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The i-th standard normal of a seed, bit-identical to ddp_normal_at().
    public static func normal(seed: UInt64, index: UInt64) -> Double {
        let key = mix(seed)
        let r1 = mix(key &+ 2 &* index), r2 = mix(key &+ 2 &* index &+ 1)
        let u1 = Double((r1 >> 11) + 1) * 0x1p-53
        let u2 = Double(r2 >> 11) * 0x1p-53
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }

    /// mix⁻¹: splitmix64's finalizer is a bijection (xor-shifts and odd multipliers).
    static func unmix(_ output: UInt64) -> UInt64 {
        func unshift(_ y: UInt64, _ s: UInt64) -> UInt64 {
            var x = y
            for _ in 0..<(64 / s + 1) { x = y ^ (x >> s) }
            return x
        }
        func inverse(_ c: UInt64) -> UInt64 {
            var x = c  // Newton's iteration doubles the correct low bits each time
            for _ in 0..<6 { x = x &* (2 &- c &* x) }
            return x
        }
        var z = unshift(output, 31)
        z = unshift(z &* inverse(0x94D0_49BB_1331_11EB), 27)
        z = unshift(z &* inverse(0xBF58_476D_1CE4_E5B9), 30)
        return z &- 0x9E37_79B9_7F4A_7C15
    }

    /// The seed whose stream is `seed`'s from element `offset` on:
    /// normal(seed: shifted, index: i) == normal(seed: seed, index: offset + i).
    /// A process of a data-parallel run draws its images' part of the noise
    /// of the whole global batch this way.
    public static func seed(_ seed: UInt64, advancedBy offset: UInt64) -> UInt64 {
        offset == 0 ? seed : unmix(mix(seed) &+ 2 &* offset)
    }

    public static let all: [OpSpec] = [
        OpSpec(name: "random_normal", doc: "%e = random_normal(%seed) {shape=[...]}: N(0, 1) noise from an i64 seed",
               arity: 1...1, requiredAttributes: ["shape"],
               inferType: { operands, attrs in
                   guard operands[0] == TensorType(.i64, []) else { throw IRError("the seed must be an i64[] scalar") }
                   return TensorType(.f32, try attrs.ints("shape"))
               },
               evaluate: { operands, _, type in
                   let seed = UInt64(bitPattern: Int64(operands[0].scalar))
                   // Rounded to f32 like the kernel, so both draw the same tensor.
                   return HostTensor(type, (0..<type.count).map { Double(Float(normal(seed: seed, index: UInt64($0)))) })
               },
               gradient: nil,
               lowering: .kernels { _, result, _ in [KernelCall("random_normal", [.operand(0), .result], ints: [result.count])] },
               examples: [([TensorType(.i64, [])], ["shape": .ints([2, 3])])]),
    ]
}

extension FunctionBuilder {
    public func randomNormal(seed: Value, shape: [Int]) throws -> Value {
        try emit("random_normal", [seed], ["shape": .ints(shape)])
    }
}
