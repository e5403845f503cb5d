/// A convolution whose epilogue is applied to each output block as the conv2d
/// kernel produces it, while it is still in cache: the anchor of a fusion
/// group, formed by the `fuse-conv-epilogue` pass after autodiff.
///
/// `in0` of the epilogue is the convolution's value; `in1`, `in2`, ... are the
/// operands after `%x, %w`, each either per channel (O elements shaped
/// `[O,1,1]` or `[1,O,1,1]`) or of the output's shape. The kernel computes the
/// family `act(in0·scale + shift + residual)·[gate > 0]` (each part optional,
/// `act` ReLU or none, the gate a full tensor: a ReLU's backward, or
/// `gate·gscale + gshift` per channel when it is read from the value before
/// a batch norm's ReLU); the type rule refuses any other expression, so what
/// the IR says is exactly what runs.
///
/// `fused_conv2d_grad_input` is the same for the input gradient: its value
/// is dx, its channels x's. In a training step's backward pass the ReLU
/// before a convolution makes its dx `mul(dx, gt(relu_out, 0))`, often after
/// a gradient from a skip connection is added; the kernel applies both to
/// each image of dx as it finishes it.
///
/// A Winograd `fused_conv2d` may also have a prologue, applied to its input
/// as it loads it (`Prologue`, formed by `fuse-conv-prologue`), and
/// `fused_conv2d_grad_weight` is the weight gradient of such a convolution.
public enum FusedConvOps {
    static let f = TensorType.f32

    /// The epilogue in the kernel's terms: which extra operand (0-based, after
    /// %x and %w) is each part.
    public struct Epilogue: Equatable {
        public var scale: Int?
        public var shift: Int?
        public var residual: Int?
        public var relu = false
        public var gate: Int?
        /// The gate as gate·gateScale + gateShift (per channel), not the gate itself.
        public var gateScale: Int?
        public var gateShift: Int?

        /// Recognizes the kernel's family in `expr`; nil if it is not one.
        /// `perChannel[k]` says whether extra operand k is per channel.
        public static func match(_ expr: ScalarExpr, perChannel: [Bool]) -> Epilogue? {
            var epilogue = Epilogue()
            func extra(_ e: ScalarExpr, perChannel wanted: Bool) -> Int? {
                guard case .input(let i) = e, i >= 1, i - 1 < perChannel.count, perChannel[i - 1] == wanted else { return nil }
                return i - 1
            }
            var gated = expr
            // gate or add(mul(gate, gateScale), gateShift)
            func gate(_ e: ScalarExpr) -> (gate: Int, scale: Int?, shift: Int?)? {
                if let k = extra(e, perChannel: false) { return (k, nil, nil) }
                if case .binary(.add, .binary(.mul, let g, let s), let t) = e, let k = extra(g, perChannel: false),
                   let gs = extra(s, perChannel: true), let gt = extra(t, perChannel: true) { return (k, gs, gt) }
                return nil
            }
            // body·gt(gate, 0), either order
            if case .binary(.mul, let a, let b) = expr {
                if case .binary(.gt, let g, .const(0)) = b, let parts = gate(g) {
                    (epilogue.gate, epilogue.gateScale, epilogue.gateShift, gated) = (parts.gate, parts.scale, parts.shift, a)
                } else if case .binary(.gt, let g, .const(0)) = a, let parts = gate(g) {
                    (epilogue.gate, epilogue.gateScale, epilogue.gateShift, gated) = (parts.gate, parts.scale, parts.shift, b)
                }
            }
            var body = gated
            if case .binary(.max, let a, .const(0)) = gated {
                epilogue.relu = true
                body = a
            } else if case .binary(.max, .const(0), let a) = gated {
                epilogue.relu = true
                body = a
            }
            // scale·in0, in0·scale or in0
            func scaled(_ e: ScalarExpr) -> (Int?)? {
                if e == .input(0) { return .some(nil) }
                if case .binary(.mul, let a, let b) = e {
                    if a == .input(0), let s = extra(b, perChannel: true) { return s }
                    if b == .input(0), let s = extra(a, perChannel: true) { return s }
                }
                return nil
            }
            // scaled + shift (either order) or scaled
            func affine(_ e: ScalarExpr) -> (scale: Int?, shift: Int?)? {
                if let s = scaled(e) { return (s, nil) }
                if case .binary(.add, let a, let b) = e {
                    if let s = scaled(a), let t = extra(b, perChannel: true) { return (s, t) }
                    if let s = scaled(b), let t = extra(a, perChannel: true) { return (s, t) }
                }
                return nil
            }
            if let parts = affine(body) {
                (epilogue.scale, epilogue.shift) = parts
            } else if case .binary(.add, let a, let b) = body {
                if let r = extra(b, perChannel: false), let parts = affine(a) {
                    (epilogue.scale, epilogue.shift, epilogue.residual) = (parts.scale, parts.shift, r)
                } else if let r = extra(a, perChannel: false), let parts = affine(b) {
                    (epilogue.scale, epilogue.shift, epilogue.residual) = (parts.scale, parts.shift, r)
                } else {
                    return nil
                }
            } else {
                return nil
            }
            // Every extra operand is used, once.
            let used = [epilogue.scale, epilogue.shift, epilogue.residual, epilogue.gate, epilogue.gateScale, epilogue.gateShift].compactMap { $0 }
            guard used.count == perChannel.count, Set(used).count == used.count else { return nil }
            return epilogue
        }

        /// The kernel's epilogue arguments: the conv kernels' ia after the geometry.
        var kernelInts: [Int] {
            [scale == nil ? 0 : 1, shift == nil ? 0 : 1, residual == nil ? 0 : 1, relu ? 1 : 0, gate == nil ? 0 : gateScale == nil ? 1 : 2]
        }
        /// The extra operands in the kernel's buffer order (scale, shift, residual, gate, gate's scale and shift).
        var kernelOperands: [Int] { [scale, shift, residual, gate, gateScale, gateShift].compactMap { $0 } }
        static let none = [0, 0, 0, 0, 0]
    }

