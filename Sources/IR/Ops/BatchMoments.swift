/// batch_moments: the per-channel mean and biased variance of an [N, C, ...]
/// tensor in one pass over it, `[2, C]` (means, then variances).
///
/// A training batch norm's statistics are built as reduce_mean(x), x − mean
/// and reduce_mean((x − mean)²) (NormOps.batchMoments), three passes over x;
/// the batch-moments pass replaces both means with this op after autodiff,
/// and fuse-conv-moments lets the convolution that produces x gather them
/// in its epilogue instead (`in_epilogue=true`; the node then runs no kernel).
/// Sums are taken in double per row of the innermost axis and added in a
/// fixed order, so the kernel and every epilogue give the same bits, at
/// any thread count (ddp_kernels.h). Made after autodiff: no gradient.
public enum BatchMomentsOps {
    static let f = TensorType.f32

    /// Marks a batch_moments node whose values the convolution right before
    /// it computes (that node carries `moments=true`; FusedConvOps.momentsKey).
    public static let inEpilogueKey = "in_epilogue"

    /// Whether the node's buffer is written by the node before it, during
    /// that node's call: its live range starts there (plan-memory, ArenaCheck).
    public static func isWrittenByProducer(_ node: Node) -> Bool {
        node.op == "batch_moments" && node.attrs[inEpilogueKey] != nil
    }

    /// The forward convolutions whose epilogue can gather moments (their
    /// lowering passes the moments buffer to conv2d's kernels).
    public static let producers: Set<String> = ["conv2d", "fused_conv2d"]

    /// What is wrong with the function's moments gathered in epilogues, or
    /// nil: each convolution marked `moments=true` is followed by the
    /// batch_moments of its result marked `in_epilogue=true`, and each such
    /// node follows the convolution that gathers it. Code generation hands
    /// the one's buffer to the other by that adjacency.
    public static func problem(_ function: Function) -> String? {
        let nodes = function.nodes
        for (position, node) in nodes.enumerated() {
            let next = position + 1 < nodes.count ? nodes[position + 1] : nil
            if node.attrs[FusedConvOps.momentsKey] != nil {
                guard producers.contains(node.op) else { return "%\(node.id) = \(node.op): only \(producers.sorted()) gather batch moments (moments=)" }
                guard let next, isWrittenByProducer(next), next.operands == [node.id] else {
                    return "%\(node.id) gathers batch moments (moments=), but the node after it is not batch_moments(%\(node.id)) {in_epilogue=true}"
                }
            }
            if isWrittenByProducer(node) {
                guard position > 0, nodes[position - 1].attrs[FusedConvOps.momentsKey] != nil, node.operands == [nodes[position - 1].id] else {
                    return "%\(node.id) = batch_moments {in_epilogue=true} must follow the convolution of its operand, marked moments=true"
                }
            }
        }
        return nil
    }

    /// The kernel's ia: [N, C, rows per plane, row length]; the row is the
    /// innermost axis of a tensor of rank 3 or more, one element otherwise.
    static func kernelInts(_ shape: [Int]) -> [Int] {
        let plane = shape.dropFirst(2).reduce(1, *)
        let row = shape.count >= 3 ? shape[shape.count - 1] : 1
        return [shape[0], shape[1], row == 0 ? 0 : plane / row, max(row, 1)]
    }

    public static let all: [OpSpec] = [
        OpSpec(name: "batch_moments",
               doc: "%m = batch_moments(%x) {in_epilogue=true}: [2, C], the mean and biased variance of each channel of x [N, C, ...]",
               arity: 1...1,
               inferType: { operands, _ in
                   let x = operands[0]
                   guard x.dtype == .f32 || x.dtype == .f64 else { throw IRError("batch_moments needs a floating-point tensor, got \(x)") }
                   let (_, c, _) = try NormOps.channelLayout(x.shape)
                   return x.with(shape: [2, c])
               },
               evaluate: { operands, _, type in
                   let x = operands[0]
                   let (n, c, rest) = try NormOps.channelLayout(x.shape)
                   var out = [Double](repeating: 0, count: 2 * c)
                   let count = Double(n * rest)
                   for ch in 0..<c {
                       var values: [Double] = []
                       for i in 0..<n {
                           let start = (i * c + ch) * rest
                           values += x.data[start..<(start + rest)]
                       }
                       let mean = values.reduce(0, +) / count
                       out[ch] = mean
                       out[c + ch] = values.reduce(0.0) { sum, v in sum + (v - mean) * (v - mean) } / count
                   }
                   return HostTensor(type, out)
               },
               gradient: nil,
               lowering: .kernels { operands, _, attrs in
                   // In an epilogue: the convolution before it wrote the values.
                   attrs[inEpilogueKey] != nil ? [] : [KernelCall("batch_moments", [.operand(0), .result], ints: kernelInts(operands[0].shape))]
               },
               examples: [([f([2, 3, 4, 5])], [:]), ([f([5, 3])], [:]), ([f([3, 2, 7])], [:])]),
    ]
}
