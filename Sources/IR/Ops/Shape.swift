/// Data-movement ops: reshape, permute, concat, slice, pad.
public enum ShapeOps {
    static let f = TensorType.f32

    /// Copy-region kernel arguments (see ddp_kernels.h).
    static func copyRegion(src: [Int], dst: [Int], srcStart: [Int], dstStart: [Int], count: [Int]) -> [Int] {
        [src.count] + src + dst + srcStart + [Int](repeating: 1, count: src.count) + dstStart + count
    }

    public static let all: [OpSpec] = [
        /// ∂x = reshape(g, shape(x))
        OpSpec(name: "reshape", doc: "%r = reshape(%x) {shape=[...]}: same elements, new shape (no copy)",
               arity: 1...1, requiredAttributes: ["shape"],
               inferType: { operands, attrs in
                   let shape = try attrs.ints("shape")
                   guard shape.allSatisfy({ $0 >= 0 }), shape.reduce(1, *) == operands[0].count else {
                       throw IRError("cannot reshape \(operands[0]) (\(operands[0].count) elements) to \(shape)")
                   }
                   return operands[0].with(shape: shape)
               },
               evaluate: { operands, _, type in HostTensor(type, operands[0].data) },
               gradient: { c in [try c.builder.reshape(c.grad, c.operands[0].shape)] },
               lowering: .alias,
               examples: [([f([2, 3, 4])], ["shape": .ints([6, 4])])]),

        /// ∂x = permute(g, inverse(perm))
        OpSpec(name: "permute", doc: "%r = permute(%x) {perm=[...]}: r.shape[i] = x.shape[perm[i]]",
               arity: 1...1, requiredAttributes: ["perm"],
               inferType: { operands, attrs in
                   let perm = try attrs.ints("perm")
                   guard perm.sorted() == Array(0..<operands[0].rank) else {
                       throw IRError("perm \(perm) is not a permutation of the \(operands[0].rank) axes")
                   }
                   return operands[0].with(shape: perm.map { operands[0].shape[$0] })
               },
               evaluate: { operands, attrs, _ in operands[0].permuted(try attrs.ints("perm")) },
               gradient: { c in [try c.builder.permute(c.grad, inversePermutation(try c.attrs.ints("perm")))] },
               lowering: .kernels { operands, _, attrs in
                   [KernelCall("permute", [.operand(0), .result],
                               ints: [operands[0].rank] + operands[0].shape + (try attrs.ints("perm")))]
               },
               examples: [([f([2, 3, 4])], ["perm": .ints([2, 0, 1])])]),

        /// ∂xᵢ = slice(g) along axis at xᵢ's position
        OpSpec(name: "concat", doc: "%r = concat(%a, %b, ...) {axis=1}: joined along axis",
               arity: 1...64, requiredAttributes: ["axis"],
               inferType: { operands, attrs in
                   let first = operands[0]
                   let axis = try attrs.int("axis")
                   guard (0..<first.rank).contains(axis) else { throw IRError("axis \(axis) out of range for \(first)") }
                   var total = 0
                   for operand in operands {
                       var a = operand.shape, b = first.shape
                       guard operand.dtype == first.dtype, a.count == b.count else {
                           throw IRError("operands must have one element type and rank")
                       }
                       total += a[axis]
                       a[axis] = 0
                       b[axis] = 0
                       guard a == b else { throw IRError("operand shapes differ outside axis \(axis)") }
                   }
                   var shape = first.shape
                   shape[axis] = total
                   return first.with(shape: shape)
               },
               evaluate: { operands, attrs, type in
                   let axis = try attrs.int("axis")
                   var out = HostTensor(zeros: type)
                   var offset = 0
                   for operand in operands {
                       var start = [Int](repeating: 0, count: type.rank)
                       start[axis] = offset
                       copyBox(from: operand, srcStart: start.map { _ in 0 }, to: &out, dstStart: start, count: operand.shape)
                       offset += operand.shape[axis]
                   }
                   return out
               },
               gradient: { c in
                   let axis = try c.attrs.int("axis")
                   var offset = 0
                   return try c.operands.map { operand in
                       var start = [Int](repeating: 0, count: operand.rank)
                       start[axis] = offset
                       var end = c.result.shape
                       end[axis] = offset + operand.shape[axis]
                       offset += operand.shape[axis]
                       return try c.builder.slice(c.grad, start: start, end: end)
                   }
               },
               lowering: .kernels { operands, result, attrs in
                   let axis = try attrs.int("axis")
                   var offset = 0
                   return operands.enumerated().map { index, operand in
                       var start = [Int](repeating: 0, count: result.rank)
                       start[axis] = offset
                       offset += operand.shape[axis]
                       return KernelCall("copy_region", [.operand(index), .result],
                                         ints: copyRegion(src: operand.shape, dst: result.shape,
                                                          srcStart: start.map { _ in 0 }, dstStart: start, count: operand.shape))
                   }
               },
               examples: [([f([2, 1, 3]), f([2, 2, 3])], ["axis": .int(1)])], rematerializable: true),

        /// %dst with %src written at `offset` along `axis`, in place when
        /// nothing reads %dst after it (fuse-concat builds a concatenation
        /// from these after autodiff, so it has no gradient rule).
        OpSpec(name: "insert", doc: "%r = insert(%dst, %src) {axis=1, offset=k}: dst with src written at offset k along axis",
               arity: 2...2, requiredAttributes: ["axis", "offset"],
               inferType: { operands, attrs in
                   let (dst, src) = (operands[0], operands[1])
                   let axis = try attrs.int("axis"), offset = try attrs.int("offset")
                   guard (0..<dst.rank).contains(axis), src.rank == dst.rank, src.dtype == dst.dtype else {
                       throw IRError("insert needs operands of one rank and element type and an axis inside them")
                   }
                   var a = src.shape, b = dst.shape
                   guard offset >= 0, offset + a[axis] <= b[axis] else {
                       throw IRError("[\(offset), \(offset + a[axis])) along axis \(axis) does not fit in \(dst)")
                   }
                   a[axis] = 0
                   b[axis] = 0
                   guard a == b else { throw IRError("operand shapes differ outside axis \(axis)") }
                   return dst
               },
               evaluate: { operands, attrs, _ in
                   var out = operands[0]
                   var start = [Int](repeating: 0, count: out.type.rank)
                   start[try attrs.int("axis")] = try attrs.int("offset")
                   copyBox(from: operands[1], srcStart: start.map { _ in 0 }, to: &out, dstStart: start, count: operands[1].shape)
                   return out
               },
               gradient: nil,
               lowering: .kernels { operands, result, attrs in
                   var start = [Int](repeating: 0, count: result.rank)
                   start[try attrs.int("axis")] = try attrs.int("offset")
                   let zeros = start.map { _ in 0 }
                   // The first copy does nothing when the result is %dst's own bytes.
                   return [KernelCall("copy_region", [.operand(0), .result],
                                      ints: copyRegion(src: result.shape, dst: result.shape, srcStart: zeros, dstStart: zeros, count: result.shape)),
                           KernelCall("copy_region", [.operand(1), .result],
                                      ints: copyRegion(src: operands[1].shape, dst: result.shape, srcStart: zeros, dstStart: start, count: operands[1].shape))]
               },
               examples: [([f([2, 3, 2]), f([2, 1, 2])], ["axis": .int(1), "offset": .int(1)])],
               overwritesOperand: 0, rematerializable: true),

        /// ∂x = pad(g) back to x's shape with zeros
        OpSpec(name: "slice", doc: "%r = slice(%x) {start=[...], end=[...]}: the box start..<end",
               arity: 1...1, requiredAttributes: ["start", "end"],
               inferType: { operands, attrs in
                   let start = try attrs.ints("start"), end = try attrs.ints("end"), shape = operands[0].shape
                   guard start.count == shape.count, end.count == shape.count,
                         shape.indices.allSatisfy({ 0 <= start[$0] && start[$0] <= end[$0] && end[$0] <= shape[$0] }) else {
                       throw IRError("slice \(start)..<\(end) is outside \(operands[0])")
                   }
                   return operands[0].with(shape: shape.indices.map { end[$0] - start[$0] })
               },
               evaluate: { operands, attrs, type in
                   var out = HostTensor(zeros: type)
                   copyBox(from: operands[0], srcStart: try attrs.ints("start"), to: &out,
                           dstStart: type.shape.map { _ in 0 }, count: type.shape)
                   return out
               },
               gradient: { c in
                   let start = try c.attrs.ints("start")
                   let high = c.operands[0].shape.indices.map { c.operands[0].shape[$0] - start[$0] - c.result.shape[$0] }
                   return [try c.builder.pad(c.grad, low: start, high: high)]
               },
               lowering: .kernels { operands, result, attrs in
                   [KernelCall("copy_region", [.operand(0), .result],
                               ints: copyRegion(src: operands[0].shape, dst: result.shape, srcStart: try attrs.ints("start"),
                                                dstStart: result.shape.map { _ in 0 }, count: result.shape))]
               },
               examples: [([f([3, 4, 5])], ["start": .ints([1, 0, 2]), "end": .ints([3, 3, 5])])]),

        /// ∂x = slice(g, low, low + shape(x))
        OpSpec(name: "pad", doc: "%r = pad(%x) {low=[...], high=[...], value=0.0}: constant padding",
               arity: 1...1, requiredAttributes: ["low", "high"],
               inferType: { operands, attrs in
                   let low = try attrs.ints("low"), high = try attrs.ints("high"), shape = operands[0].shape
                   guard low.count == shape.count, high.count == shape.count,
                         (low + high).allSatisfy({ $0 >= 0 }) else {
                       throw IRError("pad low \(low) / high \(high) must be non-negative, one per axis of \(operands[0])")
                   }
                   return operands[0].with(shape: shape.indices.map { shape[$0] + low[$0] + high[$0] })
               },
               evaluate: { operands, attrs, type in
                   let value = try attrs["value"] == nil ? 0 : attrs.float("value")
                   var out = HostTensor(type, [Double](repeating: value, count: type.count))
                   copyBox(from: operands[0], srcStart: operands[0].shape.map { _ in 0 }, to: &out,
                           dstStart: try attrs.ints("low"), count: operands[0].shape)
                   return out
               },
               gradient: { c in
                   let low = try c.attrs.ints("low")
                   let end = low.indices.map { low[$0] + c.operands[0].shape[$0] }
                   return [try c.builder.slice(c.grad, start: low, end: end)]
               },
               lowering: .kernels { operands, result, attrs in
                   let value = try attrs["value"] == nil ? 0 : attrs.float("value")
                   return [KernelCall("fill", [.result], ints: [result.count], floats: [value]),
                           KernelCall("copy_region", [.operand(0), .result],
                                      ints: copyRegion(src: operands[0].shape, dst: result.shape,
                                                       srcStart: operands[0].shape.map { _ in 0 },
                                                       dstStart: try attrs.ints("low"), count: operands[0].shape))]
               },
               examples: [([f([2, 3, 3])], ["low": .ints([0, 1, 0]), "high": .ints([0, 0, 2])])]),
    ]
}