    /// `moments=true` on a forward convolution (conv2d or fused_conv2d, set
    /// by fuse-conv-moments): its epilogue also gathers the batch moments of
    /// its result, held by the batch_moments node right after it (marked
    /// `in_epilogue=true`), which then runs no kernel of its own. Code
    /// generation passes that node's buffer to the convolution's lowering as
    /// one more operand, the last.
    public static let momentsKey = "moments"

    /// A convolution node's operands as its lowering gets them: its own
    /// (`ownCount` of them), and the index of the moments buffer when its
    /// epilogue gathers them and code generation appended it. (Plan-memory
    /// and the arena check lower the node's own operands alone, for its
    /// scratch.)
    static func splitMoments(_ operands: [TensorType], _ attrs: Attributes, ownCount: Int) -> (own: [TensorType], moments: Int?) {
        attrs[momentsKey] == nil || operands.count <= ownCount ? (operands, nil) : (Array(operands.dropLast()), operands.count - 1)
    }

    /// How many operands a fused convolution node has of its own: %x, %w,
    /// one per epilogue input after in0, and its prologue's or gathered
    /// input's.
    static func ownOperandCount(_ attrs: Attributes) -> Int {
        let epilogueInputs = (try? attrs.expr("epilogue"))?.inputCount ?? 1
        return 1 + max(epilogueInputs, 1) + inputOperandCount(attrs)
    }

    /// The epilogue's last flag, has_moments.
    static func momentsInts(_ moments: Int?) -> [Int] { [moments == nil ? 0 : 1] }

    /// The prologue in the kernel's terms: a Winograd convolution reads its
    /// input as act(x·scale + shift) per input channel (the previous
    /// layer's normalization and ReLU, which then need no pass of their
    /// own), `scale` and `shift` its last two operands (`in1`, `in2` of the
    /// `prologue` expression, whose `in0` is the input element).
    public struct Prologue: Equatable {
        public var relu: Bool
        public static let key = "prologue"
        /// The kernel's prologue flags (kind, relu, fh, fw, upsampled) when
        /// there is none.
        static let none = [0, 0, 0, 0, 0]
        var kernelInts: [Int] { [1, relu ? 1 : 0, 0, 0, 0] }

        /// act(in0·in1 + in2), act ReLU or none: the form `match` accepts, written out.
        public static func expr(relu: Bool) -> ScalarExpr {
            let affine = ScalarExpr.binary(.add, .binary(.mul, .input(0), .input(1)), .input(2))
            return relu ? .binary(.max, affine, .const(0)) : affine
        }

        /// Recognizes act(in0·in1 + in2) with in1 the scale and in2 the shift
        /// (either order of each operation); nil for anything else.
        public static func match(_ expr: ScalarExpr) -> Prologue? {
            guard let parts = Epilogue.match(expr, perChannel: [true, true]), parts.scale == 0, parts.shift == 1,
                  parts.residual == nil, parts.gate == nil else { return nil }
            return Prologue(relu: parts.relu)
        }
    }

    /// A gathered input, `input_gather=[fh, fw, skip channels]` (formed by
    /// `fuse-conv-gather`): a Winograd convolution reads its input as
    /// concat(upsample(%x), %skip) along channels, %x's channels first,
    /// enlarged fh × fw times, then %skip's (its last operand; none with 0
    /// skip channels). The upsampling is nearest (each element repeated), or
    /// bilinear with `input_gather_upsample="bilinear"` or
    /// `"bilinear_align_corners"`. A decoder block's upsampled and
    /// concatenated input is then never written: its first convolution reads
    /// the rows it needs from the two as it transforms them.
    public struct Gather: Equatable {
        public static let key = "input_gather"
        public static let upsampleKey = "input_gather_upsample"

        public enum Upsample: Equatable {
            case nearest
            case bilinear(alignCorners: Bool)

            /// Its `input_gather_upsample` value; nil for nearest, said by leaving it out.
            var name: String? {
                switch self {
                case .nearest: return nil
                case .bilinear(let align): return align ? "bilinear_align_corners" : "bilinear"
                }
            }
            static let named = Dictionary(uniqueKeysWithValues: [Upsample.bilinear(alignCorners: false), .bilinear(alignCorners: true)].map { ($0.name!, $0) })
        }

        public var fh: Int
        public var fw: Int
        public var skipChannels: Int
        public var upsample: Upsample

        public init(fh: Int, fw: Int, skipChannels: Int, upsample: Upsample = .nearest) {
            (self.fh, self.fw, self.skipChannels, self.upsample) = (fh, fw, skipChannels, upsample)
        }

        /// The node attributes that say it.
        public var attrs: Attributes {
            var attrs: Attributes = [Self.key: .ints([fh, fw, skipChannels])]
            if let name = upsample.name { attrs[Self.upsampleKey] = .string(name) }
            return attrs
        }

        /// The node's gathered input; nil without one.
        public static func read(_ attrs: Attributes) throws -> Gather? {
            guard attrs[key] != nil else {
                guard attrs[upsampleKey] == nil else { throw IRError("\(upsampleKey)= without input_gather=") }
                return nil
            }
            let v = try attrs.ints(key)
            guard v.count == 3, v[0] >= 1, v[1] >= 1, v[2] >= 0 else {
                throw IRError("input_gather=\(v): needs [fh, fw, skip channels], whole factors of at least 1 and skip channels of at least 0")
            }
            var upsample = Upsample.nearest
            if attrs[upsampleKey] != nil {
                let name = try attrs.string(upsampleKey)
                guard let named = Upsample.named[name] else {
                    throw IRError("\(upsampleKey)=\"\(name)\": needs \"bilinear\" or \"bilinear_align_corners\" (nearest is said by leaving it out)")
                }
                upsample = named
            }
            return Gather(fh: v[0], fw: v[1], skipChannels: v[2], upsample: upsample)
        }

