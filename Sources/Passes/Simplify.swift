import IR

extension Function {
    /// Rewrite operands, outputs and updates through `replacements` (old → new).
    mutating func replaceUses(_ replacements: [ValueID: ValueID]) {
        guard !replacements.isEmpty else { return }
        func resolve(_ id: ValueID) -> ValueID {
            var id = id
            while let next = replacements[id] { id = next }
            return id
        }
        for n in nodes.indices { nodes[n].operands = nodes[n].operands.map(resolve) }
        for o in outputs.indices { outputs[o].value = resolve(outputs[o].value) }
        for u in updates.indices { updates[u].value = resolve(updates[u].value) }
    }

    /// Number of uses of each value (operands, outputs and updates).
    var useCounts: [ValueID: Int] {
        var counts: [ValueID: Int] = [:]
        for node in nodes { for operand in node.operands { counts[operand, default: 0] += 1 } }
        for root in rootValues { counts[root, default: 0] += 1 }
        return counts
    }

    /// The positions in `nodes` of each value's readers, each reader once
    /// however many of its operands the value is.
    var readers: [ValueID: [Int]] {
        var readers: [ValueID: [Int]] = [:]
        for (index, node) in nodes.enumerated() {
            for operand in Set(node.operands) { readers[operand, default: []].append(index) }
        }
        return readers
    }
}

/// Folds elementwise ops whose operands are all scalar constants, and removes
/// identities: x·1, 1·x, x+0, 0+x, x−0, x/1 (only where no broadcast is lost),
/// reshapes and broadcasts to the operand's own shape.
public struct FoldConstants: Pass {
    public static let name = "fold-constants"
    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            var function = module.functions[f]
            var constants: [ValueID: Double] = [:]
            var replacements: [ValueID: ValueID] = [:]
            let types = function.types
            for n in function.nodes.indices {
                var node = function.nodes[n]
                node.operands = node.operands.map { replacements[$0] ?? $0 }
                function.nodes[n] = node
                let spec = try OpRegistry.require(node.op)
                if node.op == "constant", node.type.shape.isEmpty {
                    constants[node.id] = try node.attrs.float("value")
                    continue
                }
                if case .elementwise(let exprOf) = spec.lowering, !node.operands.isEmpty,
                   node.type.shape.isEmpty, node.operands.allSatisfy({ constants[$0] != nil }) {
                    let value = try exprOf(node.attrs).evaluate(node.operands.map { constants[$0]! })
                    let rounded = node.type.dtype == .f32 ? Double(Float(value)) : value
                    var attrs: Attributes = ["value": .float(rounded)]
                    // A constant is f32 unless it says otherwise (f64 on the reference path).
                    if node.type.dtype != .f32 { attrs["dtype"] = .string(node.type.dtype.rawValue) }
                    function.nodes[n] = Node(id: node.id, op: "constant", operands: [], attrs: attrs,
                                             type: node.type, loc: node.loc)
                    constants[node.id] = rounded
                    changed = true
                    continue
                }
                if let kept = identityOperand(node, constants, types) {
                    replacements[node.id] = kept
                    changed = true
                }
            }
            function.replaceUses(replacements)
            module.functions[f] = function
        }
        return changed
    }

    /// The operand this node merely passes through, if any.
    func identityOperand(_ node: Node, _ constants: [ValueID: Double], _ types: [ValueID: TensorType]) -> ValueID? {
        func sameShape(_ id: ValueID) -> Bool { types[id]?.shape == node.type.shape }
        let ops = node.operands
        switch node.op {
        case "reshape", "broadcast_to":
            return sameShape(ops[0]) ? ops[0] : nil
        case "mul":
            if constants[ops[1]] == 1, sameShape(ops[0]) { return ops[0] }
            if constants[ops[0]] == 1, sameShape(ops[1]) { return ops[1] }
        case "add":
            if constants[ops[1]] == 0, sameShape(ops[0]) { return ops[0] }
            if constants[ops[0]] == 0, sameShape(ops[1]) { return ops[1] }
        case "sub":
            if constants[ops[1]] == 0, sameShape(ops[0]) { return ops[0] }
        case "div":
            if constants[ops[1]] == 1, sameShape(ops[0]) { return ops[0] }
        default:
            break
        }
        return nil
    }
}

/// Common-subexpression elimination: identical (op, operands, attributes,
/// type) nodes are computed once. Every op is a pure function of its operands
/// (random_normal included: its seed is an operand).
public struct CSE: Pass {
    public static let name = "cse"
    public init() {}

    struct Key: Hashable {
        var op: String
        var operands: [ValueID]
        var attrs: Attributes
        var type: TensorType
    }

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            var function = module.functions[f]
            var seen: [Key: ValueID] = [:]
            var replacements: [ValueID: ValueID] = [:]
            var kept: [Node] = []
            for var node in function.nodes {
                node.operands = node.operands.map { replacements[$0] ?? $0 }
                let key = Key(op: node.op, operands: node.operands, attrs: node.attrs, type: node.type)
                if let existing = seen[key] {
                    replacements[node.id] = existing
                    changed = true
                } else {
                    seen[key] = node.id
                    kept.append(node)
                }
            }
            function.nodes = kept
            function.replaceUses(replacements)
            module.functions[f] = function
        }
        return changed
    }
}

/// Dead-code elimination: drops nodes no output or update depends on.
public struct DCE: Pass {
    public static let name = "dce"
    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            var live = Set(module.functions[f].rootValues)
            for node in module.functions[f].nodes.reversed() where live.contains(node.id) {
                live.formUnion(node.operands)
            }
            let before = module.functions[f].nodes.count
            module.functions[f].nodes.removeAll { !live.contains($0.id) }
            changed = changed || module.functions[f].nodes.count != before
        }
        return changed
    }
}
