import IR

/// Lets matmuls read and write their operands in the layout the values
/// around them already have, instead of through permuted copies: a permute
/// that only matmuls read becomes their `a_perm` / `b_perm`, and a permute
/// that is a matmul's only use becomes its `result_perm` (see MatMulOps).
///
/// A transformer's attention works on heads, [B, H, N, d], while its
/// projections read and write tokens, [B, N, H·d]. Written as a model says
/// it, every layer copies Q, K and V into heads and the context back into
/// tokens, and its backward pass copies their gradients the same ways: 96
/// of the 100 permutes of TransUNet's fine-tuning step. The batched
/// products read each head's rows where the projection left them (rows
/// H·d floats apart instead of d) and write the context's rows into the
/// tokens, so no copy is made; the GEMM packs its operands either way, so
/// every product sums in the same order and the results keep their bits.
///
/// Only layouts that keep the last axis last are taken: each matrix the
/// kernel sees then has unit-stride rows. Runs after autodiff (a matmul
/// with layouts differentiates through permutes; this pass would fold those
/// again).
public struct MatmulLayout: NodeFusionPass {
    public static let name = "matmul-layout"
    public init() {}

    /// Whether `perm` is a layout a matmul takes: the last axis stays last.
    static func keepsRows(_ perm: [Int]) -> Bool { perm.last == perm.count - 1 }

    func fuse(_ function: inout Function) throws -> Bool {
        let roots = Set(function.rootValues)
        var changed = false

        // Operands: a permute whose every reader is a matmul is read in place.
        var producers = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0) })
        var readers: [ValueID: Set<String>] = [:]
        for node in function.nodes {
            for operand in node.operands { readers[operand, default: []].insert(node.op) }
        }
        for (index, node) in function.nodes.enumerated() where node.op == "matmul" {
            var folded = node
            for (slot, key) in [(0, "a_perm"), (1, "b_perm")] where node.attrs[key] == nil {
                guard let permute = producers[node.operands[slot]], permute.op == "permute",
                      let perm = try? permute.attrs.ints("perm"), Self.keepsRows(perm),
                      !roots.contains(permute.id), readers[permute.id] == ["matmul"] else { continue }
                folded.operands[slot] = permute.operands[0]
                folded.attrs[key] = .ints(perm)
            }
            if folded != node {
                function.nodes[index] = folded
                changed = true
            }
        }

        // Results: a matmul whose only use is a permute writes in its layout.
        producers = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0) })
        let uses = function.useCounts
        for (index, node) in function.nodes.enumerated() where node.op == "permute" {
            guard let perm = try? node.attrs.ints("perm"), Self.keepsRows(perm),
                  let product = producers[node.operands[0]], product.op == "matmul", product.attrs["result_perm"] == nil,
                  uses[product.id] == 1, !roots.contains(product.id) else { continue }
            var attrs = product.attrs
            attrs["result_perm"] = .ints(perm)
            function.nodes[index] = Node(id: node.id, op: "matmul", operands: product.operands, attrs: attrs,
                                         type: node.type, loc: product.loc)
            changed = true
        }
        return changed
    }
}