        /// The upsampling op and its attributes that make the gathered
        /// channels from %x, to `size`.
        func upsampling(size: [Int]) -> (op: String, attrs: Attributes) {
            switch upsample {
            case .nearest: return ("upsample_nearest", ["size": .ints(size)])
            case .bilinear(let align): return ("upsample_bilinear", ["size": .ints(size), "align_corners": .bool(align)])
            }
        }

        /// The gradient op and its attributes that take a gradient of the
        /// gathered channels (of `size`) back to %x's `source` shape.
        func upsamplingGradient(source: [Int], size: [Int]) -> (op: String, attrs: Attributes) {
            let forward = upsampling(size: size)
            return (forward.op + "_grad", forward.attrs.merging(["input_shape": .ints(source)]))
        }

        /// The kernel's prologue flags for %x of `upsampled` channels.
        func kernelInts(upsampled: Int) -> [Int] {
            switch upsample {
            case .nearest: return [2, 0, fh, fw, upsampled]
            case .bilinear(let align): return [3, align ? 1 : 0, fh, fw, upsampled]
            }
        }
        var operandCount: Int { skipChannels > 0 ? 1 : 0 }
    }

    /// The operands a node's prologue or gathered input takes from the end
    /// of its operand list.
    static func inputOperandCount(_ attrs: Attributes) -> Int {
        if attrs[Prologue.key] != nil { return 2 }
        return (try? Gather.read(attrs))?.operandCount ?? 0
    }

    /// The input the convolution computes on: %x's shape, or with a gathered
    /// input the concatenation's, checked against %skip.
    public static func inputShape(_ operands: [TensorType], _ attrs: Attributes) throws -> [Int] {
        guard let gather = try Gather.read(attrs) else { return operands[0].shape }
        let x = operands[0].shape
        guard x.count == 4 else { throw IRError("input_gather: %x must be NCHW, got \(x)") }
        guard attrs[Prologue.key] == nil else { throw IRError("input_gather and prologue= cannot be combined") }
        let shape = [x[0], x[1] + gather.skipChannels, x[2] * gather.fh, x[3] * gather.fw]
        if gather.skipChannels > 0 {
            let skip = [x[0], gather.skipChannels, shape[2], shape[3]]
            guard operands.count >= 3, operands[operands.count - 1].shape == skip else {
                throw IRError("input_gather=[\(gather.fh),\(gather.fw),\(gather.skipChannels)]: the last operand, the skip, must be \(skip); it is \(operands[operands.count - 1].shape)")
            }
        }
        return shape
    }

    /// The node's gathered input, checked against its algorithm; nil without one.
    static func gather(geometry: ConvOps.Geometry, attrs: Attributes) throws -> Gather? {
        guard let gather = try Gather.read(attrs) else { return nil }
        guard try ConvOps.winogradTile(attrs, geometry) != nil else {
            throw IRError("input_gather=: only a Winograd convolution gathers its input; this one has no algorithm")
        }
        return gather
    }

    /// How a Winograd input gradient of a gathered input runs: its kernel's
    /// gather flags, and the images it takes at a time.
    enum GradInputGather {
        /// The flags without a gather: the prologue's none, 0 images per group.
        static let none = Prologue.none + [0]
        /// Tiles a group of images should have at least: below a few hundred
        /// a thread, a Winograd call is mostly its filter transform and the
        /// pool's start (unet-r18's 8 px layers, an image at a time, took
        /// 2.8× as long as the whole batch's gradient had).
        static let tilesPerGroup = 1024

        /// Images a group takes: the fewest with `tilesPerGroup` tiles of the
        /// input gradient (geometry.h × geometry.w), at most the batch.
        static func imagesPerGroup(_ geometry: ConvOps.Geometry, tile: Int) -> Int {
            let tiles = ((geometry.h + tile - 1) / tile) * ((geometry.w + tile - 1) / tile)
            return max(1, min(geometry.n, (tilesPerGroup + tiles - 1) / max(tiles, 1)))
        }
    }

    /// A fused_conv2d_grad_input's gathered input, checked: the input
    /// gradient of a Winograd convolution that gathered its input by
    /// upsampling alone (no skip), with the epilogue in0. Its value is the
    /// gradient wrt %x, `input_shape` (the gathered input's) divided by the
    /// factors; nil without `input_gather`.
    static func gatheredGradInput(_ operands: [TensorType], _ attrs: Attributes) throws -> (gather: Gather, dx: [Int])? {
        let input = try attrs.ints("input_shape")
        guard let gather = try gather(geometry: ConvOps.Geometry(input: input, weight: operands[1].shape, attrs: attrs), attrs: attrs) else { return nil }
        guard gather.skipChannels == 0 else {
            throw IRError("input_gather=[\(gather.fh),\(gather.fw),\(gather.skipChannels)]: an input gradient is taken back through an upsampling alone; the skip's channels must be 0")
        }
        guard input.count == 4, input[2] % gather.fh == 0, input[3] % gather.fw == 0 else {
            throw IRError("input_gather=[\(gather.fh),\(gather.fw),0]: input_shape \(input) must be NCHW with H a multiple of \(gather.fh) and W of \(gather.fw)")
        }
        guard try attrs.expr("epilogue") == .input(0), operands.count == 2 else {
            throw IRError("an input gradient with input_gather= has the epilogue in0 and no operands after %dy and %w: the gradient wrt the upsampled input, which an epilogue would act on, is never held")
        }
        return (gather, [input[0], input[1], input[2] / gather.fh, input[3] / gather.fw])
    }

