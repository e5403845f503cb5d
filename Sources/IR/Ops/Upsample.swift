import Foundation

/// Resizing to a given size: nearest (PyTorch 'nearest') and bilinear with or
/// without align_corners, with their backward ops.
public enum UpsampleOps {
    static let f = TensorType.f32

    struct Geometry {
        var n, c, h, w, oh, ow: Int
        init(input: [Int], size: [Int]) throws {
            guard input.count == 4, size.count == 2, size.allSatisfy({ $0 > 0 }) else {
                throw IRError("upsampling needs a rank-4 NCHW input and size=[H,W] > 0")
            }
            (n, c, h, w, oh, ow) = (input[0], input[1], input[2], input[3], size[0], size[1])
        }
        var ints: [Int] { [n, c, h, w, oh, ow] }
        var outputShape: [Int] { [n, c, oh, ow] }
    }

    /// Source coordinate taps (index, weight) of one output coordinate.
    static func bilinearTaps(_ dst: Int, inSize: Int, outSize: Int, alignCorners: Bool) -> [(Int, Double)] {
        let src: Double
        if alignCorners {
            src = outSize > 1 ? Double(dst) * Double(inSize - 1) / Double(outSize - 1) : 0
        } else {
            src = max(0, (Double(dst) + 0.5) * Double(inSize) / Double(outSize) - 0.5)
        }
        let i0 = min(Int(src.rounded(.down)), inSize - 1)
        let i1 = min(i0 + 1, inSize - 1)
        let frac = src - Double(i0)
        return [(i0, 1 - frac), (i1, frac)]
    }

    /// Visit (input flat index, output flat index, weight) for every tap.
    static func forEachTap(_ geo: Geometry, bilinear: Bool, alignCorners: Bool, _ body: (Int, Int, Double) -> Void) {
        for plane in 0..<(geo.n * geo.c) {
            for y in 0..<geo.oh {
                let ys = bilinear ? bilinearTaps(y, inSize: geo.h, outSize: geo.oh, alignCorners: alignCorners) : [((y * geo.h) / geo.oh, 1)]
                for x in 0..<geo.ow {
                    let xs = bilinear ? bilinearTaps(x, inSize: geo.w, outSize: geo.ow, alignCorners: alignCorners) : [((x * geo.w) / geo.ow, 1)]
                    let out = (plane * geo.oh + y) * geo.ow + x
                    for (iy, wy) in ys {
                        for (ix, wx) in xs { body((plane * geo.h + iy) * geo.w + ix, out, wy * wx) }
                    }
                }
            }
        }
    }

    /// A bilinear upsampling's align_corners (false when left out).
    public static func alignCorners(_ attrs: Attributes) throws -> Bool {
        attrs["align_corners"] == nil ? false : try attrs.bool("align_corners")
    }

    /// Where a placed upsampling writes (made by fuse-concat after autodiff):
    /// channels [offset, offset + C) of a result of `channels` channels, the
    /// others left as they are; nil for a plain one.
    static func placement(_ attrs: Attributes, channels: Int, bilinear: Bool) throws -> (channels: Int, offset: Int)? {
        guard attrs["channels"] != nil || attrs["channel_offset"] != nil else { return nil }
        guard !bilinear else { throw IRError("only upsample_nearest writes into a concatenation") }
        let total = try attrs.int("channels"), offset = try attrs.int("channel_offset")
        guard offset >= 0, offset + channels <= total else {
            throw IRError("channels [\(offset), \(offset + channels)) do not fit in channels=\(total)")
        }
        return (total, offset)
    }

