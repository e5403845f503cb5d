import IR

/// Updates each weight (and its Adam moments) as soon as its gradient is
/// complete and nothing else reads the old weight, instead of all of them
/// after the backward pass: the gradient then dies where it is made.
///
/// The optimizer appends its updates at the end of a step, so every
/// gradient was held from the layer that made it to the end of the step:
/// at the end of TransUNet's fine-tuning backward pass the gradients of its
/// 105 M weights (421 MB) were in the arena beside the activations the rest
/// of the backward pass still needed. With clipping (`clip_norm`) that is
/// unavoidable, as the scale needs every gradient; without it, each weight's
/// update only needs its own.
///
/// The nodes moved are the loops (elementwise and fused reductions) and
/// reshapes whose results only these updates read, and the global gradient
/// norm's (the `grad_norm` output): the update chain of each weight, and
/// the sums of squares. Each goes right after the last node it depends on
/// that stays where it is: its operands' producers and, for the node writing
/// a weight or moment, every other reader of the old value (so plan-memory
/// still computes it in place) and of loops computed from it (so
/// rematerialize can still compute those again). Kernels stay where they
/// are (a weight gradient's product or convolution, the data-parallel
/// gradient exchange).
/// Moved nodes keep their order among themselves, so the order stays
/// topological and the values the same; one that reads only arguments goes
/// with its first reader.
public struct ScheduleUpdates: Pass {
    public static let name = "schedule-updates"

    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices { changed = schedule(&module.functions[f]) || changed }
        return changed
    }

    func schedule(_ function: inout Function) -> Bool {
        let count = function.nodes.count
        var position: [ValueID: Int] = [:]
        for i in 0..<count { position[function.nodes[i].id] = i }
        let args = Dictionary(uniqueKeysWithValues: function.args.map { ($0.id, $0) })
        func isOptimizerTarget(_ target: ValueID) -> Bool {
            guard let arg = args[target] else { return false }
            return arg.role == .param || (arg.role == .state && arg.name.hasPrefix(AdamOptimizer.statePrefix))
        }
        // The roots moved: weight and moment updates, and the gradient norm.
        var moving = [Bool](repeating: false, count: count)
        var pinned = Set<ValueID>()
        for update in function.updates where !isOptimizerTarget(update.target) { pinned.insert(update.value) }
        for output in function.outputs where output.name != AdamOptimizer.gradNormName { pinned.insert(output.value) }
        var roots = Set<Int>()
        for update in function.updates where isOptimizerTarget(update.target) { if let p = position[update.value] { roots.insert(p) } }
        for output in function.outputs where output.name == AdamOptimizer.gradNormName { if let p = position[output.value] { roots.insert(p) } }
        guard !roots.isEmpty else { return false }

        var readers = [[Int]](repeating: [], count: count)
        var argumentReaders: [ValueID: [Int]] = [:]
        for i in 0..<count {
            for operand in Set(function.nodes[i].operands) {
                if let p = position[operand] { readers[p].append(i) } else { argumentReaders[operand, default: []].append(i) }
            }
        }
        // Backwards: a loop or reshape moves with the nodes that alone read it.
        for i in stride(from: count - 1, through: 0, by: -1) {
            let node = function.nodes[i]
            guard !pinned.contains(node.id), Self.movable(node) else { continue }
            moving[i] = roots.contains(i) || (!readers[i].isEmpty && readers[i].allSatisfy { moving[$0] })
        }
        guard moving.contains(true) else { return false }

        // The last reader of each storage root that stays in place: a weight's
        // update waits for it.
        let root = InPlaceAnalysis.storageRoots(function)
        var lastStayingRead: [ValueID: Int] = [:]
        for i in 0..<count where !moving[i] {
            for operand in function.nodes[i].operands {
                let storage = root[operand] ?? operand
                lastStayingRead[storage] = max(lastStayingRead[storage] ?? i, i)
            }
        }
        // A weight's old value is also needed while loops computed from it
        // are read (a standardized weight, read by its convolution's input
        // gradient): rematerialize computes those again from the weight
        // rather than hold them, which it cannot once the weight is updated.
        var neededUntil: [ValueID: Int] = [:]
        for update in function.updates where isOptimizerTarget(update.target) {
            var last = lastStayingRead[update.target] ?? -1
            var derived = (argumentReaders[update.target] ?? []).filter { !moving[$0] }
            var seen = Set(derived)
            while let i = derived.popLast() {
                guard Self.movable(function.nodes[i]) else { continue } // its own read of the weight is counted
                last = max(last, lastStayingRead[root[function.nodes[i].id] ?? function.nodes[i].id] ?? -1)
                for r in readers[i] where !moving[r] && seen.insert(r).inserted { derived.append(r) }
            }
            neededUntil[update.target] = last
        }
        var target: [ValueID: ValueID] = [:]
        for update in function.updates { target[update.value] = update.target }

        // Each moved node goes after `anchor`: a staying node's position (-1: the start).
        var anchor = [Int](repeating: -1, count: count)
        for i in 0..<count where moving[i] {
            var after = -1
            for operand in function.nodes[i].operands {
                guard let p = position[operand] else { continue }
                after = max(after, moving[p] ? anchor[p] : p)
            }
            if let t = target[function.nodes[i].id], let read = neededUntil[t] ?? lastStayingRead[t] { after = max(after, read) }
            anchor[i] = after
        }
        // A moved node of arguments alone (a weight-decay term) goes with its
        // first reader instead of to the start, where its result would be
        // held for nothing.
        for i in stride(from: count - 1, through: 0, by: -1) where moving[i] {
            guard !function.nodes[i].operands.contains(where: { position[$0] != nil }) else { continue }
            anchor[i] = readers[i].map { anchor[$0] }.min() ?? anchor[i]
        }
        var following = [[Int]](repeating: [], count: count + 1) // by anchor + 1
        for i in 0..<count where moving[i] { following[anchor[i] + 1].append(i) }
        var order = following[0]
        for i in 0..<count where !moving[i] {
            order.append(i)
            order += following[i + 1]
        }
        guard order != Array(0..<count) else { return false }
        function.nodes = order.map { function.nodes[$0] }
        return true
    }

    /// Loops and reshapes: moving one costs nothing but its place.
    static func movable(_ node: Node) -> Bool {
        switch OpRegistry.spec(node.op)?.lowering {
        case .elementwise?, .kernelOverLoop?, .alias?: return true
        default: return false
        }
    }
}
