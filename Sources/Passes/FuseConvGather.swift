import IR

/// Has a Winograd convolution read a decoder block's input from its parts:
/// `fused_conv2d(%x, %w, ..., %skip) {input_gather=[fh, fw, k]}` reads
/// concat(upsample_nearest(%x), %skip) row by row as it transforms its
/// input, where
///
///     %u = upsample_nearest(%x) {channels=C, channel_offset=0, size=[H,W]}
///     %c = insert(%u, %skip) {axis=1, offset=C - k}
///     %y = fused_conv2d(%c, %w, ...)
///
/// wrote the upsampled channels and copied the skip into a buffer of their
/// own first (fuse-concat's form), and a block without a skip upsampled
/// alone. The upsampling and the copy were two passes over the block's
/// largest tensor, and the buffer the largest of its step; the convolution
/// reads no more than it did. A bilinear upsampling (TransUNet's decoder),
/// `concat(upsample_bilinear(%x), %skip) {axis=1}` or alone, is gathered the
/// same way, with `input_gather_upsample="bilinear_align_corners"` (or
/// `"bilinear"`): the kernel blends x's two rows and interpolates along the
/// row as it reads each input row.
///
/// Backwards, the input gradient of a convolution that read an upsampling
/// alone (or, after split-conv-grad-input, the upsampled part of a
/// concatenation) is taken back through it a group of images at a time:
/// `upsample_bilinear_grad(conv2d_grad_input(%dy, %w))` becomes
/// `fused_conv2d_grad_input(%dy, %w) {input_gather=[fh, fw, 0], ...}`,
/// whose value is the gradient wrt %x. The gradient wrt the upsampled
/// input, the largest tensor at the start of TransUNet's backward pass
/// (51 MB at 224 px, batch 4), is then one image at a time in the kernel's
/// planned scratch; smaller images go in groups of at least 1024 tiles.
///
/// Every reader of the concatenation or upsampling must take its parts, and
/// it must not be an output: in a training step, the forward convolution (a
/// conv2d, which becomes a fused_conv2d with the epilogue in0) and its
/// weight gradient (`fused_conv2d_grad_weight(%x, %dy, %skip)
/// {input_gather=...}`), each reading the copy rematerialize made for it or
/// both the same tensor. Only whole factors (H a multiple of %x's height, W
/// of its width), and only convolutions without a prologue.
public struct FuseConvGather: NodeFusionPass {
    public static let name = "fuse-conv-gather"
    public init() {}

