import IR

/// Fuses a training batch norm with the ReLU that follows it into one
/// `fused_batch_norm_train` (its `epilogue` in the dump): the kernel applies
/// the ReLU as it writes each normalized plane, so the normalized tensor is
/// neither stored nor read back by a loop of its own.
///
/// The ReLU is absorbed when it is the batch norm's only user and the batch
/// norm's value is not an output (nothing else needs it; the backward pass
/// reads the ReLU's result for its mask). Runs after autodiff, whose
/// gradient rules see the two ops apart.
public struct FuseNormActivation: NodeFusionPass {
    public static let name = "fuse-norm-activation"
    public init() {}

    func fuse(_ function: inout Function) throws -> Bool {
        let uses = function.useCounts
        let roots = Set(function.rootValues)
        let producers = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0) })
        var changed = false
        for n in function.nodes.indices {
            let node = function.nodes[n]
            guard node.operands.count == 1, let norm = producers[node.operands[0]], norm.op == "batch_norm_train",
                  uses[norm.id] == 1, !roots.contains(norm.id), node.type == norm.type,
                  case .elementwise(let exprOf)? = OpRegistry.spec(node.op)?.lowering,
                  try exprOf(node.attrs) == NormOps.reluEpilogue
            else { continue }
            var attrs = norm.attrs
            attrs["epilogue"] = .expr(NormOps.reluEpilogue)
            function.nodes[n] = Node(id: node.id, op: "fused_batch_norm_train", operands: norm.operands, attrs: attrs,
                                     type: node.type, loc: norm.loc)
            changed = true
        }
        return changed
    }
}
