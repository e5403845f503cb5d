/// 2-D max and average pooling and their backward ops (NCHW).
public enum PoolOps {
    static let f = TensorType.f32

    struct Geometry {
        var n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw: Int
        var countIncludePad: Bool

        init(input: [Int], attrs: Attributes) throws {
            guard input.count == 4 else { throw IRError("pooling needs a rank-4 NCHW input") }
            let kernel = try attrs.ints("kernel")
            let stride = try attrs["stride"] == nil ? kernel : attrs.ints("stride")
            let pad = try attrs["pad"] == nil ? [0, 0] : attrs.ints("pad")
            guard kernel.count == 2, stride.count == 2, pad.count == 2,
                  (kernel + stride).allSatisfy({ $0 > 0 }), pad.allSatisfy({ $0 >= 0 }) else {
                throw IRError("kernel, stride and pad must be two positive (pad: non-negative) integers")
            }
            guard pad[0] * 2 <= kernel[0], pad[1] * 2 <= kernel[1] else {
                throw IRError("pad \(pad) must be at most half the kernel \(kernel)")
            }
            (n, c, h, w) = (input[0], input[1], input[2], input[3])
            (kh, kw, sh, sw, ph, pw) = (kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1])
            guard h + 2 * ph >= kh, w + 2 * pw >= kw else {
                throw IRError("the \(kh)×\(kw) window does not fit the padded \(h)×\(w) input")
            }
            oh = (h + 2 * ph - kh) / sh + 1
            ow = (w + 2 * pw - kw) / sw + 1
            countIncludePad = try attrs["count_include_pad"] == nil ? true : attrs.bool("count_include_pad")
        }

        var ints: [Int] { [n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw] }
        var outputShape: [Int] { [n, c, oh, ow] }

