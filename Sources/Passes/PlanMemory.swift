import IR

/// Liveness-based placement of every activation in one arena. Values are
/// placed first-fit at 64-byte-aligned offsets in schedule order and freed
/// after their last use; reshapes share their operand's bytes. The result is
/// recorded in the IR (`@offset` per node, `arena N` per function) and as a
/// report whose lower bound (the largest set of simultaneously live bytes)
/// makes the planner's efficiency a number.
///
/// An update that can overwrite its argument (`InPlaceAnalysis`: an
/// optimizer step's new weights and moments, running statistics) is placed
/// there (`@%arg`) and takes no arena bytes: nothing is held twice or copied
/// back after the call. A kernel that may write its result over an operand
/// (`OpSpec.overwritesOperand`: a batch norm) takes that operand's bytes
/// when nothing reads the operand afterwards.
public struct PlanMemory: Pass {
    public static let name = "plan-memory"
    public static let alignment = 64

    public init() {}

    public struct Report: CustomStringConvertible {
        public var function: String
        public var arenaBytes: Int
        public var lowerBoundBytes: Int
        /// Updates computed in place of their argument, and their bytes.
        public var inPlaceUpdates = 0
        public var inPlaceBytes = 0
        public var efficiency: Double { arenaBytes == 0 ? 1 : Double(lowerBoundBytes) / Double(arenaBytes) }
        public var description: String {
            "@\(function): arena \(arenaBytes) bytes, lower bound \(lowerBoundBytes) bytes (\(Int((efficiency * 100).rounded()))%)"
                + (inPlaceUpdates > 0 ? ", \(inPlaceUpdates) updates in place (\(inPlaceBytes) bytes)" : "")
        }
    }

    public func run(_ module: inout Module) throws -> Bool {
        for f in module.functions.indices { _ = plan(&module.functions[f]) }
        return true
    }

    static func aligned(_ bytes: Int) -> Int { (bytes + alignment - 1) / alignment * alignment }

    /// Plans one function and returns the report.
    @discardableResult
    public func plan(_ function: inout Function) -> Report {
        let args = Set(function.args.map(\.id))
        // Storage root of each value: reshape results share their operand's.
        let analysis = InPlaceAnalysis(function)
        let root = analysis.roots
        // Updates that can overwrite their argument need no arena bytes.
        var inPlace: [ValueID: ValueID] = [:]
        let nodeIndex = Dictionary(uniqueKeysWithValues: function.nodes.enumerated().map { ($1.id, $0) })
        for update in function.updates {
            guard let index = nodeIndex[update.value], root[update.value] == update.value else { continue }
            if analysis.problem(placing: function.nodes[index], over: update.target) == nil {
                inPlace[update.value] = update.target
            }
        }
        // Last use (schedule position) of each arena-resident root.
        let end = function.nodes.count
        var lastUse: [ValueID: Int] = [:]
        for (position, node) in function.nodes.enumerated() {
            lastUse[root[node.id]!] = max(lastUse[root[node.id]!] ?? position, position)
            for operand in node.operands where !args.contains(operand) {
                lastUse[root[operand]!] = position
            }
        }
        for value in function.rootValues where !args.contains(value) { lastUse[root[value]!] = end }
        // A loop group reads every operand and writes every result once per
        // element, all in one loop: nothing one member touches may be reused
        // before the group's last member (a later member's result placed
        // over an earlier one's operand would overwrite elements not read yet).
        for run in LoopGroups.runs(function) {
            let last = run.upperBound - 1
            for node in function.nodes[run] {
                for value in node.operands + [node.id] where !args.contains(value) {
                    lastUse[root[value]!] = max(lastUse[root[value]!] ?? last, last)
                }
            }
        }

        var live: [(offset: Int, size: Int, id: ValueID)] = []  // sorted by offset
        var offsets: [ValueID: Int] = [:]
        var peak = 0, lowerBound = 0
        for (position, node) in function.nodes.enumerated() {
            if root[node.id] == node.id, inPlace[node.id] == nil,
               let reused = overwritable(node, at: position, live: live, root: root, lastUse: lastUse, args: args) {
                live[reused].id = node.id
                offsets[node.id] = live[reused].offset
            } else if root[node.id] == node.id, inPlace[node.id] == nil {
                let size = Self.aligned(max(node.type.byteSize, 1))
                var candidate = 0
                var insertAt = live.count
                for (index, block) in live.enumerated() {
                    if block.offset - candidate >= size {
                        insertAt = index
                        break
                    }
                    candidate = max(candidate, block.offset + block.size)
                }
                live.insert((candidate, size, node.id), at: insertAt)
                offsets[node.id] = candidate
                peak = max(peak, candidate + size)
                lowerBound = max(lowerBound, live.reduce(0) { $0 + $1.size })
            }
            live.removeAll { lastUse[$0.id].map { $0 <= position } ?? true }
        }
        for n in function.nodes.indices {
            let id = function.nodes[n].id
            function.nodes[n].arenaOffset = offsets[root[id]!]
            function.nodes[n].inPlaceOf = inPlace[id]
        }
        function.arenaBytes = peak
        var report = Report(function: function.name, arenaBytes: peak, lowerBoundBytes: lowerBound)
        report.inPlaceUpdates = inPlace.count
        report.inPlaceBytes = inPlace.keys.reduce(0) { $0 + function.nodes[nodeIndex[$1]!].type.byteSize }
        return report
    }

    /// The index in `live` of the block `node` may write its result over: the
    /// operand its spec allows, of the result's type, in the arena, read by
    /// nothing after this node.
    func overwritable(_ node: Node, at position: Int, live: [(offset: Int, size: Int, id: ValueID)], root: [ValueID: ValueID],
                      lastUse: [ValueID: Int], args: Set<ValueID>) -> Int? {
        guard let k = OpRegistry.spec(node.op)?.overwritesOperand, k < node.operands.count else { return nil }
        let operand = node.operands[k]
        guard !args.contains(operand), let storage = root[operand], storage == operand, lastUse[storage] == position,
              let index = live.firstIndex(where: { $0.id == storage }),
              live[index].size == Self.aligned(max(node.type.byteSize, 1)) else { return nil }
        return index
    }
}
