import IR

/// Has the convolution that produces a batch norm's input gather its batch
/// moments as it stores each output row: `batch_moments(%y)` moves right
/// after `%y = conv2d(...)` or `fused_conv2d(...)`, which gets
/// `moments=true`, and is marked `in_epilogue=true`, so it runs no kernel:
/// the convolution's kernel writes its buffer (the same bits batch_moments
/// computes, see ddp_kernels.h). A training batch norm after a convolution
/// then reads its input once (x − mean) instead of three times.
///
/// It runs after every pass that moves or copies nodes (rematerialize,
/// group-loops), just before plan-memory, which keeps the moments' buffer
/// live from the convolution on. Moving batch_moments earlier is always
/// allowed: its one operand is the convolution's result.
///
/// Not in the default pipeline (`ddepc compile --moments-in-epilogue`):
/// measured on Zen 5 (AVX-512, 2 threads), the sums in double are
/// arithmetic-bound, not memory-bound, so they cost the convolution about
/// what the pass over its output costs. unet-r18's fine-tuning step at
/// 128 px, batch 8, per kernel: batch_moments took 1.45 ms for 30 layers;
/// gathered in the epilogues, the Winograd convolutions took 3.5–4 ms more
/// and the im2col ones 0.4–0.8 ms more.
public struct FuseConvMoments: Pass {
    public static let name = "fuse-conv-moments"
    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            changed = fuse(&module.functions[f]) || changed
        }
        return changed
    }

    func fuse(_ function: inout Function) -> Bool {
        var changed = false
        var index = 0
        while index < function.nodes.count {
            let node = function.nodes[index]
            index += 1
            guard node.op == "batch_moments", node.attrs[BatchMomentsOps.inEpilogueKey] == nil, node.type.shape.count == 2,
                  let producerAt = function.nodes.firstIndex(where: { $0.id == node.operands[0] }),
                  BatchMomentsOps.producers.contains(function.nodes[producerAt].op),
                  function.nodes[producerAt].attrs[FusedConvOps.momentsKey] == nil else { continue }
            var moments = node
            moments.attrs[BatchMomentsOps.inEpilogueKey] = .bool(true)
            function.nodes.remove(at: index - 1)
            function.nodes[producerAt].attrs[FusedConvOps.momentsKey] = .bool(true)
            function.nodes.insert(moments, at: producerAt + 1)
            changed = true
        }
        return changed
    }
}
