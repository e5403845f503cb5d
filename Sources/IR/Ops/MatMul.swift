/// Batched matrix multiply: a [..., M, K] · b [..., K, N] (b may be a shared [K, N]).
///
/// An operand may be read, and the result written, in another layout than
/// its logical one (matmul-layout sets these): `a_perm` p says the logical a
/// is permute(%a, p), `b_perm` likewise, and `result_perm` q that the
/// result is stored as permute(logical product, q). Each keeps the last
/// axis last, so every matrix the kernel reads or writes has unit-stride
/// rows: attention's heads read straight out of the projections' token-major
/// rows, [B, N, H, d] as [B, H, N, d], with no permuted copy.
public enum MatMulOps {
    static let f = TensorType.f32

    struct Geometry {
        var batch, m, k, n: Int
        var transA, transB, sharedB: Bool
        var batchShape: [Int]
        /// The layouts (nil: the logical shape, row-major).
        var aPerm, bPerm, resultPerm: [Int]?
        /// The stored shapes of a and b.
        var aShape, bShape: [Int]

        init(_ a: [Int], _ b: [Int], _ attrs: Attributes) throws {
            transA = try attrs["transpose_a"] == nil ? false : attrs.bool("transpose_a")
            transB = try attrs["transpose_b"] == nil ? false : attrs.bool("transpose_b")
            guard a.count >= 2, b.count >= 2 else { throw IRError("matmul needs operands of rank ≥ 2") }
            (aShape, bShape) = (a, b)
            aPerm = try Self.layout(attrs, "a_perm", rank: a.count)
            bPerm = try Self.layout(attrs, "b_perm", rank: b.count)
            let a = aPerm.map { p in p.map { a[$0] } } ?? a, b = bPerm.map { p in p.map { b[$0] } } ?? b
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
            resultPerm = try Self.layout(attrs, "result_perm", rank: batchShape.count + 2)
        }

        /// A layout attribute: a permutation of the axes that keeps the last one last.
        static func layout(_ attrs: Attributes, _ key: String, rank: Int) throws -> [Int]? {
            guard attrs[key] != nil else { return nil }
            let perm = try attrs.ints(key)
            guard perm.sorted() == Array(0..<rank), perm.last == rank - 1 else {
                throw IRError("\(key) \(perm) must be a permutation of the \(rank) axes that keeps the last axis last")
            }
            return perm
        }

        var logicalResult: [Int] { batchShape + [m, n] }
        /// The result's shape as stored.
        var result: [Int] { resultPerm.map { q in q.map { logicalResult[$0] } } ?? logicalResult }
        var hasLayouts: Bool { aPerm != nil || bPerm != nil || resultPerm != nil }

        /// The strides of a logical tensor's axes in its stored buffer:
        /// logical = permute(stored, perm).
        static func logicalStrides(stored shape: [Int], perm: [Int]?) -> [Int] {
            let strides = TensorType(.f32, shape).strides
            return perm.map { p in p.map { strides[$0] } } ?? strides
        }

        /// The kernel's arguments: the batch axes' sizes, m, k, n, the
        /// transposes, the three matrices' row strides and each one's stride
        /// along every batch axis (0 for the batch a shared b does not have).
        /// A batch sharing b with rows of a stored one after another (a
        /// linear layer over tokens, [B, N, D]·[D, E]) is one product of B·N
        /// rows: the threads then split one product and each packs b once,
        /// instead of once per batch entry (TransUNet's ViT layers, 4·196
        /// tokens; on an Intel Xeon its 196-row projections ran 14–17% faster
        /// so, alone and interleaved in one process).
        var kernelInts: [Int] {
            let flags = [transA ? 1 : 0, transB ? 1 : 0]
            if sharedB && !transA && !hasLayouts {
                return [0, batch * m, k, n] + flags + [k, transB ? k : n, n]
            }
            let a = Self.logicalStrides(stored: aShape, perm: aPerm)
            let b = Self.logicalStrides(stored: bShape, perm: bPerm)
            let c = Self.logicalStrides(stored: result, perm: resultPerm.map(inversePermutation))
            let d = batchShape.count
            let rowStrides = [a[a.count - 2], b[b.count - 2], c[c.count - 2]]
            let bBatch = sharedB ? [Int](repeating: 0, count: d) : Array(b.prefix(d))
            return [d] + batchShape + [m, k, n] + flags + rowStrides + Array(a.prefix(d)) + bBatch + Array(c.prefix(d))
        }
    }

