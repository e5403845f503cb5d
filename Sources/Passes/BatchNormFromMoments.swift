import IR

/// Rewrites each training batch norm whose step already computes its batch
/// moments (NormOps.batchMoments: the layer's running statistics and the
/// gradient rule both do) as one elementwise pass over the centered tensor:
/// y = (x − mean)·γ/√(var + eps) + β.
///
/// The batch_norm_train kernel computed the statistics again, two more passes
/// over x, and wrote y over x while x − mean lived beside it for the backward
/// pass. Normalizing x − mean instead lets x die at the subtraction, which
/// then writes over it, and makes y a function of what the backward pass
/// holds anyway (x − mean and [C] vectors), so `rematerialize` can compute y
/// again where the backward pass reads it instead of holding it across the
/// turn from forward to backward: one saved tensor per layer instead of two.
/// A following ReLU is fused into the same loop by fuse-elementwise.
public struct BatchNormFromMoments: Pass {
    public static let name = "batch-norm-from-moments"
    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for index in module.functions.indices {
            while let rewritten = try rewriteFirst(module.functions[index]) {
                module.functions[index] = rewritten
                changed = true
            }
        }
        return changed
    }

    /// The function with its first batch_norm_train that has moments
    /// replaced by the elementwise nodes computing the same value (the last
    /// of them keeps the batch norm's id), or nil when none is left.
    func rewriteFirst(_ function: Function) throws -> Function? {
        for (position, node) in function.nodes.enumerated() where node.op == "batch_norm_train" {
            guard let moments = NormOps.existingBatchMoments(of: node.operands[0], in: function, before: position) else { continue }
            let b = FunctionBuilder(function)
            b.currentLoc = node.loc
            let built = function.nodes.count
            let y = try NormOps.normalizeCentered(b, centered: b.value(moments.centered), variance: b.value(moments.variance),
                                                  gamma: b.value(node.operands[1]), beta: b.value(node.operands[2]), attrs: node.attrs)
            var replacement = Array(b.function.nodes[built...])
            precondition(replacement.last?.id == y.id && replacement.last?.type == node.type)
            replacement[replacement.count - 1].id = node.id
            var result = function
            result.nodes.replaceSubrange(position...position, with: replacement)
            return result
        }
        return nil
    }
}