    /// A Winograd kernel's prologue flags and buffers (operand indices, the
    /// last ones) for the node's prologue or gathered input; nil with neither.
    static func inputKernelArguments(_ operands: [TensorType], geometry: ConvOps.Geometry,
                                     attrs: Attributes) throws -> (ints: [Int], operands: [Int])? {
        let buffers = Array(operands.count - inputOperandCount(attrs) ..< operands.count)
        if let affine = try prologue(operands, geometry: geometry, attrs: attrs) { return (affine.kernelInts, buffers) }
        if let gather = try gather(geometry: geometry, attrs: attrs) { return (gather.kernelInts(upsampled: operands[0].shape[1]), buffers) }
        return nil
    }

    /// The input a fused convolution (forward or weight gradient) computes
    /// on, as the interpreter makes it: %x after its prologue, the gathered
    /// concatenation, or %x itself.
    static func evaluateInput(_ operands: [HostTensor], _ attrs: Attributes) throws -> HostTensor {
        let x = operands[0]
        if attrs[Prologue.key] != nil {
            return evaluateElementwise(try attrs.expr(Prologue.key), [x] + operands.suffix(2), x.type)
        }
        guard let gather = try Gather.read(attrs) else { return x }
        let shape = x.type.shape
        let size = [shape[2] * gather.fh, shape[3] * gather.fw]
        let upsampling = gather.upsampling(size: size)
        let upsampled = try OpRegistry.require(upsampling.op).evaluate(
            [x], upsampling.attrs, x.type.with(shape: [shape[0], shape[1]] + size))
        guard gather.skipChannels > 0, let skip = operands.last else { return upsampled }
        return try OpRegistry.require("concat").evaluate(
            [upsampled, skip], ["axis": .int(1)], x.type.with(shape: [shape[0], shape[1] + gather.skipChannels] + size))
    }

    /// The node's prologue, checked against its operands and algorithm; nil without one.
    static func prologue(_ operands: [TensorType], geometry: ConvOps.Geometry, attrs: Attributes) throws -> Prologue? {
        guard attrs[Prologue.key] != nil else { return nil }
        let expr = try attrs.expr(Prologue.key)
        guard let prologue = Prologue.match(expr) else {
            throw IRError("the convolution kernels cannot apply the prologue \(expr): they compute act(in0·in1 + in2), act max(·, 0) or none")
        }
        guard try ConvOps.winogradTile(attrs, geometry) != nil else {
            throw IRError("prologue=: only a Winograd convolution applies one; this one has no algorithm")
        }
        guard operands.count >= 4, operands.suffix(2).allSatisfy({ isPerChannel($0.shape, channels: geometry.c) }) else {
            throw IRError("a prologue's operands, the last two, must be per input channel ([\(geometry.c),1,1])")
        }
        return prologue
    }

    /// Whether `shape` holds one value per channel of an NCHW output with O channels.
    public static func isPerChannel(_ shape: [Int], channels: Int) -> Bool {
        shape == [channels, 1, 1] || shape == [1, channels, 1, 1]
    }

    static func epilogue(_ operands: [TensorType], output: [Int], attrs: Attributes) throws -> Epilogue {
        let expr = try attrs.expr("epilogue")
        let extras = operands.dropFirst(2).dropLast(inputOperandCount(attrs))
        var perChannel: [Bool] = []
        for (k, extra) in extras.enumerated() {
            if isPerChannel(extra.shape, channels: output[1]) {
                perChannel.append(true)
            } else if extra.shape == output {
                perChannel.append(false)
            } else {
                throw IRError("epilogue operand in\(k + 1) has shape \(extra.shape); it must be per channel ([\(output[1]),1,1]) or the output's \(output)")
            }
        }
        guard let epilogue = Epilogue.match(expr, perChannel: perChannel) else {
            throw IRError("the convolution kernels cannot apply the epilogue \(expr) to operands \(perChannel.map { $0 ? "per-channel" : "full" }): they compute act(in0·scale + shift + residual)·gt(gate, 0), the gate optionally gate·gscale + gshift")
        }
        return epilogue
    }

    /// The call of conv kernel `name` (im2col or Winograd, by `algorithm`)
    /// with the node's epilogue: the operands after %x, %w in the kernel's
    /// order, its flags after the geometry; `transformed` is the shape of
    /// the filters a Winograd kernel transforms into its scratch. Filters
    /// packed ahead (`prepacked`) take no scratch.
    static func kernelCall(_ name: String, _ geometry: ConvOps.Geometry, operands allOperands: [TensorType], result: TensorType,
                           attrs: Attributes, transformed: (rows: Int, columns: Int),
                           prepacked: WinogradFilterOps.Layout? = nil) throws -> KernelCall {
        let (operands, moments) = splitMoments(allOperands, attrs, ownCount: ownOperandCount(attrs))
        guard moments == nil || name == "conv2d" else { throw IRError("moments=: only a forward convolution gathers batch moments") }
        let epilogue = try epilogue(operands, output: result.shape, attrs: attrs)
        let tile = try ConvOps.winogradTile(attrs, geometry)
        // A forward Winograd kernel takes the prologue flags (and operands,
        // last); an input gradient, its gathered input's and images per
        // group, and a block for a group's gradient wrt the gathered input
        // after its filters.
        var prologue: (ints: [Int], operands: [Int]) = ([], [])
        var gatheredImageFloats = 0
        if name == "conv2d" && tile != nil {
            prologue = try inputKernelArguments(operands, geometry: geometry, attrs: attrs) ?? (Prologue.none, [])
        } else if name == "conv2d_grad_input", let tile {
            prologue = (GradInputGather.none, [])
            if let (gather, _) = try gatheredGradInput(operands, attrs) {
                let group = GradInputGather.imagesPerGroup(geometry, tile: tile)
                prologue.ints = gather.kernelInts(upsampled: geometry.c) + [group]
                gatheredImageFloats = group * geometry.c * geometry.h * geometry.w + 32 // and two 64-byte lines to align it
            }
        }
        let buffers: [KernelCall.Buffer] = [.operand(0), .operand(1), .result] + epilogue.kernelOperands.map { .operand(2 + $0) }
            + (moments.map { [.operand($0)] } ?? []) + prologue.operands.map { .operand($0) }
        return KernelCall(ConvOps.kernel(name, tile: tile) + (prepacked == nil ? "" : "_prepacked"), buffers,
                          ints: geometry.kernelInts + epilogue.kernelInts + momentsInts(moments) + ConvOps.tileInts(tile) + prologue.ints
                              + (prepacked.map { [$0.panel] } ?? []),
                          scratchFloats: prepacked != nil ? 0
                              : ConvOps.winogradScratchFloats(tile: tile, rows: transformed.rows, columns: transformed.columns) + gatheredImageFloats,
                          threadScratch: true)
    }