    static func pair(_ name: String, bilinear: Bool, doc: String, gradDoc: String) -> [OpSpec] {
        let gradName = name + "_grad"
        func align(_ attrs: Attributes) throws -> Bool { bilinear ? try alignCorners(attrs) : false }
        func ints(_ geo: Geometry, _ attrs: Attributes) throws -> [Int] {
            geo.ints + (bilinear ? [try align(attrs) ? 1 : 0] : [])
        }
        // Nearest also doubles (the decoders' case, a kernel path of its own);
        // bilinear also doubles (TransUNet's decoder) and shrinks the height
        // (the kernels' separable and direct paths).
        let examples: [Attributes] = bilinear
            ? [["size": .ints([8, 3]), "align_corners": .bool(true)], ["size": .ints([8, 3])],
               ["size": .ints([10, 14]), "align_corners": .bool(true)], ["size": .ints([3, 9])]]
            : [["size": .ints([8, 3])], ["size": .ints([10, 14])]]
        return [
            /// ∂x = <op>_grad(g)
            OpSpec(name: name, doc: doc, arity: 1...1, requiredAttributes: ["size"],
                   inferType: { operands, attrs in
                       var shape = try Geometry(input: operands[0].shape, size: attrs.ints("size")).outputShape
                       if let placed = try placement(attrs, channels: shape[1], bilinear: bilinear) { shape[1] = placed.channels }
                       return operands[0].with(shape: shape)
                   },
                   evaluate: { operands, attrs, type in
                       let geo = try Geometry(input: operands[0].shape, size: attrs.ints("size"))
                       var out = [Double](repeating: 0, count: geo.outputShape.reduce(1, *))
                       forEachTap(geo, bilinear: bilinear, alignCorners: try align(attrs)) { i, o, weight in
                           out[o] += weight * operands[0].data[i]
                       }
                       guard let placed = try placement(attrs, channels: geo.c, bilinear: bilinear) else { return HostTensor(type, out) }
                       // The other channels are not written: zeros here.
                       var embedded = [Double](repeating: 0, count: type.count)
                       let plane = geo.oh * geo.ow
                       for p in 0..<(geo.n * geo.c) {
                           let at = ((p / geo.c) * placed.channels + placed.offset + p % geo.c) * plane
                           embedded.replaceSubrange(at..<(at + plane), with: out[(p * plane)..<((p + 1) * plane)])
                       }
                       return HostTensor(type, embedded)
                   },
                   gradient: { c in
                       guard try placement(c.attrs, channels: c.operands[0].shape[1], bilinear: bilinear) == nil else {
                           throw IRError("an upsampling placed into a concatenation (made after autodiff) has no gradient rule")
                       }
                       var attrs = c.attrs
                       attrs["input_shape"] = .ints(c.operands[0].shape)
                       return [try c.builder.emit(gradName, [c.grad], attrs)]
                   },
                   lowering: .kernels { operands, _, attrs in
                       let geo = try Geometry(input: operands[0].shape, size: attrs.ints("size"))
                       if let placed = try placement(attrs, channels: geo.c, bilinear: bilinear) {
                           return [KernelCall(name + "_into", [.operand(0), .result], ints: geo.ints + [placed.channels, placed.offset])]
                       }
                       return [KernelCall(name, [.operand(0), .result], ints: try ints(geo, attrs))]
                   },
                   examples: examples.map { ([f([1, 2, 5, 7])], $0) }, rematerializable: true),
            OpSpec(name: gradName, doc: gradDoc, arity: 1...1, requiredAttributes: ["size", "input_shape"],
                   inferType: { operands, attrs in
                       let input = try attrs.ints("input_shape")
                       guard try Geometry(input: input, size: attrs.ints("size")).outputShape == operands[0].shape else {
                           throw IRError("dy does not match the upsampled shape")
                       }
                       return operands[0].with(shape: input)
                   },
                   evaluate: { operands, attrs, type in
                       var out = [Double](repeating: 0, count: type.count)
                       let geo = try Geometry(input: type.shape, size: attrs.ints("size"))
                       forEachTap(geo, bilinear: bilinear, alignCorners: try align(attrs)) { i, o, weight in
                           out[i] += weight * operands[0].data[o]
                       }
                       return HostTensor(type, out)
                   },
                   gradient: nil,
                   lowering: .kernels { _, result, attrs in
                       let geo = try Geometry(input: result.shape, size: attrs.ints("size"))
                       return [KernelCall(gradName, [.operand(0), .result], ints: try ints(geo, attrs))]
                   },
                   examples: examples.map { attrs in
                       var a = attrs
                       a["input_shape"] = .ints([1, 2, 5, 7])
                       guard case .ints(let size)? = attrs["size"] else { return ([f([1, 2, 8, 3])], a) }
                       return ([f([1, 2] + size)], a)
                   }),
        ]
    }

    public static let all: [OpSpec] =
        pair("upsample_nearest", bilinear: false,
             doc: "%y = upsample_nearest(%x) {size=[H,W]}: src = ⌊dst·in/out⌋",
             gradDoc: "%dx = upsample_nearest_grad(%dy) {size=[H,W], input_shape=[...]}: sums dy into sources")
        + pair("upsample_bilinear", bilinear: true,
               doc: "%y = upsample_bilinear(%x) {size=[H,W], align_corners=false}: bilinear resize",
               gradDoc: "%dx = upsample_bilinear_grad(%dy) {size=[H,W], align_corners=false, input_shape=[...]}: its VJP")
}

extension FunctionBuilder {
    public func upsample(_ x: Value, size: [Int], bilinear: Bool, alignCorners: Bool = false) throws -> Value {
        if bilinear {
            return try emit("upsample_bilinear", [x], ["size": .ints(size), "align_corners": .bool(alignCorners)])
        }
        return try emit("upsample_nearest", [x], ["size": .ints(size)])
    }
}
