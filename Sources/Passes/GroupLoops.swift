import IR

/// Puts consecutive elementwise nodes of one shape that share data into one
/// generated loop (`loop=<k>` in the dump; see `LoopGroups`): each element
/// then goes through all of them once, a value one member makes and a later
/// one reads stays in a register (stored only if something outside the group
/// reads it), and an operand several members read is loaded once. The case
/// it is for is the optimizer's step for one weight, four nodes in a row
/// (the regularised gradient, both moments, the weight): one pass that reads
/// the weight, gradient and moments and writes weight and moments, where
/// four loops made four passes over memory.
///
/// A node joins the group before it when it has the group's shape, reads a
/// value the group makes or an operand the group reads, and the group stays
/// within `maximumMembers` nodes and `maximumOperands` distinct operands
/// from outside (a loop keeps every operand's pointer and value live).
/// Nodes a recompiled module already groups are left as they are.
public struct GroupLoops: Pass {
    public static let name = "group-loops"
    public static let maximumMembers = 8
    public static let maximumOperands = 16
    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            changed = group(&module.functions[f]) || changed
        }
        return changed
    }

    static func candidate(_ node: Node) -> Bool {
        guard node.op != "constant", node.type.dtype == .f32, LoopGroups.group(of: node) == nil,
              case .elementwise? = OpRegistry.spec(node.op)?.lowering else { return false }
        return true
    }

    func group(_ function: inout Function) -> Bool {
        var nextGroup = (function.nodes.compactMap(LoopGroups.group).max() ?? -1) + 1
        var changed = false
        var n = 0
        while n < function.nodes.count {
            let first = function.nodes[n]
            guard Self.candidate(first) else {
                n += 1
                continue
            }
            var made: Set<ValueID> = [first.id]
            var operands = Set(first.operands)
            var end = n + 1
            while end < function.nodes.count, end - n < Self.maximumMembers {
                let node = function.nodes[end]
                guard Self.candidate(node), node.type.shape == first.type.shape else { break }
                let outside = Set(node.operands).subtracting(made)
                guard node.operands.contains(where: { made.contains($0) || operands.contains($0) }),
                      operands.union(outside).count <= Self.maximumOperands else { break }
                operands.formUnion(outside)
                made.insert(node.id)
                end += 1
            }
            if end - n >= 2 {
                for member in n..<end { function.nodes[member].attrs[LoopGroups.key] = .int(nextGroup) }
                nextGroup += 1
                changed = true
            }
            n = end
        }
        return changed
    }
}