/// q with q[perm[i]] = i: the permutation that undoes `perm`.
public func inversePermutation(_ perm: [Int]) -> [Int] {
    var inverse = perm
    for (i, p) in perm.enumerated() { inverse[p] = i }
    return inverse
}

extension HostTensor {
    /// The tensor with axes reordered as `permute` does: result axis i is axis perm[i].
    public func permuted(_ perm: [Int]) -> HostTensor {
        let strides = type.strides, permutedStrides = perm.map { strides[$0] }
        let result = type.with(shape: perm.map { shape[$0] })
        var out = [Double](repeating: 0, count: result.count)
        forEachIndex(result.shape) { flat, index in
            var source = 0
            for axis in index.indices { source += index[axis] * permutedStrides[axis] }
            out[flat] = data[source]
        }
        return HostTensor(result, out)
    }
}

/// Visit every index of `shape` in row-major order with its flat position.
public func forEachIndex(_ shape: [Int], _ body: (Int, [Int]) -> Void) {
    let count = shape.reduce(1, *)
    guard count > 0 else { return }
    var index = [Int](repeating: 0, count: shape.count)
    for flat in 0..<count {
        body(flat, index)
        var axis = shape.count - 1
        while axis >= 0 {
            index[axis] += 1
            if index[axis] < shape[axis] { break }
            index[axis] = 0
            axis -= 1
        }
    }
}