    /// The product of the logical operands, as the logical result.
    static func product(_ a: HostTensor, _ b: HostTensor, _ geo: Geometry) -> [Double] {
        let aStride = geo.m * geo.k, bStride = geo.sharedB ? 0 : geo.k * geo.n
        var out = [Double](repeating: 0, count: geo.batch * geo.m * geo.n)
        for p in 0..<geo.batch {
            let aBase = p * aStride, bBase = p * bStride
            for i in 0..<geo.m {
                for j in 0..<geo.n {
                    var acc = 0.0
                    for l in 0..<geo.k {
                        let av = a.data[aBase + (geo.transA ? l * geo.m + i : i * geo.k + l)]
                        let bv = b.data[bBase + (geo.transB ? j * geo.k + l : l * geo.n + j)]
                        acc += av * bv
                    }
                    out[(p * geo.m + i) * geo.n + j] = acc
                }
            }
        }
        return out
    }

    /// The gradient rule on logical operands and the logical result's gradient.
    static func gradients(_ bld: FunctionBuilder, _ a: Value, _ b: Value, _ g: Value, _ geo: Geometry) throws -> [Value] {
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
    }

    public static let all: [OpSpec] = [
        /// ∂a = g·op(b)ᵀ (transposed back if transpose_a), ∂b = op(a)ᵀ·g (summed over a shared b's batch),
        /// through permutes where the operands or the result have layouts
        OpSpec(name: "matmul", doc: "%c = matmul(%a, %b) {transpose_a=false, transpose_b=false, a_perm, b_perm, result_perm}: batched a·b",
               arity: 2...2,
               inferType: { operands, attrs in
                   let geo = try Geometry(operands[0].shape, operands[1].shape, attrs)
                   guard operands[0].dtype == operands[1].dtype, operands[0].dtype.isFloat else {
                       throw IRError("needs two floating-point operands of one type")
                   }
                   return operands[0].with(shape: geo.result)
               },
               evaluate: { operands, attrs, type in
                   let geo = try Geometry(operands[0].shape, operands[1].shape, attrs)
                   let a = geo.aPerm.map { operands[0].permuted($0) } ?? operands[0]
                   let b = geo.bPerm.map { operands[1].permuted($0) } ?? operands[1]
                   let product = HostTensor(type.with(shape: geo.logicalResult), product(a, b, geo))
                   return geo.resultPerm.map { product.permuted($0) } ?? product
               },
               gradient: { c in
                   let bld = c.builder
                   let geo = try Geometry(c.operands[0].shape, c.operands[1].shape, c.attrs)
                   let a = try geo.aPerm.map { try bld.permute(c.operands[0], $0) } ?? c.operands[0]
                   let b = try geo.bPerm.map { try bld.permute(c.operands[1], $0) } ?? c.operands[1]
                   let g = try geo.resultPerm.map { try bld.permute(c.grad, inversePermutation($0)) } ?? c.grad
                   let d = try gradients(bld, a, b, g, geo)
                   return [try geo.aPerm.map { try bld.permute(d[0], inversePermutation($0)) } ?? d[0],
                           try geo.bPerm.map { try bld.permute(d[1], inversePermutation($0)) } ?? d[1]]
               },
               lowering: .kernels { operands, _, attrs in
                   [KernelCall("matmul", [.operand(0), .operand(1), .result],
                               ints: try Geometry(operands[0].shape, operands[1].shape, attrs).kernelInts)]
               },
               examples: [([f([2, 3, 4]), f([2, 4, 5])], [:]),
                          ([f([2, 4, 3]), f([2, 5, 4])], ["transpose_a": .bool(true), "transpose_b": .bool(true)]),
                          ([f([2, 3, 4]), f([5, 4])], ["transpose_b": .bool(true)]),
                          ([f([2, 3, 4]), f([4, 5])], [:]),
                          ([f([3, 4]), f([4, 2])], [:]),
                          // attention's scores and context on token-major [B, N, H, d] heads
                          ([f([2, 3, 2, 4]), f([2, 3, 2, 4])],
                           ["a_perm": .ints([0, 2, 1, 3]), "b_perm": .ints([0, 2, 1, 3]), "transpose_b": .bool(true)]),
                          ([f([2, 2, 3, 3]), f([2, 3, 2, 4])], ["b_perm": .ints([0, 2, 1, 3]), "result_perm": .ints([0, 2, 1, 3])]),
                          ([f([4, 2, 3]), f([2, 4, 5])], ["a_perm": .ints([1, 0, 2]), "transpose_a": .bool(true)]),
                          ([f([3, 2, 4]), f([4, 5])], ["a_perm": .ints([1, 0, 2]), "result_perm": .ints([1, 0, 2])])],
               // 2 · output elements · the shared dimension
               flops: { operands, result, attrs in
                   2 * Double(result.count) * Double((try? Geometry(operands[0].shape, operands[1].shape, attrs).k) ?? 0)
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
