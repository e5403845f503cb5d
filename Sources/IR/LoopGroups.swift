/// Loop groups: consecutive elementwise nodes marked `loop=<k>` (by the
/// group-loops pass) that the lowering computes in one generated loop, each
/// element once through all of them. A value one member makes and a later
/// member reads stays in a register, and is stored only when something
/// outside the group reads it. An optimizer step is the case it exists for:
/// the gradient term, both moments and the weight in one pass over memory
/// instead of four.
///
/// The attribute changes how the nodes run, not what they compute: the
/// interpreter ignores it.
public enum LoopGroups {
    public static let key = "loop"

    /// The group a node belongs to, if any.
    public static func group(of node: Node) -> Int? {
        if case .int(let k)? = node.attrs[key] { return k }
        return nil
    }

    /// The runs of consecutive nodes that share a group, as node index ranges.
    public static func runs(_ function: Function) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        var n = 0
        while n < function.nodes.count {
            guard let k = group(of: function.nodes[n]) else {
                n += 1
                continue
            }
            var end = n + 1
            while end < function.nodes.count, group(of: function.nodes[end]) == k { end += 1 }
            runs.append(n..<end)
            n = end
        }
        return runs
    }

    /// Why a run cannot be one loop, or nil: every member is an elementwise
    /// loop with the same result shape, and no other run has its group.
    public static func problem(_ function: Function) -> String? {
        var seen = Set<Int>()
        for run in runs(function) {
            let first = function.nodes[run.lowerBound]
            let k = group(of: first)!
            guard seen.insert(k).inserted else { return "loop=\(k) marks two runs of nodes; a group's nodes must be consecutive" }
            for node in function.nodes[run] {
                guard case .elementwise? = OpRegistry.spec(node.op)?.lowering else {
                    return "%\(node.id) = \(node.op) is in loop=\(k), but only elementwise loops are grouped"
                }
                guard node.type.shape == first.type.shape else {
                    return "%\(node.id) in loop=\(k) is \(node.type), but the group computes \(first.type.shape)"
                }
            }
        }
        return nil
    }
}