/// dst[dstStart + k] = src[srcStart + k] for k in the box `count`.
func copyBox(from src: HostTensor, srcStart: [Int], to dst: inout HostTensor, dstStart: [Int], count: [Int]) {
    let srcStrides = src.type.strides, dstStrides = dst.type.strides
    forEachIndex(count) { _, k in
        var s = 0, d = 0
        for axis in k.indices {
            s += (srcStart[axis] + k[axis]) * srcStrides[axis]
            d += (dstStart[axis] + k[axis]) * dstStrides[axis]
        }
        dst.data[d] = src.data[s]
    }
}

extension FunctionBuilder {
    public func reshape(_ x: Value, _ shape: [Int]) throws -> Value {
        x.shape == shape ? x : try emit("reshape", [x], ["shape": .ints(shape)])
    }
    public func permute(_ x: Value, _ perm: [Int]) throws -> Value { try emit("permute", [x], ["perm": .ints(perm)]) }
    public func concat(_ xs: [Value], axis: Int) throws -> Value { try emit("concat", xs, ["axis": .int(axis)]) }
    public func slice(_ x: Value, start: [Int], end: [Int]) throws -> Value {
        try emit("slice", [x], ["start": .ints(start), "end": .ints(end)])
    }
    public func pad(_ x: Value, low: [Int], high: [Int], value: Double = 0) throws -> Value {
        var attrs: Attributes = ["low": .ints(low), "high": .ints(high)]
        if value != 0 { attrs["value"] = .float(value) }
        return try emit("pad", [x], attrs)
    }
}