    /// fused_conv2d's geometry, and with a `panel` attribute the layout of
    /// the packed filters (winograd_filters' value) it reads as %w, whose
    /// shape [O,C,3,3] `weight_shape` then gives. `operands` are the node's
    /// own (without a moments buffer lowering appends).
    static func forwardGeometry(_ operands: [TensorType], _ attrs: Attributes) throws -> (ConvOps.Geometry, prepacked: WinogradFilterOps.Layout?) {
        let input = try inputShape(operands, attrs)
        guard attrs[WinogradFilterOps.panelKey] != nil else {
            return (try ConvOps.Geometry(input: input, weight: operands[1].shape, attrs: attrs), nil)
        }
        let weight = try attrs.ints("weight_shape")
        let geometry = try ConvOps.Geometry(input: input, weight: weight, attrs: attrs)
        guard try ConvOps.winogradTile(attrs, geometry) != nil else {
            throw IRError("panel=: only a Winograd convolution reads packed filters; this one has no algorithm")
        }
        let layout = try WinogradFilterOps.Layout(weight: weight, attrs: attrs)
        guard operands[1].shape == [layout.floats] else {
            throw IRError("packed filters for \(weight) with panel \(layout.panel) are \(layout.floats) floats (winograd_filters' value); %w is \(operands[1].shape)")
        }
        return (geometry, layout)
    }

    /// The extra operands a Winograd kernel may write its result over: the
    /// epilogue's of the result's shape (a residual, a gate), which it reads
    /// element for element as it stores each output row from accumulators
    /// of its own. Not a gathered input's skip, whose rows later blocks
    /// still read. The im2col kernels apply the epilogue to the result in
    /// place, after the GEMM has written it, and may not.
    static func winogradOverwritable(_ geometry: @escaping (Attributes, [TensorType]) throws -> ConvOps.Geometry) -> OpSpec.OverwriteRule {
        { operands, result, attrs in
            guard let geometry = try? geometry(attrs, operands), (try? ConvOps.winogradTile(attrs, geometry)) ?? nil != nil else { return [] }
            let epilogueOperands = 2..<(operands.count - inputOperandCount(attrs))
            return epilogueOperands.filter { operands[$0] == result }
        }
    }

    /// max(conv·scale + shift + residual, 0), in an example's operand order.
    static let residualReLU = ScalarExpr.binary(.max, .binary(.add, .input(3), .binary(.add, .input(2), .binary(.mul, .input(1), .input(0)))),
                                                .const(0))

