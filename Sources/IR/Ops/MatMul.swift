/// Batched matrix multiply: a [..., M, K] · b [..., K, N] (b may be a shared [K, N]).
public enum MatMulOps {
    static let f = TensorType.f32

    struct Geometry {
        var batch, m, k, n: Int
        var transA, transB, sharedB: Bool
        var batchShape: [Int]

        init(_ a: [Int], _ b: [Int], _ attrs: Attributes) throws {
            transA = try attrs["transpose_a"] == nil ? false : attrs.bool("transpose_a")
            transB = try attrs["transpose_b"] == nil ? false : attrs.bool("transpose_b")
            guard a.count >= 2, b.count >= 2 else { throw IRError("matmul needs operands of rank ≥ 2") }
            sharedB = b.count == 2 && a.count > 2
            batchShape = Array(a.dropLast(2))
            guard sharedB || Array(b.dropLast(2)) == batchShape else {
                throw IRError("batch dimensions \(batchShape) and \(Array(b.dropLast(2))) differ")
            }
            guard !(sharedB && transA) else { throw IRError("transpose_a with a shared 2-D b is not supported") }
            let (a0, a1, b0, b1) = (a[a.count - 2], a[a.count - 1], b[b.count - 2], b[b.count - 1])
            (m, k) = transA ? (a1, a0) : (a0, a1)
            let kb: Int
            (kb, n) = transB ? (b1, b0) : (b0, b1)
            guard k == kb else { throw IRError("inner dimensions differ: \(k) vs \(kb)") }
            batch = batchShape.reduce(1, *)
        }

        /// Elements between consecutive batch entries of a and b.
        var aStride: Int { m * k }
        var bStride: Int { sharedB ? 0 : k * n }

        /// The kernel's batch, m, k, n, strides and transposes. A batch
        /// sharing one b with rows of a stored one after another (a linear
        /// layer over tokens, [B, N, D]·[D, E]) is one product of B·N rows:
        /// the threads then split one product and each packs b once, instead
        /// of once per batch entry (TransUNet's ViT layers, 4·196 tokens).
        var kernelInts: [Int] {
            if sharedB && !transA { return [1, batch * m, k, n, batch * m * k, 0, 0, transB ? 1 : 0] }
            return [batch, m, k, n, aStride, bStride, transA ? 1 : 0, transB ? 1 : 0]
        }
    }

    public static let all: [OpSpec] = [
        /// ∂a = g·op(b)ᵀ (transposed back if transpose_a), ∂b = op(a)ᵀ·g (summed over a shared b's batch)
        OpSpec(name: "matmul", doc: "%c = matmul(%a, %b) {transpose_a=false, transpose_b=false}: batched a·b",
               arity: 2...2,
               inferType: { operands, attrs in
                   let geo = try Geometry(operands[0].shape, operands[1].shape, attrs)
                   guard operands[0].dtype == operands[1].dtype, operands[0].dtype.isFloat else {
                       throw IRError("needs two floating-point operands of one type")
                   }
                   return operands[0].with(shape: geo.batchShape + [geo.m, geo.n])
               },
               evaluate: { operands, attrs, type in
                   let geo = try Geometry(operands[0].shape, operands[1].shape, attrs)
                   let a = operands[0].data, b = operands[1].data
                   var out = [Double](repeating: 0, count: type.count)
                   for p in 0..<geo.batch {
                       let aBase = p * geo.aStride, bBase = p * geo.bStride
                       for i in 0..<geo.m {
                           for j in 0..<geo.n {
                               var acc = 0.0
                               for l in 0..<geo.k {
                                   let av = a[aBase + (geo.transA ? l * geo.m + i : i * geo.k + l)]
                                   let bv = b[bBase + (geo.transB ? j * geo.k + l : l * geo.n + j)]
                                   acc += av * bv
                               }
                               out[(p * geo.m + i) * geo.n + j] = acc
                           }
                       }
                   }
                   return HostTensor(type, out)
               },
               gradient: { c in
                   let bld = c.builder, a = c.operands[0], b = c.operands[1], g = c.grad
                   let geo = try Geometry(a.shape, b.shape, c.attrs)
                   func mm(_ x: Value, _ y: Value, _ ta: Bool, _ tb: Bool) throws -> Value {
                       try bld.emit("matmul", [x, y], ["transpose_a": .bool(ta), "transpose_b": .bool(tb)])
                   }
                   let da = geo.transA ? try mm(b, g, geo.transB, true) : try mm(g, b, false, !geo.transB)
                   var db: Value
                   if geo.sharedB {
                       let rows = geo.batch * geo.m
                       let a2 = try bld.reshape(a, [rows, geo.k]), g2 = try bld.reshape(g, [rows, geo.n])
                       db = geo.transB ? try mm(g2, a2, true, false) : try mm(a2, g2, true, false)
                   } else {
                       db = geo.transB ? try mm(g, a, true, geo.transA) : try mm(a, g, !geo.transA, false)
                   }
                   return [da, db]
               },
               lowering: .kernels { operands, _, attrs in
                   [KernelCall("matmul", [.operand(0), .operand(1), .result],
                               ints: try Geometry(operands[0].shape, operands[1].shape, attrs).kernelInts)]
               },
               examples: [([f([2, 3, 4]), f([2, 4, 5])], [:]),
                          ([f([2, 4, 3]), f([2, 5, 4])], ["transpose_a": .bool(true), "transpose_b": .bool(true)]),
                          ([f([2, 3, 4]), f([5, 4])], ["transpose_b": .bool(true)]),
                          ([f([2, 3, 4]), f([4, 5])], [:]),
                          ([f([3, 4]), f([4, 2])], [:])],
               // 2 · output elements · the shared dimension
               flops: { operands, result, attrs in
                   let a = operands[0].shape
                   let k = attrs["transpose_a"] == .bool(true) ? a[a.count - 2] : a[a.count - 1]
                   return 2 * Double(result.count) * Double(k)
               }),
    ]
}

extension FunctionBuilder {
    public func matmul(_ a: Value, _ b: Value, transposeA: Bool = false, transposeB: Bool = false) throws -> Value {
        var attrs: Attributes = [:]
        if transposeA { attrs["transpose_a"] = .bool(true) }
        if transposeB { attrs["transpose_b"] = .bool(true) }
        return try emit("matmul", [a, b], attrs)
    }
}
