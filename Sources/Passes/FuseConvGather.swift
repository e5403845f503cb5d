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
/// reads no more than it did.
///
/// The concatenation or upsampling must have no reader but the convolution
/// and not be an output: in a training step a weight gradient reads the
/// copy rematerialize made of it, and the forward convolution (a conv2d,
/// which becomes a fused_conv2d with the epilogue in0) alone reads the
/// first. Only whole factors (H a multiple of %x's height, W of its
/// width), and only convolutions without a prologue.
public struct FuseConvGather: NodeFusionPass {
    public static let name = "fuse-conv-gather"
    public init() {}

    func fuse(_ function: inout Function) throws -> Bool {
        let uses = function.useCounts
        let roots = Set(function.rootValues)
        let producers = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0) })
        let types = function.types
        /// The value only `conv` reads, made by `op`.
        func soleProducer(of value: ValueID, _ op: String) -> Node? {
            guard uses[value] == 1, !roots.contains(value), let producer = producers[value], producer.op == op else { return nil }
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
        var changed = false
        for index in function.nodes.indices {
            let conv = function.nodes[index]
            guard conv.op == "fused_conv2d" || conv.op == "conv2d", conv.attrs[ConvOps.Algorithm.key] != nil,
                  conv.attrs[FusedConvOps.Prologue.key] == nil, conv.attrs[FusedConvOps.Gather.key] == nil,
                  conv.operands.dropFirst().allSatisfy({ $0 != conv.operands[0] }) else { continue }
            let gathered: (source: ValueID, gather: FusedConvOps.Gather, skip: ValueID?)
            if let upsample = soleProducer(of: conv.operands[0], "upsample_nearest"), upsample.attrs["channels"] == nil,
               let (fh, fw) = factors(upsample) {
                gathered = (upsample.operands[0], .init(fh: fh, fw: fw, skipChannels: 0), nil)
            } else if let insert = soleProducer(of: conv.operands[0], "insert"),
                      let upsample = soleProducer(of: insert.operands[0], "upsample_nearest"),
                      upsample.attrs["channels"] != nil, try upsample.attrs.int("channel_offset") == 0,
                      try insert.attrs.int("axis") == 1, let (fh, fw) = factors(upsample),
                      let upsampled = types[upsample.operands[0]]?.shape[1], try insert.attrs.int("offset") == upsampled,
                      let skip = types[insert.operands[1]], skip.shape[1] == insert.type.shape[1] - upsampled {
                gathered = (upsample.operands[0], .init(fh: fh, fw: fw, skipChannels: skip.shape[1]), insert.operands[1])
            } else {
                continue
            }
            var fused = conv
            fused.op = "fused_conv2d" // (a training step's, whose batch norm reads its value, has no epilogue)
            if fused.attrs["epilogue"] == nil { fused.attrs["epilogue"] = .expr(.input(0)) }
            fused.operands[0] = gathered.source
            if let skip = gathered.skip { fused.operands.append(skip) }
            fused.attrs[FusedConvOps.Gather.key] = gathered.gather.attr
            function.nodes[index] = fused
            changed = true
        }
        return changed
    }
}