    public static let all: [OpSpec] = [
        OpSpec(name: "fused_conv2d",
               doc: "%y = fused_conv2d(%x, %w, %e1, ..., %ps, %pt) {<conv2d's>, epilogue=max(add(mul(in0, in1), in2), 0.0), prologue=max(add(mul(in0, in1), in2), 0.0)}: conv2d of x after the prologue (per input channel; its two operands last; Winograd only), then the epilogue on each output element; with {panel=p, weight_shape=[O,C,3,3]} and a Winograd algorithm, %w is winograd_filters' packed value; with {input_gather=[fh, fw, k]} (Winograd only) the input is concat(upsample_nearest(%x) by fh × fw, %skip) on channels, %skip the last operand (k channels; none when k is 0), with {input_gather_upsample=\"bilinear\"} or \"bilinear_align_corners\" upsample_bilinear's",
               arity: 2...8, requiredAttributes: ["epilogue"],
               inferType: { operands, attrs in
                   guard operands.allSatisfy({ $0.dtype == .f32 || $0.dtype == .f64 }) else { throw IRError("needs f32 operands") }
                   let (geometry, _) = try forwardGeometry(operands, attrs)
                   _ = try epilogue(operands, output: geometry.outputShape, attrs: attrs)
                   _ = try ConvOps.winogradTile(attrs, geometry)
                   _ = try prologue(operands, geometry: geometry, attrs: attrs)
                   _ = try gather(geometry: geometry, attrs: attrs)
                   return operands[0].with(shape: geometry.outputShape)
               },
               evaluate: { operands, attrs, type in
                   // Packed filters are the filters they were made from, G·g·Gᵀ undone.
                   let (_, prepacked) = try forwardGeometry(operands.map(\.type), attrs)
                   let w = prepacked.map { WinogradFilterOps.unpack(operands[1], $0) } ?? operands[1]
                   let conv = try ConvOps.evaluate(try evaluateInput(operands, attrs), w, attrs: attrs, type: type)
                   return evaluateElementwise(try attrs.expr("epilogue"), [conv] + operands.dropFirst(2).dropLast(inputOperandCount(attrs)), type)
               },
               // Formed after autodiff: nothing differentiates it.
               gradient: nil,
               lowering: .kernels { operands, result, attrs in
                   let (geometry, prepacked) = try forwardGeometry(splitMoments(operands, attrs, ownCount: ownOperandCount(attrs)).own, attrs)
                   return [try kernelCall("conv2d", geometry, operands: operands, result: result, attrs: attrs,
                                          transformed: (rows: geometry.o, columns: geometry.c), prepacked: prepacked)]
               },
               examples: [
                   // conv → batch norm (folded to scale and shift) → ReLU
                   ([f([2, 4, 7, 6]), f([6, 2, 3, 3]), f([6, 1, 1]), f([1, 6, 1, 1])],
                    ConvOps.example.merging(["epilogue": .expr(.binary(.max, .binary(.add, .binary(.mul, .input(0), .input(1)), .input(2)), .const(0)))])),
                   // … + a residual, then ReLU
                   ([f([2, 3, 5, 5]), f([4, 3, 3, 3]), f([4, 1, 1]), f([4, 1, 1]), f([2, 4, 5, 5])],
                    ["pad": .ints([1, 1]),
                     "epilogue": .expr(.binary(.max, .binary(.add, .input(3), .binary(.add, .input(2), .binary(.mul, .input(1), .input(0)))), .const(0)))]),
                   // conv + bias
                   ([f([1, 3, 5, 5]), f([4, 3, 1, 1]), f([1, 4, 1, 1])], ["epilogue": .expr(.binary(.add, .input(0), .input(1)))]),
                   // … a residual block's conv by Winograd F(4×4) and F(2×2), tiles cut by the image's edge
                   ([f([2, 3, 7, 6]), f([4, 3, 3, 3]), f([4, 1, 1]), f([4, 1, 1]), f([2, 4, 7, 6])],
                    ConvOps.winogradExample(pad: [1, 1]).merging(["epilogue": .expr(residualReLU)])),
                   ([f([2, 3, 7, 5]), f([4, 3, 3, 3]), f([4, 1, 1]), f([4, 1, 1]), f([2, 4, 7, 5])],
                    ConvOps.winogradExample(pad: [1, 1], tile: 2).merging(["epilogue": .expr(residualReLU)])),
                   // the previous layer's batch norm and ReLU as the prologue, with and without an epilogue
                   ([f([2, 3, 7, 6]), f([4, 3, 3, 3]), f([4, 1, 1]), f([4, 1, 1]), f([2, 4, 7, 6]), f([1, 3, 1, 1]), f([1, 3, 1, 1])],
                    ConvOps.winogradExample(pad: [1, 1]).merging(["epilogue": .expr(residualReLU), Prologue.key: .expr(Prologue.expr(relu: true))])),
                   ([f([2, 3, 7, 5]), f([4, 3, 3, 3]), f([3, 1, 1]), f([3, 1, 1])],
                    ConvOps.winogradExample(pad: [0, 1], tile: 2).merging(["epilogue": .expr(.input(0)), Prologue.key: .expr(Prologue.expr(relu: false))])),
                   // a decoder block's input gathered: x upsampled ×2 and a skip of 2 channels, then batch norm and ReLU
                   ([f([2, 3, 4, 3]), f([4, 5, 3, 3]), f([4, 1, 1]), f([1, 4, 1, 1]), f([2, 2, 8, 6])],
                    ConvOps.winogradExample(pad: [1, 1]).merging(["epilogue": .expr(.binary(.max, .binary(.add, .binary(.mul, .input(0), .input(1)), .input(2)), .const(0)))])
                        .merging(Gather(fh: 2, fw: 2, skipChannels: 2).attrs)),
                   // … without a skip, by other factors down and across, F(2×2)
                   ([f([1, 3, 3, 2]), f([2, 3, 3, 3])],
                    ConvOps.winogradExample(pad: [1, 0], tile: 2).merging(["epilogue": .expr(.input(0))]).merging(Gather(fh: 2, fw: 3, skipChannels: 0).attrs)),
                   // … upsampled bilinearly (TransUNet's decoder: align_corners), with a skip, and without one by other factors, F(2×2), rows of two blocks of 16
                   ([f([2, 3, 4, 3]), f([4, 5, 3, 3]), f([4, 1, 1]), f([1, 4, 1, 1]), f([2, 2, 8, 6])],
                    ConvOps.winogradExample(pad: [1, 1]).merging(["epilogue": .expr(.binary(.max, .binary(.add, .binary(.mul, .input(0), .input(1)), .input(2)), .const(0)))])
                        .merging(Gather(fh: 2, fw: 2, skipChannels: 2, upsample: .bilinear(alignCorners: true)).attrs)),
                   ([f([1, 3, 3, 7]), f([2, 3, 3, 3])],
                    ConvOps.winogradExample(pad: [1, 0], tile: 2).merging(["epilogue": .expr(.input(0))])
                        .merging(Gather(fh: 2, fw: 3, skipChannels: 0, upsample: .bilinear(alignCorners: false)).attrs)),
               ],
               // The epilogue's few operations per element are not counted.
               flops: { operands, result, attrs in
                   let weight = (try? forwardGeometry(operands, attrs))?.0.weightShape ?? operands[1].shape
                   return ConvOps.macs(output: result.shape, weight: weight)
               },
               overwritableOperands: winogradOverwritable { attrs, operands in try forwardGeometry(operands, attrs).0 }),

        OpSpec(name: "fused_conv2d_grad_input",
               doc: "%dx = fused_conv2d_grad_input(%dy, %w, %e1, ...) {<conv2d_grad_input's>, epilogue=mul(in0, gt(in1, 0.0))}: conv2d_grad_input, then the epilogue on each element of dx; with {input_gather=[fh, fw, 0], epilogue=in0} (Winograd only, input_gather_upsample as fused_conv2d's) the gradient wrt %x of the convolution that read upsample(%x) as its input_shape input, taken back through the upsampling a group of images at a time",
               arity: 2...6, requiredAttributes: ["input_shape", "epilogue"],
               inferType: { operands, attrs in
                   guard operands.allSatisfy({ $0.dtype == .f32 || $0.dtype == .f64 }) else { throw IRError("needs f32 operands") }
                   let dx = try ConvOps.gradInputType(operands, attrs)
                   _ = try epilogue(operands, output: dx.shape, attrs: attrs)
                   if let (_, source) = try gatheredGradInput(operands, attrs) { return dx.with(shape: source) }
                   return dx
               },
               evaluate: { operands, attrs, type in
                   let full = type.with(shape: try attrs.ints("input_shape"))
                   let dx = evaluateElementwise(try attrs.expr("epilogue"), [try ConvOps.evaluateGradInput(operands[0], operands[1], attrs: attrs, type: full)] + operands.dropFirst(2), full)
                   guard let (gather, _) = try gatheredGradInput(operands.map(\.type), attrs) else { return dx }
                   let back = gather.upsamplingGradient(source: type.shape, size: Array(full.shape.suffix(2)))
                   return try OpRegistry.require(back.op).evaluate([dx], back.attrs, type)
               },
               gradient: nil,
               lowering: .kernels { operands, result, attrs in
                   let geometry = try ConvOps.Geometry(input: try attrs.ints("input_shape"), weight: operands[1].shape, attrs: attrs)
                   // Its Winograd kernel transforms wᵀ: C rows of O.
                   return [try kernelCall("conv2d_grad_input", geometry, operands: operands, result: result, attrs: attrs,
                                          transformed: (rows: geometry.c, columns: geometry.o))]
               },
               examples: [
                   // dx of a grouped, strided, dilated convolution, a gradient summed in, a ReLU's gate
                   ([f([2, 6, 4, 6]), f([6, 2, 3, 3]), f([2, 4, 7, 6]), f([2, 4, 7, 6])],
                    ConvOps.passAttrs(ConvOps.example, adding: "input_shape", [2, 4, 7, 6]).merging(["epilogue": .expr(residualGate)])),
                   // the gate alone, by Winograd F(4×4) and F(2×2)
                   ([f([2, 5, 9, 7]), f([5, 3, 3, 3]), f([2, 3, 9, 7])],
                    ConvOps.winogradExample(pad: [1, 1]).merging(["input_shape": .ints([2, 3, 9, 7]), "epilogue": .expr(gate)])),
                   ([f([2, 4, 7, 7]), f([4, 3, 3, 3]), f([2, 3, 7, 5]), f([2, 3, 7, 5])],
                    ConvOps.winogradExample(pad: [1, 2], tile: 2).merging(["input_shape": .ints([2, 3, 7, 5]), "epilogue": .expr(residualGate)])),
                   // the gate read from the normalized value before a ReLU: (dx + in1)·[in2·in3 + in4 > 0]
                   ([f([2, 5, 9, 7]), f([5, 3, 3, 3]), f([2, 3, 9, 7]), f([2, 3, 9, 7]), f([3, 1, 1]), f([1, 3, 1, 1])],
                    ConvOps.winogradExample(pad: [1, 1]).merging(["input_shape": .ints([2, 3, 9, 7]), "epilogue": .expr(affineGate)])),
                   // every part: max(dx·scale + shift + residual, 0)·gate, on a 1×1 convolution
                   ([f([1, 4, 5, 5]), f([4, 3, 1, 1]), f([3, 1, 1]), f([1, 3, 1, 1]), f([1, 3, 5, 5]), f([1, 3, 5, 5])],
                    ["input_shape": .ints([1, 3, 5, 5]),
                     "epilogue": .expr(.binary(.mul, .binary(.gt, .input(4), .const(0)), residualReLU))]),
                   // the gradient wrt x of a convolution that read upsample(x): bilinear with align_corners
                   // (TransUNet's last decoder block), F(4×4), rows of two blocks of 16; nearest, F(2×2); the batch
                   // at once, and (1024 tiles an image) an image at a time
                   ([f([2, 4, 8, 18]), f([4, 3, 3, 3])],
                    ConvOps.winogradExample(pad: [1, 1]).merging(["input_shape": .ints([2, 3, 8, 18]), "epilogue": .expr(.input(0))])
                        .merging(Gather(fh: 2, fw: 2, skipChannels: 0, upsample: .bilinear(alignCorners: true)).attrs)),
                   ([f([2, 2, 6, 6]), f([2, 3, 3, 3])],
                    ConvOps.winogradExample(pad: [1, 1], tile: 2).merging(["input_shape": .ints([2, 3, 6, 6]), "epilogue": .expr(.input(0))])
                        .merging(Gather(fh: 3, fw: 2, skipChannels: 0).attrs)),
                   ([f([3, 2, 64, 64]), f([2, 3, 3, 3])],
                    ConvOps.winogradExample(pad: [1, 1], tile: 2).merging(["input_shape": .ints([3, 3, 64, 64]), "epilogue": .expr(.input(0))])
                        .merging(Gather(fh: 2, fw: 2, skipChannels: 0, upsample: .bilinear(alignCorners: true)).attrs)),
                   ([f([1, 2, 4, 9]), f([2, 3, 3, 3])],
                    ConvOps.winogradExample(pad: [1, 1], tile: 2).merging(["input_shape": .ints([1, 3, 4, 9]), "epilogue": .expr(.input(0))])
                        .merging(Gather(fh: 2, fw: 3, skipChannels: 0, upsample: .bilinear(alignCorners: false)).attrs)),
               ],
               flops: { operands, _, _ in ConvOps.macs(output: operands[0].shape, weight: operands[1].shape) },
               overwritableOperands: winogradOverwritable { attrs, operands in
                   try ConvOps.Geometry(input: try attrs.ints("input_shape"), weight: operands[1].shape, attrs: attrs)
               }),

        OpSpec(name: "fused_conv2d_grad_weight",
               doc: "%dw = fused_conv2d_grad_weight(%x, %dy, %ps, %pt) {<conv2d_grad_weight's>, prologue=max(add(mul(in0, in1), in2), 0.0)} or fused_conv2d_grad_weight(%x, %dy, %skip) {<conv2d_grad_weight's>, input_gather=[fh, fw, k]}: conv2d_grad_weight of the convolution that applied this prologue to x or gathered its input so (Winograd only)",
               arity: 2...4, requiredAttributes: ["weight_shape"],
               inferType: { operands, attrs in
                   let weight = try attrs.ints("weight_shape")
                   let geometry = try ConvOps.Geometry(input: try inputShape(operands, attrs), weight: weight, attrs: attrs)
                   guard geometry.outputShape == operands[1].shape else {
                       throw IRError("dy has shape \(operands[1].shape); conv2d gives \(geometry.outputShape)")
                   }
                   let prologue = try prologue(operands, geometry: geometry, attrs: attrs)
                   let gather = try gather(geometry: geometry, attrs: attrs)
                   guard prologue != nil || gather != nil else {
                       throw IRError("fused_conv2d_grad_weight needs a prologue= or an input_gather=; without either it is conv2d_grad_weight")
                   }
                   guard operands.count == 2 + inputOperandCount(attrs) else {
                       throw IRError("fused_conv2d_grad_weight takes %x, %dy and its prologue's or gathered input's operands; it has \(operands.count)")
                   }
                   return operands[0].with(shape: weight)
               },
               evaluate: { operands, attrs, type in
                   return try OpRegistry.require("conv2d_grad_weight").evaluate([try evaluateInput(operands, attrs), operands[1]], attrs, type)
               },
               gradient: nil,
               lowering: .kernels { operands, result, attrs in
                   let geometry = try ConvOps.Geometry(input: try inputShape(operands, attrs), weight: result.shape, attrs: attrs)
                   guard let tile = try ConvOps.winogradTile(attrs, geometry) else {
                       throw IRError("fused_conv2d_grad_weight needs a Winograd algorithm")
                   }
                   guard let input = try inputKernelArguments(operands, geometry: geometry, attrs: attrs) else {
                       throw IRError("fused_conv2d_grad_weight needs a prologue or a gathered input")
                   }
                   return [KernelCall(ConvOps.kernel("conv2d_grad_weight", tile: tile),
                                      [.operand(0), .operand(1), .result] + input.operands.map { .operand($0) },
                                      ints: geometry.kernelInts + ConvOps.tileInts(tile) + input.ints,
                                      scratchFloats: ConvOps.winogradScratchFloats(tile: tile, rows: geometry.o, columns: geometry.c, packed: false),
                                      threadScratch: true)]
               },
               examples: [([f([2, 3, 7, 6]), f([2, 4, 7, 6]), f([1, 3, 1, 1]), f([3, 1, 1])],
                           ConvOps.winogradExample(pad: [1, 1]).merging(["weight_shape": .ints([4, 3, 3, 3]), Prologue.key: .expr(Prologue.expr(relu: true))])),
                          ([f([2, 3, 7, 5]), f([2, 4, 7, 5]), f([3, 1, 1]), f([3, 1, 1])],
                           ConvOps.winogradExample(pad: [1, 1], tile: 2).merging(["weight_shape": .ints([4, 3, 3, 3]), Prologue.key: .expr(Prologue.expr(relu: false))])),
                          // the weight gradient of a decoder block's first convolution, its input gathered
                          ([f([2, 3, 4, 3]), f([2, 4, 8, 6]), f([2, 2, 8, 6])],
                           ConvOps.winogradExample(pad: [1, 1]).merging(["weight_shape": .ints([4, 5, 3, 3])]).merging(Gather(fh: 2, fw: 2, skipChannels: 2).attrs)),
                          ([f([1, 3, 3, 2]), f([1, 2, 6, 6])],
                           ConvOps.winogradExample(pad: [1, 1], tile: 2).merging(["weight_shape": .ints([2, 3, 3, 3])]).merging(Gather(fh: 2, fw: 3, skipChannels: 0).attrs)),
                          // … gathered by bilinear interpolation
                          ([f([2, 3, 4, 3]), f([2, 4, 8, 6]), f([2, 2, 8, 6])],
                           ConvOps.winogradExample(pad: [1, 1]).merging(["weight_shape": .ints([4, 5, 3, 3])])
                               .merging(Gather(fh: 2, fw: 2, skipChannels: 2, upsample: .bilinear(alignCorners: true)).attrs)),
                          // (upsampled down the columns only)
                          ([f([1, 3, 2, 21]), f([1, 2, 6, 21])],
                           ConvOps.winogradExample(pad: [1, 1], tile: 2).merging(["weight_shape": .ints([2, 3, 3, 3])])
                               .merging(Gather(fh: 3, fw: 1, skipChannels: 0, upsample: .bilinear(alignCorners: false)).attrs))],
               flops: { operands, result, _ in ConvOps.macs(output: operands[1].shape, weight: result.shape) }),
    ]

    /// A ReLU's backward on the input gradient: dx·[in1 > 0].
    static let gate = ScalarExpr.binary(.mul, .input(0), .binary(.gt, .input(1), .const(0)))
    /// … with the ReLU's input as x·s + t per channel: (dx + in1)·[in2·in3 + in4 > 0].
    static let affineGate = ScalarExpr.binary(.mul, .binary(.add, .input(0), .input(1)),
                                              .binary(.gt, .binary(.add, .binary(.mul, .input(2), .input(3)), .input(4)), .const(0)))
    /// … after a gradient from elsewhere is summed in: (dx + in1)·[in2 > 0].
    static let residualGate = ScalarExpr.binary(.mul, .binary(.add, .input(0), .input(1)), .binary(.gt, .input(2), .const(0)))
}