    func fuse(_ function: inout Function) throws -> Bool {
        let uses = function.useCounts
        let roots = Set(function.rootValues)
        let producers = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0) })
        let types = function.types
        let readers = function.readers
        /// `value`'s producer if it is `op` and not an output.
        func producer(of value: ValueID, _ op: String) -> Node? {
            guard !roots.contains(value), let producer = producers[value], producer.op == op else { return nil }
            return producer
        }
        /// The whole factors by which `upsample` enlarges its operand, or nil.
        func factors(_ upsample: Node) -> (fh: Int, fw: Int)? {
            guard let source = types[upsample.operands[0]]?.shape, source.count == 4, upsample.type.rank == 4,
                  source[2] > 0, source[3] > 0 else { return nil }
            let (h, w) = (upsample.type.shape[2], upsample.type.shape[3])
            guard h % source[2] == 0, w % source[3] == 0 else { return nil }
            return (h / source[2], w / source[3])
        }
        /// The parts of `value`, an upsampling or an upsampling with a skip
        /// after it (inserted, nearest; concatenated, bilinear); nil when
        /// it is something else.
        func parts(of value: ValueID) throws -> (source: ValueID, gather: FusedConvOps.Gather, skip: ValueID?)? {
            if let upsample = producer(of: value, "upsample_nearest"), upsample.attrs["channels"] == nil, let (fh, fw) = factors(upsample) {
                return (upsample.operands[0], .init(fh: fh, fw: fw, skipChannels: 0), nil)
            }
            if let upsample = producer(of: value, "upsample_bilinear"), let (fh, fw) = factors(upsample) {
                return (upsample.operands[0], .init(fh: fh, fw: fw, skipChannels: 0, upsample: try bilinear(upsample)), nil)
            }
            if let concat = producer(of: value, "concat"), concat.operands.count == 2, try concat.attrs.int("axis") == 1,
               let upsample = producer(of: concat.operands[0], "upsample_bilinear"), uses[upsample.id] == 1,
               let (fh, fw) = factors(upsample), let skip = types[concat.operands[1]] {
                return (upsample.operands[0], .init(fh: fh, fw: fw, skipChannels: skip.shape[1], upsample: try bilinear(upsample)),
                        concat.operands[1])
            }
            guard let insert = producer(of: value, "insert"), let upsample = producer(of: insert.operands[0], "upsample_nearest"),
                  uses[upsample.id] == 1, upsample.attrs["channels"] != nil, try upsample.attrs.int("channel_offset") == 0,
                  try insert.attrs.int("axis") == 1, let (fh, fw) = factors(upsample),
                  let upsampled = types[upsample.operands[0]]?.shape[1], try insert.attrs.int("offset") == upsampled,
                  let skip = types[insert.operands[1]], skip.shape[1] == insert.type.shape[1] - upsampled else { return nil }
            return (upsample.operands[0], .init(fh: fh, fw: fw, skipChannels: skip.shape[1]), insert.operands[1])
        }
        func bilinear(_ upsample: Node) throws -> FusedConvOps.Gather.Upsample {
            .bilinear(alignCorners: try UpsampleOps.alignCorners(upsample.attrs))
        }
        /// `reader` reading the parts instead of `value`, or nil when its
        /// kernel cannot: a Winograd convolution of it (forward or weight
        /// gradient) without a prologue, reading it once, as %x.
        func absorb(_ reader: Node, _ value: ValueID, _ parts: (source: ValueID, gather: FusedConvOps.Gather, skip: ValueID?)) -> Node? {
            guard ["conv2d", "fused_conv2d", "conv2d_grad_weight"].contains(reader.op), reader.attrs[ConvOps.Algorithm.key] != nil,
                  reader.attrs[FusedConvOps.Prologue.key] == nil, reader.attrs[FusedConvOps.Gather.key] == nil,
                  reader.operands[0] == value, reader.operands.filter({ $0 == value }).count == 1 else { return nil }
            var fused = reader
            if reader.op == "conv2d_grad_weight" {
                fused.op = "fused_conv2d_grad_weight"
            } else {
                fused.op = "fused_conv2d" // (a training step's, whose batch norm reads its value, has no epilogue)
                if fused.attrs["epilogue"] == nil { fused.attrs["epilogue"] = .expr(.input(0)) }
            }
            fused.operands[0] = parts.source
            if let skip = parts.skip { fused.operands.append(skip) }
            fused.attrs = fused.attrs.merging(parts.gather.attrs)
            return fused
        }
        var changed = false
        for node in function.nodes where ["upsample_nearest", "insert", "upsample_bilinear", "concat"].contains(node.op) {
            guard let found = try parts(of: node.id), let users = readers[node.id], !users.isEmpty else { continue }
            // Every reader takes the parts, or the tensor stays.
            let absorbed = users.map { absorb(function.nodes[$0], node.id, found) }
            guard absorbed.allSatisfy({ $0 != nil }) else { continue }
            for (user, replacement) in zip(users, absorbed) { function.nodes[user] = replacement! }
            changed = true
        }
        return try gatherGradients(&function) || changed
    }

    /// `upsample_*_grad(conv2d_grad_input(%dy, %w))`, the input gradient a
    /// Winograd kernel computes and only the upsampling's gradient reads, as
    /// one `fused_conv2d_grad_input` with the gathered input's attributes.
    func gatherGradients(_ function: inout Function) throws -> Bool {
        let uses = function.useCounts
        let roots = Set(function.rootValues)
        let producers = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0) })
        var changed = false
        for (index, node) in function.nodes.enumerated() where ["upsample_nearest_grad", "upsample_bilinear_grad"].contains(node.op) {
            let value = node.operands[0]
            guard let dgrad = producers[value], dgrad.op == "conv2d_grad_input", dgrad.attrs[ConvOps.Algorithm.key] != nil,
                  uses[value] == 1, !roots.contains(value), dgrad.type.rank == 4, node.type.rank == 4 else { continue }
            let (full, source) = (dgrad.type.shape, node.type.shape)
            guard source[2] > 0, source[3] > 0, full[2] % source[2] == 0, full[3] % source[3] == 0 else { continue }
            let upsample: FusedConvOps.Gather.Upsample = node.op == "upsample_nearest_grad"
                ? .nearest : .bilinear(alignCorners: try UpsampleOps.alignCorners(node.attrs))
            let gather = FusedConvOps.Gather(fh: full[2] / source[2], fw: full[3] / source[3], skipChannels: 0, upsample: upsample)
            // (The input gradient, now read by nothing, goes with the DCE after the pass.)
            function.nodes[index] = Node(id: node.id, op: "fused_conv2d_grad_input", operands: dgrad.operands,
                                         attrs: dgrad.attrs.merging(["epilogue": .expr(.input(0))]).merging(gather.attrs),
                                         type: node.type, loc: dgrad.loc)
            changed = true
        }
        return changed
    }
}
