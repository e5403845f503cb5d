import IR

/// Fuses a reduction with the elementwise node that produces its input into
/// one `fused_reduce`: the input's values are computed in cache, a chunk at
/// a time, and reduced there, so the tensor is never written nor read back.
///
/// A training batch norm makes two such pairs per layer: its variance is the
/// mean of (x − μ)², and its gradient sums g·(x − μ); each wrote a whole
/// activation-sized tensor only to reduce it.
///
/// The producer is absorbed when the reduction is its only user (nothing is
/// computed twice and nothing else needs it stored) and all its operands have
/// its shape (the loop then walks every operand in the same flat order; a
/// broadcast operand would need the reduction's index arithmetic in the loop).
public struct FuseReductions: NodeFusionPass {
    public static let name = "fuse-reductions"
    public init() {}

    static let kinds = ["reduce_sum": "sum", "reduce_mean": "mean", "reduce_max": "max"]

    func fuse(_ function: inout Function) throws -> Bool {
        let uses = function.useCounts
        let roots = Set(function.rootValues)
        let types = function.types
        let producers = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0) })
        let maxOperands = try OpRegistry.require("fused_reduce").arity.upperBound
        var changed = false
        for n in function.nodes.indices {
            let node = function.nodes[n]
            guard let kind = Self.kinds[node.op], let input = node.operands.first,
                  let producer = producers[input], uses[input] == 1, !roots.contains(input),
                  producer.op != "constant", producer.type.count > 0,
                  case .elementwise(let exprOf)? = OpRegistry.spec(producer.op)?.lowering,
                  !producer.operands.isEmpty, producer.operands.count <= maxOperands,
                  producer.operands.allSatisfy({ types[$0]?.shape == producer.type.shape })
            else { continue }
            var attrs = node.attrs
            attrs["kind"] = .string(kind)
            attrs["expr"] = .expr(try exprOf(producer.attrs))
            function.nodes[n] = Node(id: node.id, op: "fused_reduce", operands: producer.operands, attrs: attrs,
                                     type: node.type, loc: node.loc)
            changed = true
        }
        return changed
    }
}