        /// For each output element: its flat index and the flat input indices
        /// of its window (in row-major order) plus the divisor for averaging.
        func forEachWindow(_ body: (Int, [Int], Int) -> Void) {
            var taps: [Int] = []
            for plane in 0..<(n * c) {
                for y in 0..<oh {
                    for x in 0..<ow {
                        taps.removeAll(keepingCapacity: true)
                        for ky in 0..<kh {
                            let iy = y * sh - ph + ky
                            if iy < 0 || iy >= h { continue }
                            for kx in 0..<kw {
                                let ix = x * sw - pw + kx
                                if ix < 0 || ix >= w { continue }
                                taps.append((plane * h + iy) * w + ix)
                            }
                        }
                        let y0 = y * sh - ph, x0 = x * sw - pw
                        let padded = (min(y0 + kh, h + ph) - y0) * (min(x0 + kw, w + pw) - x0)
                        body((plane * oh + y) * ow + x, taps, countIncludePad ? padded : taps.count)
                    }
                }
            }
        }
    }

    static func poolAttrs(_ attrs: Attributes, inputShape: [Int]) -> Attributes {
        var out = attrs
        out["input_shape"] = .ints(inputShape)
        return out
    }

    static let example: Attributes = ["kernel": .ints([3, 2]), "stride": .ints([2, 1]), "pad": .ints([1, 1])]

    public static let all: [OpSpec] = [
        /// ∂x = max_pool2d_grad(x, g)
        OpSpec(name: "max_pool2d", doc: "%y = max_pool2d(%x) {kernel=[3,3], stride=[2,2], pad=[1,1]}: window maximum",
               arity: 1...1, requiredAttributes: ["kernel"],
               inferType: { operands, attrs in operands[0].with(shape: try Geometry(input: operands[0].shape, attrs: attrs).outputShape) },
               evaluate: { operands, attrs, type in
                   var out = [Double](repeating: 0, count: type.count)
                   try Geometry(input: operands[0].shape, attrs: attrs).forEachWindow { o, taps, _ in
                       out[o] = taps.map { operands[0].data[$0] }.max() ?? -.infinity
                   }
                   return HostTensor(type, out)
               },
               gradient: { c in [try c.builder.emit("max_pool2d_grad", [c.operands[0], c.grad], c.attrs)] },
               lowering: .kernels { operands, _, attrs in
                   [KernelCall("max_pool2d", [.operand(0), .result], ints: try Geometry(input: operands[0].shape, attrs: attrs).ints)]
               },
               examples: [([f([2, 2, 6, 5])], example)]),

        OpSpec(name: "max_pool2d_grad", doc: "%dx = max_pool2d_grad(%x, %dy) {<max_pool2d's>}: g to each window's first maximum",
               arity: 2...2, requiredAttributes: ["kernel"],
               inferType: { operands, attrs in
                   guard try Geometry(input: operands[0].shape, attrs: attrs).outputShape == operands[1].shape else {
                       throw IRError("dy does not match max_pool2d's output")
                   }
                   return operands[0]
               },
               evaluate: { operands, attrs, type in
                   var out = [Double](repeating: 0, count: type.count)
                   try Geometry(input: operands[0].shape, attrs: attrs).forEachWindow { o, taps, _ in
                       guard var best = taps.first else { return }
                       for t in taps where operands[0].data[t] > operands[0].data[best] { best = t }
                       out[best] += operands[1].data[o]
                   }
                   return HostTensor(type, out)
               },
               gradient: nil,
               lowering: .kernels { operands, _, attrs in
                   [KernelCall("max_pool2d_grad", [.operand(0), .operand(1), .result],
                               ints: try Geometry(input: operands[0].shape, attrs: attrs).ints)]
               },
               examples: [([f([2, 2, 6, 5]), f([2, 2, 3, 6])], example)]),

        /// ∂x = avg_pool2d_grad(g)
        OpSpec(name: "avg_pool2d", doc: "%y = avg_pool2d(%x) {kernel=[2,2], stride=[2,2], pad=[0,0], count_include_pad=true}: window mean",
               arity: 1...1, requiredAttributes: ["kernel"],
               inferType: { operands, attrs in operands[0].with(shape: try Geometry(input: operands[0].shape, attrs: attrs).outputShape) },
               evaluate: { operands, attrs, type in
                   var out = [Double](repeating: 0, count: type.count)
                   try Geometry(input: operands[0].shape, attrs: attrs).forEachWindow { o, taps, divisor in
                       out[o] = taps.reduce(0) { $0 + operands[0].data[$1] } / Double(divisor)
                   }
                   return HostTensor(type, out)
               },
               gradient: { c in
                   [try c.builder.emit("avg_pool2d_grad", [c.grad], poolAttrs(c.attrs, inputShape: c.operands[0].shape))]
               },
               lowering: .kernels { operands, _, attrs in
                   let geo = try Geometry(input: operands[0].shape, attrs: attrs)
                   return [KernelCall("avg_pool2d", [.operand(0), .result], ints: geo.ints + [geo.countIncludePad ? 1 : 0])]
               },
               examples: [([f([2, 2, 6, 5])], example),
                          ([f([1, 2, 5, 5])], ["kernel": .ints([3, 3]), "stride": .ints([2, 2]), "pad": .ints([1, 1]), "count_include_pad": .bool(false)])]),

        OpSpec(name: "avg_pool2d_grad", doc: "%dx = avg_pool2d_grad(%dy) {input_shape=[...], <avg_pool2d's>}: avg_pool2d's VJP",
               arity: 1...1, requiredAttributes: ["kernel", "input_shape"],
               inferType: { operands, attrs in
                   let input = try attrs.ints("input_shape")
                   guard try Geometry(input: input, attrs: attrs).outputShape == operands[0].shape else {
                       throw IRError("dy does not match avg_pool2d's output")
                   }
                   return operands[0].with(shape: input)
               },
               evaluate: { operands, attrs, type in
                   var out = [Double](repeating: 0, count: type.count)
                   try Geometry(input: type.shape, attrs: attrs).forEachWindow { o, taps, divisor in
                       for t in taps { out[t] += operands[0].data[o] / Double(divisor) }
                   }
                   return HostTensor(type, out)
               },
               gradient: nil,
               lowering: .kernels { _, result, attrs in
                   let geo = try Geometry(input: result.shape, attrs: attrs)
                   return [KernelCall("avg_pool2d_grad", [.operand(0), .result], ints: geo.ints + [geo.countIncludePad ? 1 : 0])]
               },
               examples: [([f([2, 2, 3, 6])], poolAttrs(example, inputShape: [2, 2, 6, 5]))]),
    ]
}

extension FunctionBuilder {
    public func maxPool2d(_ x: Value, kernel: Int, stride: Int, pad: Int = 0) throws -> Value {
        try emit("max_pool2d", [x], ["kernel": .ints([kernel, kernel]), "stride": .ints([stride, stride]), "pad": .ints([pad, pad])])
    }
    public func avgPool2d(_ x: Value, kernel: Int, stride: Int, pad: Int = 0) throws -> Value {
        try emit("avg_pool2d", [x], ["kernel": .ints([kernel, kernel]), "stride": .ints([stride, stride]), "pad": .ints([pad, pad])])
    }
}
