/// 2-D convolution (cross-correlation, NCHW, OIHW weights) and its two
/// backward ops. All three lower to the im2col + GEMM kernels, or to the
/// Winograd ones when their `algorithm` says so.
public enum ConvOps {
    static let f = TensorType.f32

    /// Everything the kernels and the interpreter need, from shapes + attributes.
    struct Geometry {
        var n, c, h, w, o, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw, groups: Int

        init(input: [Int], weight: [Int], attrs: Attributes) throws {
            guard input.count == 4, weight.count == 4 else {
                throw IRError("conv2d needs a rank-4 input (NCHW) and weight (OIHW)")
            }
            let stride = try attrs["stride"] == nil ? [1, 1] : attrs.ints("stride")
            let pad = try attrs["pad"] == nil ? [0, 0] : attrs.ints("pad")
            let dilation = try attrs["dilation"] == nil ? [1, 1] : attrs.ints("dilation")
            groups = try attrs["groups"] == nil ? 1 : attrs.int("groups")
            guard stride.count == 2, pad.count == 2, dilation.count == 2,
                  stride.allSatisfy({ $0 > 0 }), dilation.allSatisfy({ $0 > 0 }), pad.allSatisfy({ $0 >= 0 }) else {
                throw IRError("stride, pad and dilation must be two positive (pad: non-negative) integers")
            }
            (n, c, h, w) = (input[0], input[1], input[2], input[3])
            (o, kh, kw) = (weight[0], weight[2], weight[3])
            (sh, sw, ph, pw, dh, dw) = (stride[0], stride[1], pad[0], pad[1], dilation[0], dilation[1])
            guard groups > 0, c % groups == 0, o % groups == 0 else {
                throw IRError("groups=\(groups) must divide input channels \(c) and output channels \(o)")
            }
            guard weight[1] == c / groups else {
                throw IRError("weight has \(weight[1]) input channels per group; input has \(c) channels in \(groups) group(s), so it needs \(c / groups)")
            }
            oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1
            ow = (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1
            guard h + 2 * ph >= dh * (kh - 1) + 1, w + 2 * pw >= dw * (kw - 1) + 1 else {
                throw IRError("the \(kh)×\(kw) kernel (dilation \(dh)×\(dw)) does not fit the padded \(h)×\(w) input")
            }
        }

        var kernelInts: [Int] { [n, c, h, w, o, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw, groups] }

        /// Whether the Winograd kernels compute this convolution: 3×3,
        /// stride 1, undilated, one group, padding at most 2.
        public var winogradApplies: Bool {
            kh == 3 && kw == 3 && sh == 1 && sw == 1 && dh == 1 && dw == 1 && groups == 1 && ph <= 2 && pw <= 2
        }
        var outputShape: [Int] { [n, o, oh, ow] }
        var inputShape: [Int] { [n, c, h, w] }
        var weightShape: [Int] { [o, c / groups, kh, kw] }

        /// Visit every (input index, weight index, output index) triple that
        /// contributes, in the reference interpreter.
        func forEachTap(_ body: (Int, Int, Int) -> Void) {
            let cg = c / groups, og = o / groups
            for b in 0..<n {
                for oc in 0..<o {
                    let g = oc / og
                    for y in 0..<oh {
                        for x in 0..<ow {
                            let out = ((b * o + oc) * oh + y) * ow + x
                            for ic in 0..<cg {
                                let channel = g * cg + ic
                                for ky in 0..<kh {
                                    let iy = y * sh - ph + ky * dh
                                    if iy < 0 || iy >= h { continue }
                                    for kx in 0..<kw {
                                        let ix = x * sw - pw + kx * dw
                                        if ix < 0 || ix >= w { continue }
                                        body(((b * c + channel) * h + iy) * w + ix, ((oc * cg + ic) * kh + ky) * kw + kx, out)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    static let convAttributes = ["stride", "pad", "dilation", "groups"]

    /// The `algorithm` attribute of conv2d, fused_conv2d and both gradients:
    /// absent for im2col + GEMM, "winograd4" for Winograd's F(4×4, 3×3),
    /// "winograd2" for F(2×2, 3×3) (select-conv-algorithm sets it). It
    /// changes rounding only: the interpreter computes the convolution
    /// exactly either way.
    public enum Algorithm {
        public static let key = "algorithm"
        /// The Winograd algorithms by name, with their output tile size.
        public static let winograd: [String: Int] = ["winograd4": 4, "winograd2": 2]
        public static func winograd(tile: Int) -> String { "winograd\(tile)" }
    }

    /// The Winograd tile size `attrs` ask for (nil: im2col + GEMM); an error
    /// when they name an algorithm that does not exist or cannot compute
    /// `geometry`.
    static func winogradTile(_ attrs: Attributes, _ geometry: Geometry) throws -> Int? {
        guard attrs[Algorithm.key] != nil else { return nil }
        let name = try attrs.string(Algorithm.key)
        guard let tile = Algorithm.winograd[name] else {
            let known = Algorithm.winograd.keys.sorted().map { "\"\($0)\"" }.joined(separator: ", ")
            throw IRError("unknown algorithm \"\(name)\"; the convolution kernels are im2col + GEMM (no attribute), \(known)")
        }
        guard geometry.winogradApplies else {
            throw IRError("algorithm=\"\(name)\" computes 3×3 convolutions with stride 1, dilation 1, one group and padding at most 2; this one is \(geometry.kh)×\(geometry.kw), stride [\(geometry.sh),\(geometry.sw)], dilation [\(geometry.dh),\(geometry.dw)], groups \(geometry.groups), pad [\(geometry.ph),\(geometry.pw)]")
        }
        return tile
    }

    /// A Winograd kernel's ints: the geometry (and epilogue flags) it was
    /// given, then the tile size.
    static func kernel(_ name: String, tile: Int?) -> String { tile == nil ? name : name + "_winograd" }
    static func tileInts(_ tile: Int?) -> [Int] { tile.map { [$0] } ?? [] }

    /// Rows of the GEMM micro-kernel's panels with AVX-512 (ddp_gemm.c's
    /// isa_avx512); AVX2's 6 divide it.
    public static let widestPanelRows = 12

    /// The floats a Winograd kernel asks for as its weights scratch (see
    /// ddp_winograd_tile.h): the transformed filters U, (m+2)² planes packed
    /// for the GEMM with the `rows` side padded to its micro-kernel's rows
    /// (12 with AVX-512, 6 with AVX2; 12 covers both), or for the weight
    /// gradient the (m+2)² planes of dU, unpadded. Zero without Winograd.
    static func winogradScratchFloats(tile: Int?, rows: Int, columns: Int, packed: Bool = true) -> Int {
        guard let tile else { return 0 }
        let microKernelRows = widestPanelRows
        let padded = packed ? (rows + microKernelRows - 1) / microKernelRows * microKernelRows : rows
        return (tile + 2) * (tile + 2) * padded * columns
    }

    /// 2 · output elements · (C/groups · KH · KW): the work of a convolution
    /// and of each of its two gradients.
    static func macs(output: [Int], weight: [Int]) -> Double {
        2 * Double(output.reduce(1, *)) * Double(weight.dropFirst().reduce(1, *))
    }

    /// The reference convolution (conv2d's and fused_conv2d's).
    static func evaluate(_ x: HostTensor, _ w: HostTensor, attrs: Attributes, type: TensorType) throws -> HostTensor {
        let geo = try Geometry(input: x.shape, weight: w.shape, attrs: attrs)
        var out = [Double](repeating: 0, count: type.count)
        let xs = x.data, ws = w.data
        geo.forEachTap { i, k, o in out[o] += xs[i] * ws[k] }
        return HostTensor(type, out)
    }

    /// dx's type for conv2d_grad_input and fused_conv2d_grad_input (x's
    /// shape, `input_shape`), once dy's shape and the algorithm are checked
    /// against it.
    static func gradInputType(_ operands: [TensorType], _ attrs: Attributes) throws -> TensorType {
        let input = try attrs.ints("input_shape")
        let geometry = try Geometry(input: input, weight: operands[1].shape, attrs: attrs)
        guard geometry.outputShape == operands[0].shape else {
            throw IRError("dy has shape \(operands[0].shape); conv2d of \(input) gives \(geometry.outputShape)")
        }
        _ = try winogradTile(attrs, geometry)
        return operands[0].with(shape: input)
    }

    /// The reference input gradient (conv2d_grad_input's and fused_conv2d_grad_input's).
    static func evaluateGradInput(_ dy: HostTensor, _ w: HostTensor, attrs: Attributes, type: TensorType) throws -> HostTensor {
        let geo = try Geometry(input: type.shape, weight: w.shape, attrs: attrs)
        var out = [Double](repeating: 0, count: type.count)
        let dys = dy.data, ws = w.data
        geo.forEachTap { i, k, o in out[i] += dys[o] * ws[k] }
        return HostTensor(type, out)
    }

    static func passAttrs(_ attrs: Attributes, adding key: String, _ shape: [Int]) -> Attributes {
        var out = Attributes()
        for k in convAttributes { out[k] = attrs[k] }
        out[key] = .ints(shape)
        return out
    }

    /// The epilogue of a convolution that has none, as its fused form says it.
    static let identityEpilogue: Attributes = ["epilogue": .expr(.input(0))]

    static let example: Attributes = ["stride": .ints([2, 1]), "pad": .ints([1, 2]), "dilation": .ints([1, 2]), "groups": .int(2)]

    /// The m×m output tiles a Winograd kernel would compute for this node
    /// (conv2d, fused_conv2d, conv2d_grad_input, fused_conv2d_grad_input or
    /// conv2d_grad_weight), or
    /// nil when Winograd cannot compute it.
    public static func winogradTiles(_ node: Node, operandTypes: [TensorType], tile m: Int) -> Int? {
        guard let (convolution, geometry) = winogradGeometry(node, operandTypes: operandTypes) else { return nil }
        // The input gradient's kernel computes a convolution onto x's grid.
        let (h, w) = convolution.kernel == .gradInput ? (geometry.h, geometry.w) : (geometry.oh, geometry.ow)
        return geometry.n * ((h + m - 1) / m) * ((w + m - 1) / m)
    }

    /// Which of a convolution's three kernels a node runs.
    public enum Kernel: String, CaseIterable, Sendable {
        case forward, gradInput = "grad_input", gradWeight = "grad_weight"
    }

    /// The kernel a node runs and its convolution's input (x) and filter
    /// shapes, for a node Winograd can compute (a 3×3, stride-1 convolution
    /// or gradient of one group); nil for any other node.
    public static func winogradConvolution(_ node: Node, operandTypes: [TensorType]) -> (kernel: Kernel, input: [Int], weight: [Int])? {
        winogradGeometry(node, operandTypes: operandTypes)?.convolution
    }

    private static func winogradGeometry(_ node: Node, operandTypes: [TensorType])
        -> (convolution: (kernel: Kernel, input: [Int], weight: [Int]), geometry: Geometry)? {
        let convolution: (kernel: Kernel, input: [Int], weight: [Int])
        switch node.op {
        case "conv2d": convolution = (.forward, operandTypes[0].shape, operandTypes[1].shape)
        case "fused_conv2d":
            guard let gathered = try? FusedConvOps.inputShape(operandTypes, node.attrs) else { return nil }
            convolution = (.forward, gathered, operandTypes[1].shape)
        case "conv2d_grad_input", "fused_conv2d_grad_input": convolution = (.gradInput, node.type.shape, operandTypes[1].shape)
        case "conv2d_grad_weight": convolution = (.gradWeight, operandTypes[0].shape, node.type.shape)
        default: return nil
        }
        guard let geometry = try? Geometry(input: convolution.input, weight: convolution.weight, attrs: node.attrs),
              geometry.winogradApplies else { return nil }
        return (convolution, geometry)
    }

    static func winogradExample(pad: [Int], tile: Int = 4) -> Attributes {
        ["pad": .ints(pad), Algorithm.key: .string(Algorithm.winograd(tile: tile))]
    }

    public static let all: [OpSpec] = [
        /// ∂x = conv2d_grad_input(g, w), ∂w = conv2d_grad_weight(x, g)
        OpSpec(name: "conv2d", doc: "%y = conv2d(%x, %w) {stride=[1,1], pad=[0,0], dilation=[1,1], groups=1}: NCHW cross-correlation",
               arity: 2...2,
               inferType: { operands, attrs in
                   guard operands.allSatisfy({ $0.dtype == .f32 || $0.dtype == .f64 }) else { throw IRError("needs f32 operands") }
                   let geometry = try Geometry(input: operands[0].shape, weight: operands[1].shape, attrs: attrs)
                   _ = try winogradTile(attrs, geometry)
                   return operands[0].with(shape: geometry.outputShape)
               },
               evaluate: { operands, attrs, type in try evaluate(operands[0], operands[1], attrs: attrs, type: type) },
               gradient: { c in
                   let b = c.builder, x = c.operands[0], w = c.operands[1]
                   // The weight gradient first: x, often read by nothing later, is
                   // then free before the input gradient's dx is made.
                   let dw = try b.emit("conv2d_grad_weight", [x, c.grad], passAttrs(c.attrs, adding: "weight_shape", w.shape))
                   return [try b.emit("conv2d_grad_input", [c.grad, w], passAttrs(c.attrs, adding: "input_shape", x.shape)), dw]
               },
               // fused_conv2d's kernel call with the epilogue in0: one place knows the kernels' arguments.
               lowering: .kernels { operands, result, attrs in
                   let geometry = try Geometry(input: operands[0].shape, weight: operands[1].shape, attrs: attrs)
                   return [try FusedConvOps.kernelCall("conv2d", geometry, operands: operands, result: result, attrs: attrs.merging(identityEpilogue),
                                                       transformed: (rows: geometry.o, columns: geometry.c))]
               },
               examples: [([f([2, 4, 7, 6]), f([6, 2, 3, 3])], example),
                          ([f([1, 3, 5, 5]), f([4, 3, 1, 1])], [:]),
                          // Tiles cut by the image's edge on both sides, padding 1 and 0.
                          ([f([2, 3, 9, 7]), f([5, 3, 3, 3])], winogradExample(pad: [1, 1])),
                          ([f([1, 4, 6, 11]), f([3, 4, 3, 3])], winogradExample(pad: [0, 2])),
                          ([f([2, 3, 7, 5]), f([4, 3, 3, 3])], winogradExample(pad: [1, 2], tile: 2))],
               flops: { operands, result, _ in macs(output: result.shape, weight: operands[1].shape) }),

        OpSpec(name: "conv2d_grad_input", doc: "%dx = conv2d_grad_input(%dy, %w) {input_shape=[...], <conv2d's>}: conv2d's VJP wrt x",
               arity: 2...2, requiredAttributes: ["input_shape"],
               inferType: { operands, attrs in try gradInputType(operands, attrs) },
               evaluate: { operands, attrs, type in try evaluateGradInput(operands[0], operands[1], attrs: attrs, type: type) },
               gradient: nil,
               // fused_conv2d_grad_input's kernel call with the epilogue in0.
               lowering: .kernels { operands, result, attrs in
                   let geometry = try Geometry(input: result.shape, weight: operands[1].shape, attrs: attrs)
                   return [try FusedConvOps.kernelCall("conv2d_grad_input", geometry, operands: operands, result: result,
                                                       attrs: attrs.merging(identityEpilogue), transformed: (rows: geometry.c, columns: geometry.o))]
               },
               examples: [([f([2, 6, 4, 6]), f([6, 2, 3, 3])], passAttrs(example, adding: "input_shape", [2, 4, 7, 6])),
                          ([f([2, 5, 9, 7]), f([5, 3, 3, 3])], winogradExample(pad: [1, 1]).merging(["input_shape": .ints([2, 3, 9, 7])])),
                          ([f([1, 3, 4, 13]), f([3, 4, 3, 3])], winogradExample(pad: [0, 2]).merging(["input_shape": .ints([1, 4, 6, 11])])),
                          ([f([2, 4, 7, 7]), f([4, 3, 3, 3])], winogradExample(pad: [1, 2], tile: 2).merging(["input_shape": .ints([2, 3, 7, 5])]))],
               flops: { operands, _, _ in macs(output: operands[0].shape, weight: operands[1].shape) }),

        OpSpec(name: "conv2d_grad_weight", doc: "%dw = conv2d_grad_weight(%x, %dy) {weight_shape=[...], <conv2d's>}: conv2d's VJP wrt w",
               arity: 2...2, requiredAttributes: ["weight_shape"],
               inferType: { operands, attrs in
                   let weight = try attrs.ints("weight_shape")
                   let geo = try Geometry(input: operands[0].shape, weight: weight, attrs: attrs)
                   guard geo.outputShape == operands[1].shape else {
                       throw IRError("dy has shape \(operands[1].shape); conv2d gives \(geo.outputShape)")
                   }
                   _ = try winogradTile(attrs, geo)
                   return operands[0].with(shape: weight)
               },
               evaluate: { operands, attrs, type in
                   let geo = try Geometry(input: operands[0].shape, weight: type.shape, attrs: attrs)
                   var out = [Double](repeating: 0, count: type.count)
                   let x = operands[0].data, dy = operands[1].data
                   geo.forEachTap { i, k, o in out[k] += x[i] * dy[o] }
                   return HostTensor(type, out)
               },
               gradient: nil,
               lowering: .kernels { operands, result, attrs in
                   let geometry = try Geometry(input: operands[0].shape, weight: result.shape, attrs: attrs)
                   let tile = try winogradTile(attrs, geometry)
                   return [KernelCall(kernel("conv2d_grad_weight", tile: tile), [.operand(0), .operand(1), .result],
                                      ints: geometry.kernelInts + tileInts(tile) + (tile == nil ? [] : FusedConvOps.Prologue.none),
                                      scratchFloats: winogradScratchFloats(tile: tile, rows: geometry.o, columns: geometry.c, packed: false), threadScratch: true)]
               },
               examples: [([f([2, 4, 7, 6]), f([2, 6, 4, 6])], passAttrs(example, adding: "weight_shape", [6, 2, 3, 3])),
                          ([f([2, 3, 9, 7]), f([2, 5, 9, 7])], winogradExample(pad: [1, 1]).merging(["weight_shape": .ints([5, 3, 3, 3])])),
                          ([f([1, 4, 6, 11]), f([1, 3, 4, 13])], winogradExample(pad: [0, 2]).merging(["weight_shape": .ints([3, 4, 3, 3])])),
                          ([f([2, 3, 7, 5]), f([2, 4, 7, 7])], winogradExample(pad: [1, 2], tile: 2).merging(["weight_shape": .ints([4, 3, 3, 3])]))],
               flops: { operands, result, _ in macs(output: operands[1].shape, weight: result.shape) }),
    ]
}

extension FunctionBuilder {
    public func conv2d(_ x: Value, _ w: Value, stride: Int = 1, pad: Int = 0, dilation: Int = 1, groups: Int = 1) throws -> Value {
        var attrs: Attributes = [:]
        if stride != 1 { attrs["stride"] = .ints([stride, stride]) }
        if pad != 0 { attrs["pad"] = .ints([pad, pad]) }
        if dilation != 1 { attrs["dilation"] = .ints([dilation, dilation]) }
        if groups != 1 { attrs["groups"] = .int(groups) }
        return try emit("conv2d", [x, w], attrs)
    }
}
