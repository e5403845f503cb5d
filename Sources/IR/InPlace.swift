/// In-place updates: `%v = fused_elementwise(%p, ...) : T @%p` writes its
/// result over the storage of argument `%p` instead of into the arena.
///
/// An optimizer step computes new weights and moments and an update puts
/// them back; written in the arena first, every trained tensor would be
/// held three times more and copied once per step. Overwriting the argument
/// is legal only when nothing can tell the difference, which `problem`
/// decides for the planner (which places nodes) and the verifier (which
/// checks hand-written or edited IR) alike.
///
/// The planner builds one for every liveness count, which rematerialize
/// makes after each batch of copies it tries: its tables are arrays indexed
/// by value id (ids are dense), not dictionaries.
public struct InPlaceAnalysis {
    /// The storage root of each value id (`storageRootTable`): reshapes
    /// share their operand's bytes; −1 where no value has the id.
    public let rootTable: [ValueID]
    /// Per storage root, the last schedule position of a node that reads it
    /// (directly or through a reshape); −1 where none does.
    let lastRead: [Int]
    /// Arguments whose bytes are read after the call (an output or another
    /// update that is, or aliases, the argument itself).
    let readAfterCall: Set<ValueID>
    let updateValue: [ValueID: ValueID]
    /// The schedule position of each node's value; −1 for arguments.
    let positions: [Int]
    let arguments: [ValueID: Argument]
    let function: Function

    /// The storage root of `id`, nil for an id no value has.
    public func root(of id: ValueID) -> ValueID? {
        id >= 0 && id < rootTable.count && rootTable[id] >= 0 ? rootTable[id] : nil
    }

    /// The schedule position of the node computing `id`, nil for an argument.
    public func position(of id: ValueID) -> Int? {
        id >= 0 && id < positions.count && positions[id] >= 0 ? positions[id] : nil
    }

    /// The storage root of every argument and node: a reshape (an alias
    /// lowering) shares its operand's bytes, everything else owns its own.
    public static func storageRoots(_ function: Function) -> [ValueID: ValueID] {
        var roots: [ValueID: ValueID] = [:]
        roots.reserveCapacity(function.args.count + function.nodes.count)
        for (id, root) in storageRootTable(function).enumerated() where root >= 0 { roots[id] = root }
        return roots
    }

    /// `storageRoots` as an array indexed by value id, up to the function's
    /// largest id: −1 where no value has that id. (A pass that asks often
    /// reads it without hashing.)
    public static func storageRootTable(_ function: Function) -> [ValueID] {
        var roots = [ValueID](repeating: -1, count: function.nextID)
        for arg in function.args { roots[arg.id] = arg.id }
        for index in function.nodes.indices { // by index: no copy of each node
            let id = function.nodes[index].id
            if case .alias? = OpRegistry.spec(function.nodes[index].op)?.lowering, let operand = function.nodes[index].operands.first {
                roots[id] = roots[operand] >= 0 ? roots[operand] : operand
            } else {
                roots[id] = id
            }
        }
        return roots
    }

    /// The operands whose bytes `node` may write its result over, in order:
    /// those its kernel names for this instance (`OpSpec.overwritableOperands`)
    /// unless the kernel also reads that value as another operand, or each
    /// operand of an elementwise loop that has the result's type. A loop reads
    /// all of an element's operands before it stores the element (an operand
    /// held by a result is read through that result's pointer); an operand of
    /// another shape is broadcast, read at other elements, and never qualifies.
    public static func overwritableOperands(of node: Node, types: [ValueID: TensorType]) -> [Int] {
        guard let spec = OpRegistry.spec(node.op) else { return [] }
        if let rule = spec.overwritableOperands {
            let operandTypes = node.operands.compactMap { types[$0] }
            guard operandTypes.count == node.operands.count else { return [] }
            return rule(operandTypes, node.type, node.attrs).filter { k in
                k < node.operands.count && types[node.operands[k]] == node.type
                    && node.operands.indices.allSatisfy { $0 == k || node.operands[$0] != node.operands[k] }
            }
        }
        guard case .elementwise = spec.lowering else { return [] }
        return node.operands.indices.filter { types[node.operands[$0]] == node.type }
    }

    public init(_ function: Function) {
        self.function = function
        let roots = Self.storageRootTable(function)
        func root(_ id: ValueID) -> ValueID { id < roots.count && roots[id] >= 0 ? roots[id] : id }
        var lastRead = [Int](repeating: -1, count: roots.count)
        var positions = [Int](repeating: -1, count: roots.count)
        for position in function.nodes.indices { // by index: no copy of each node
            positions[function.nodes[position].id] = position
            for operand in function.nodes[position].operands where operand < roots.count { lastRead[root(operand)] = position }
        }
        rootTable = roots
        self.lastRead = lastRead
        self.positions = positions
        let arguments = Dictionary(function.args.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        self.arguments = arguments
        readAfterCall = Set(function.rootValues.compactMap { value in
            let storage = root(value)
            return arguments[storage] != nil ? storage : nil
        })
        updateValue = Dictionary(function.updates.map { ($0.target, $0.value) }, uniquingKeysWith: { first, _ in first })
    }

    /// Why `node` may not write its result over argument `target`'s storage,
    /// or nil when it may: it must be the update of `target`, a pointwise
    /// loop of the same type that reads `target` only element for element,
    /// and the last reader of `target` in the schedule.
    public func problem(placing node: Node, over target: ValueID) -> String? {
        guard let arg = arguments[target] else { return "%\(target) is not an argument" }
        guard arg.role == .param || arg.role == .state else {
            return "\"\(arg.name)\" is a \(arg.role.rawValue); only param and state arguments are overwritten"
        }
        guard updateValue[target] == node.id else { return "%\(node.id) is not the update of \"\(arg.name)\"" }
        guard node.type == arg.type else { return "%\(node.id) is \(node.type) but \"\(arg.name)\" is \(arg.type)" }
        // Prepared state is derived from the weights (a preparer's filters):
        // a kernel not reading it may write it where it lives.
        let derived = PreparedWeights.isPrepared(arg.name) && !node.operands.contains { root(of: $0) == target }
        if !derived {
            guard case .elementwise? = OpRegistry.spec(node.op)?.lowering else {
                return "\(node.op) is not an elementwise loop, which alone reads each element before writing it"
            }
        }
        for operand in node.operands where root(of: operand) == target && operand != target {
            return "%\(node.id) reads \"\(arg.name)\" through the reshape %\(operand), not element for element"
        }
        guard let position = position(of: node.id), target >= lastRead.count || lastRead[target] <= position else {
            return "\"\(arg.name)\" is read after %\(node.id) is computed"
        }
        guard !readAfterCall.contains(target) else { return "\"\(arg.name)\" itself is a result of the call" }
        return nil
    }
}
