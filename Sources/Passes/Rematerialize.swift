import Dispatch
import IR

/// Computes values again right before a late use, instead of holding them
/// across the turn from the forward to the backward pass, where that costs
/// a pass or a few and holds nothing else longer: data movement
/// (`OpSpec.rematerializable`: upsampling, concatenation), and elementwise
/// loops, normalizations and softmax (`OpSpec.recomputable`), and kernels of
/// little arithmetic per element (attention's Q·Kᵀ), whose operands the
/// step holds anyway.
///
/// A training step keeps what its backward pass reads. A decoder's upsampled
/// and concatenated inputs, read again by their convolution's weight
/// gradient, were the largest of these in TransUNet's DDeP step (a 51 MB
/// upsampling and 77 MB of concatenations at 224 px); in its fine-tuning
/// steps, every layer's activation output (after a batch, group or layer
/// norm, or GELU) beside the input its gradient reads anyway, the
/// standardized weights, the residual blocks' outputs and attention's
/// probabilities (together 190 MB of 834).
///
/// For each such value, largest first, its uses are split at the longest
/// stretch of the schedule without one, and the uses after it read a copy
/// computed just before the first of them (with no use before the stretch,
/// the value simply moves there). An operand of the copy that would be dead
/// by then is computed again too when it can be (as `ChainPolicy` says),
/// and is otherwise held longer. A copy is kept only if the
/// function's peak of live arena bytes (plan-memory's lower bound) drops, and
/// a round's copies only if the arena as placed drops too, so nothing is
/// recomputed that saves no memory; a function without such a stretch
/// (inference) is left as it is.
///
/// With a memory budget (`ddepc compile --memory-budget`), a step whose peak
/// is still above it then trades arithmetic for memory: copies may compute
/// convolutions and matmuls again (a transformer block's Q, K, V and MLP
/// projections from its held input), each only where it frees at least
/// `minimumBytesFreedPerFlop`, until the peak is within the budget.
///
/// Last, a kernel read late whose dead operands the backward pass computes
/// again anyway a little later (attention's context P·V, from the copy of
/// its probabilities) is computed again from those copies, moved up to the
/// late read, where that lowers the peak (`computingAgainFromLaterCopies`).
public struct Rematerialize: Pass {
    public static let name = "rematerialize"
    /// Most producers one copy recomputes in a chain (a concatenation of an
    /// upsampling is two, a ReLU of a group norm too).
    static let maximumChain = 4

    /// Live arena bytes per step above which convolutions and matmuls are
    /// computed again too (`budgetFlopsPerElement`); nil: only what costs a
    /// pass or a few.
    public var memoryBudget: Int?

    public init(memoryBudget: Int? = nil) {
        self.memoryBudget = memoryBudget
    }

    /// The arena plan-memory would give `function` after group-loops. The
    /// copies are judged by the peak of live bytes (quick to count), but the
    /// arena is what a step allocates, and placing buffers around many
    /// copies, and loops grouped among them, can lose more than they save.
    static func placedArena(_ function: Function) -> Int {
        var planned = function
        _ = GroupLoops().group(&planned)
        return PlanMemory.arenaBytes(of: planned)
    }

    /// Which producers a copy may compute again in a chain besides data
    /// movement and normalizations. Neither is better everywhere, since the
    /// copies are chosen greedily: each function is planned with both and
    /// keeps the smaller arena.
    enum ChainPolicy: CaseIterable {
        /// Elementwise loops only where their operands are there anyway: a
        /// standardized weight, (w − mean)·rstd. Best where little else is
        /// held (a step through a frozen encoder).
        case heldOperands
        /// Any elementwise loop, its dead operands held longer. A residual
        /// block's output, relu(norm(conv) + shortcut), is then computed
        /// again from convolution outputs the normalizations' gradients hold
        /// anyway, block after block (a trained encoder).
        case throughLoops
    }

    public func run(_ module: inout Module) throws -> Bool {
        // Rounds until no function's arena drops (a second round still finds
        // copies among the first one's, whose values it does not touch
        // again). Each round plans every function still changing with every
        // policy, on all cores: they are independent, and the result does
        // not depend on the order.
        let policies = ChainPolicy.allCases
        var pending = Array(module.functions.indices)
        var arena = module.functions.map(Self.placedArena)
        var changed = false
        while !pending.isEmpty {
            let functions = pending.map { module.functions[$0] }
            // nil where a policy found no copy to make.
            var planned = [(function: Function, arena: Int)?](repeating: nil, count: functions.count * policies.count)
            planned.withUnsafeMutableBufferPointer { planned in
                DispatchQueue.concurrentPerform(iterations: planned.count) { task in
                    var function = functions[task / policies.count]
                    guard rematerialize(&function, policy: policies[task % policies.count]) else { return }
                    planned[task] = (function, Self.placedArena(function))
                }
            }
            var next: [Int] = []
            for (i, f) in pending.enumerated() {
                let lowered = planned[i * policies.count ..< (i + 1) * policies.count].compactMap { $0 }
                guard let best = lowered.min(by: { $0.arena < $1.arena }), best.arena < arena[f] else { continue }
                module.functions[f] = best.function
                arena[f] = best.arena
                changed = true
                next.append(f)
            }
            pending = next
        }
        if changed { _ = try DCE().run(&module) } // values that moved leave their old producers dead
        return changed
    }

    /// Copies that cost a pass or a few wherever they lower the peak; then,
    /// while the peak is above `memoryBudget`, copies that compute
    /// convolutions and matmuls again too.
    func rematerialize(_ function: inout Function, policy: ChainPolicy = .heldOperands) -> Bool {
        var peak = PlanMemory.liveness(of: function).peak
        var settled = Set<ValueID>() // values copied, and the copies
        var changed = sweep(&function, peak: &peak, settled: &settled, policy: policy, kernelLimit: Self.cheapFlopsPerElement)
        if let memoryBudget, peak.bytes > memoryBudget {
            changed = sweep(&function, peak: &peak, settled: &settled, policy: policy, kernelLimit: Self.budgetFlopsPerElement,
                            budget: memoryBudget) || changed
        }
        // Kept only where the peak of live bytes drops, as the copies above
        // (the caller keeps a round only if the arena as placed drops too).
        if let shared = Self.computingAgainFromLaterCopies(function) {
            function = shared
            changed = true
        }
        return changed
    }

    /// Keeps every copy that lowers the peak (and frees enough for the
    /// kernels it computes again, `minimumBytesFreedPerFlop`), largest value
    /// first, in sweeps over the candidates live at the peak; after a sweep
    /// that kept a copy the next looks where the peak has moved. A copy only
    /// lowers the peak if the stretch it frees holds the peak's position, so
    /// other values are not tried. With a budget it stops once the peak is
    /// within it, checking after every copy.
    func sweep(_ function: inout Function, peak: inout (bytes: Int, position: Int), settled: inout Set<ValueID>,
               policy: ChainPolicy, kernelLimit: Double, budget: Int? = nil) -> Bool {
        var changed = false
        var kept = true
        let batchSize = budget == nil ? Self.batchSize : 1
        while kept, peak.bytes > budget ?? 0 {
            kept = false
            var schedule = Schedule(function)
            var types = function.types
            let at = peak.position
            let candidates = function.nodes
                .filter { !settled.contains($0.id) && schedule.position[$0.id]! < at && (schedule.lastUse[$0.id] ?? 0) > at }
                .filter { Self.isCandidate($0, in: function, schedule: schedule, types: types, kernelLimit: kernelLimit) }
                .sorted { ($0.type.byteSize, $1.id) > ($1.type.byteSize, $0.id) }
            // Copies are made a batch at a time and the peak counted once per
            // batch (counting it is most of the pass's time); a batch that
            // does not lower it is made again one copy at a time.
            var verified = function
            var batch: [(value: ValueID, copies: [ValueID])] = []
            var batchFlops = 0.0
            /// Whether a peak lowered to `newPeak` by copies recomputing
            /// `flops` is worth them (`minimumBytesFreedPerFlop`).
            func pays(_ newPeak: (bytes: Int, position: Int), flops: Double) -> Bool {
                newPeak.bytes < peak.bytes && Double(peak.bytes - newPeak.bytes) >= flops * Self.minimumBytesFreedPerFlop
            }
            func trial(_ value: ValueID) -> Trial? {
                guard let stretch = Self.longestStretch(of: value, in: schedule),
                      stretch.after < peak.position, peak.position < stretch.before else { return nil }
                guard let made = recomputingLateUses(of: value, in: function, schedule: schedule, types: types, policy: policy,
                                                     kernelLimit: kernelLimit) else { return nil }
                for (copy, type) in zip(made.copies, made.copyTypes) { types[copy] = type }
                return made
            }
            func keep(_ copied: [(value: ValueID, copies: [ValueID])], peak newPeak: (bytes: Int, position: Int)) {
                for (value, copies) in copied {
                    settled.insert(value)
                    settled.formUnion(copies)
                }
                verified = function
                peak = newPeak
                changed = true
                kept = true
            }
            func settleBatch() {
                guard !batch.isEmpty else { return }
                let batchPeak = PlanMemory.liveness(of: function).peak
                if pays(batchPeak, flops: batchFlops) {
                    keep(batch, peak: batchPeak)
                } else {
                    function = verified
                    schedule = Schedule(function)
                    for (value, _) in batch {
                        guard let one = trial(value) else { continue }
                        let onePeak = PlanMemory.liveness(of: one.function).peak
                        guard pays(onePeak, flops: one.flops) else { continue }
                        function = one.function
                        schedule = Schedule(function)
                        keep([(value, one.copies)], peak: onePeak)
                    }
                }
                batch = []
                batchFlops = 0
            }
            for candidate in candidates {
                if let budget, peak.bytes <= budget { break }
                guard let made = trial(candidate.id) else { continue }
                function = made.function
                schedule = Schedule(function)
                batch.append((candidate.id, made.copies))
                batchFlops += made.flops
                if batch.count == batchSize { settleBatch() }
            }
            settleBatch()
        }
        return changed
    }

    /// Copies made before the peak is counted again.
    static let batchSize = 8

    // MARK: - Kernels computed again from the backward pass's own copies

    /// Arithmetic per result element of a kernel computed again from copies
    /// the backward pass makes anyway (`computingAgainFromLaterCopies`):
    /// attention's context P·V over 196 or 197 tokens (392–394), a 1×1
    /// convolution over 256 channels (512).
    static let laterCopiesFlopsPerElement = 512.0

    /// `function` with kernels computed again late whose operands are dead
    /// there but computed again a little later anyway (copies made above),
    /// or nil where there are none. Attention's context P·V is read by the
    /// output projection's weight gradient at the start of a block's
    /// backward pass; the probabilities P are dead by then, and the backward
    /// pass computes them again (softmax of Q·Kᵀ, a copy) a few nodes later
    /// for their own gradient. That copy and what it is computed from move
    /// up to the late read, P·V is computed again from it there, and no block
    /// holds its context across the turn. A ResNet's 1×1 convolution over
    /// 256 channels whose input (a group norm's ReLU) the backward pass
    /// copies anyway is the same case.
    ///
    /// TransUNet at 224 px, batch 4 (12 contexts and 12 such convolutions):
    /// the DeP step's arena went from 534.8 to 467.5 MB, fine-tuning's from
    /// 532.3 to 474.8 MB and classification's from 427.8 to 360.5 MB
    /// (transunet-ddep-1x: 685.7 → 618.5, 685.7 → 615.3, 427.8 → 360.5 MB);
    /// `ddepc bench`'s peak RSS of the DeP step from 1844 to 1781 MB, no
    /// loan of spare arena missed. The recomputed kernels are 8 GFLOP of the
    /// DeP step's 712 (1.1%); in 4 pairs of runs alternating which artifact
    /// went first, the DeP step moved −8.6% to +7.5% (mean −0.3%), the
    /// recomputed convolutions taking 5–22 ms more (Zen 5, 2 threads).
    static func computingAgainFromLaterCopies(_ original: Function) -> Function? {
        // Kernels above the cheap ones' arithmetic and within this limit.
        let types = original.types
        let kernels = original.nodes.filter { node in
            !node.type.shape.isEmpty && !recomputedFromOperands(node, types: types, kernelLimit: cheapFlopsPerElement)
                && recomputedFromOperands(node, types: types, kernelLimit: laterCopiesFlopsPerElement)
        }
        guard !kernels.isEmpty else { return nil }
        // A copy made here equals its original, and the readers it rewrites
        // read equal values: the classes stay as they are.
        var canonical = canonicalValues(original)
        var function = original
        // In rounds, as the sweeps above: only values held across the peak,
        // and a round kept only if the peak drops (then it has moved).
        // Nodes before a rewritten late read keep their positions, so the
        // peak's stays valid through a round.
        while true {
            let peak = PlanMemory.liveness(of: function).peak
            var round = function
            var schedule = Schedule(round)
            for kernel in kernels {
                guard let rewritten = computingAgainFromLaterCopies(kernel.id, in: round, schedule: schedule, across: peak.position,
                                                                    canonical: &canonical) else { continue }
                round = rewritten
                schedule = Schedule(round)
            }
            guard round.nodes.count > function.nodes.count, PlanMemory.liveness(of: round).peak.bytes < peak.bytes else { break }
            function = round
        }
        return function.nodes.count > original.nodes.count ? function : nil
    }

    /// `function` with the late readers of kernel `id`'s result (or of a
    /// reshape of it) reading it computed again from later copies of its
    /// dead operands, moved up; nil where that does not apply or the value
    /// is not held across position `peak`.
    static func computingAgainFromLaterCopies(_ id: ValueID, in function: Function, schedule: Schedule, across peak: Int,
                                              canonical: inout [ValueID: ValueID]) -> Function? {
        guard let position = schedule.position[id] else { return nil }
        let kernel = function.nodes[position]
        // Where the value and its aliases are read (a reshape, read later,
        // is an alias): the late readers come after the longest stretch
        // without one.
        var aliases: Set<ValueID> = [id], readers: [Int] = []
        var pending = [id]
        while let value = pending.popLast() {
            for p in schedule.uses[value] ?? [] {
                readers.append(p)
                let reader = function.nodes[p].id
                if schedule.root[reader] == id, aliases.insert(reader).inserted { pending.append(reader) }
            }
        }
        guard !aliases.contains(where: schedule.results.contains) else { return nil }
        readers.sort()
        var from = 0, at = 0
        for (before, after) in zip([position] + readers, readers) where after - before > at - from {
            (from, at) = (before, after)
        }
        guard from < peak, peak < at else { return nil }

        // Each dead operand from its earliest copy after `at`, whose producers
        // there move up to `at` with it.
        var operands = kernel.operands
        var moved = Set<Int>() // positions
        for (index, operand) in kernel.operands.enumerated() {
            let root = schedule.root[operand] ?? operand
            // An argument an update overwrites by then holds its new value.
            if let overwrite = schedule.overwrittenAt[root], overwrite <= at { return nil }
            if schedule.arguments.contains(root) || (schedule.lastUse[root] ?? 0) >= at { continue }
            guard let copy = function.nodes[at...].first(where: { $0.id != operand && canonical[$0.id] == canonical[operand] }) else {
                return nil
            }
            operands[index] = copy.id
            var pending = [copy.id]
            while let next = pending.popLast() {
                guard let p = schedule.position[next], p >= at, moved.insert(p).inserted else { continue }
                pending += function.nodes[p].operands
            }
        }
        // (A copy computed from the kernel's own result cannot move above it.)
        guard !moved.isEmpty, moved.isDisjoint(with: readers) else { return nil }

        var nextID = function.nextID
        var inserted: [Node] = []
        var replacement: [ValueID: ValueID] = [:]
        /// The copy of `value` (the kernel, or an alias of it) reading the kernel computed again.
        func copy(of value: ValueID) -> ValueID {
            if let done = replacement[value] { return done }
            var node = function.nodes[schedule.position[value]!]
            node.operands = value == id ? operands : node.operands.map { aliases.contains($0) ? copy(of: $0) : $0 }
            node.id = nextID
            nextID += 1
            node.arenaOffset = nil
            node.inPlaceOf = nil
            node.attrs[FusedConvOps.momentsKey] = nil // as in `recomputingLateUses`
            inserted.append(node)
            canonical[node.id] = canonical[value]
            replacement[value] = node.id
            return node.id
        }
        var result = function
        for p in readers where p >= at {
            result.nodes[p].operands = result.nodes[p].operands.map { operand in
                aliases.contains(operand) && schedule.position[operand]! < at ? copy(of: operand) : operand
            }
        }
        let hoisted = moved.sorted().map { result.nodes[$0] }
        result.nodes = Array(result.nodes[..<at]) + hoisted + inserted
            + result.nodes[at...].enumerated().filter { !moved.contains(at + $0.offset) }.map(\.element)
        return result
    }

    /// Each value's first equal: the node of the same op, attributes, type
    /// and (equal) operands computed first (CSE's key, without merging). A
    /// copy rematerialize made is equal to its original.
    static func canonicalValues(_ function: Function) -> [ValueID: ValueID] {
        var canonical: [ValueID: ValueID] = [:], first: [CSE.Key: ValueID] = [:]
        for node in function.nodes {
            let key = CSE.Key(op: node.op, operands: node.operands.map { canonical[$0] ?? $0 }, attrs: node.attrs, type: node.type)
            canonical[node.id] = first[key] ?? node.id
            if first[key] == nil { first[key] = node.id }
        }
        return canonical
    }

    /// The longest stretch of the schedule in which nothing reads `value`
    /// (between its definition or a use and the next use): `split` indexes
    /// the use that ends it. Nil when the value has no use or no stretch.
    ///
    /// Splitting instead at the stretch that holds the peak (a decoder's skip
    /// feature is read in the forward pass, just after the turn and at the
    /// very end) took TransUNet's DeP arena from 534.8 to 524.8 MB, but not
    /// its process: the peak moved to the decoder's weight gradients, whose
    /// Winograd blocks then missed their loans of spare arena and came from
    /// the heap (peak RSS 1847.8 → 1862.4 MB). The peak counts planned
    /// buffers only; a change that moves it must count the loans too.
    static func longestStretch(of value: ValueID, in schedule: Schedule) -> (after: Int, before: Int, split: Int)? {
        guard let definition = schedule.position[value], let uses = schedule.uses[value], !uses.isEmpty else { return nil }
        var split = 0, longest = uses[0] - definition
        for i in uses.indices.dropFirst() where uses[i] - uses[i - 1] > longest {
            longest = uses[i] - uses[i - 1]
            split = i
        }
        guard longest > 1 else { return nil }
        return (split == 0 ? definition : uses[split - 1], uses[split], split)
    }

    /// Data movement (`OpSpec.rematerializable`), or a node computed again
    /// from its operands in a pass or a few (`recomputedFromOperands`) whose
    /// operands are held at least as long as its result anyway (or are
    /// arguments, or [C]-sized vectors, or are themselves computed so from
    /// held operands): computing it again late holds nothing longer. A batch
    /// norm's output is one (batch-norm-from-moments makes it a loop over
    /// x − mean, which the backward pass reads last), a GELU's (its gradient
    /// reads its input), a ReLU after a group or layer norm (whose gradient
    /// reads the norm's input), attention's softmax (scaled Q·Kᵀ, whose
    /// gradient reads Q and K).
    static func isCandidate(_ node: Node, in function: Function, schedule: Schedule, types: [ValueID: TensorType],
                            kernelLimit: Double = cheapFlopsPerElement) -> Bool {
        // A scalar frees one alignment's bytes: not worth a node.
        guard let spec = OpRegistry.spec(node.op), !node.type.shape.isEmpty else { return false }
        if spec.rematerializable { return true }
        guard recomputedFromOperands(node, types: types, kernelLimit: kernelLimit), let end = schedule.lastUse[schedule.root[node.id] ?? node.id] else { return false }
        return node.operands.allSatisfy {
            available($0, at: end, for: node, depth: 2, in: function, schedule: schedule, types: types, kernelLimit: kernelLimit)
        }
    }

    /// Whether `operand` of `reader` is there anyway at `position` (an
    /// argument, a value read then or later, or a vector much smaller than
    /// the reader's result), or can be computed again from what is, through
    /// at most `depth` more producers computed from their operands.
    static func available(_ operand: ValueID, at position: Int, for reader: Node, depth: Int,
                          in function: Function, schedule: Schedule, types: [ValueID: TensorType],
                          kernelLimit: Double = cheapFlopsPerElement) -> Bool {
        let root = schedule.root[operand] ?? operand
        if schedule.arguments.contains(root) || (schedule.lastUse[root] ?? 0) >= position
            || isSmall(operand, beside: reader, types: types) { return true }
        guard depth > 0, root == operand, let index = schedule.position[operand] else { return false }
        let producer = function.nodes[index]
        guard recomputedFromOperands(producer, types: types, kernelLimit: kernelLimit) else { return false }
        return producer.operands.allSatisfy {
            available($0, at: position, for: producer, depth: depth - 1, in: function, schedule: schedule, types: types,
                      kernelLimit: kernelLimit)
        }
    }

    /// Nodes whose result is computed from their operands in a pass or a
    /// few: elementwise loops, normalizations and softmax
    /// (`OpSpec.recomputable`), and kernels doing at most
    /// `cheapFlopsPerElement` per result element (attention's Q·Kᵀ over
    /// 64-wide heads: 128; a ResNet bottleneck's 1×1 expansion from 64 or
    /// 128 channels: 128 or 256).
    static func recomputedFromOperands(_ node: Node, types: [ValueID: TensorType], kernelLimit: Double = cheapFlopsPerElement) -> Bool {
        guard let spec = OpRegistry.spec(node.op) else { return false }
        if spec.recomputable { return true }
        if case .elementwise = spec.lowering { return true }
        guard let flops = spec.flops, node.type.count > 0 else { return false }
        let operands = node.operands.compactMap { types[$0] }
        return flops(operands, node.type, node.attrs) <= kernelLimit * Double(node.type.count)
    }

    /// Arithmetic per result element below which recomputing a kernel's
    /// result costs about what the passes around it do. With each weight
    /// updated as its gradient is done (schedule-updates), TransUNet's
    /// fine-tuning peak is the turn to the backward pass: 256 recomputes ten
    /// of its ResNet's 1×1 convolutions there, 29 MB less arena for no
    /// measurable time (DeP step 1501–1650 ms either way, 3 interleaved
    /// rounds); 512 recomputes wider ones and ends higher (572 MB against
    /// 560), and 2048 cost 17–25% of the step.
    static let cheapFlopsPerElement = 256.0

    /// Arithmetic per result element a copy may recompute to bring a step
    /// within `memoryBudget`: a transformer's 768-wide projections (1536),
    /// a ResNet's 3×3 convolutions over 64 channels (1152), not its wider
    /// ones. Without a budget TransUNet's fine-tuning arena was 557 MB;
    /// recomputing what this allows wherever it lowers the peak gave 366 MB
    /// for 11–18% of the step's time (3 interleaved rounds).
    static let budgetFlopsPerElement = 1536.0

    /// Peak bytes a copy must free per FLOP it recomputes above
    /// `cheapFlopsPerElement`: 1 MB per GFLOP (about 2 ms of a step here).
    static let minimumBytesFreedPerFlop = 1e-3

    /// An operand this many times smaller than the result is "small": a
    /// per-channel vector of a feature map, held a little longer for free.
    static let smallOperandRatio = 64

    static func isSmall(_ operand: ValueID, beside reader: Node, types: [ValueID: TensorType]) -> Bool {
        types[operand].map { $0.byteSize * smallOperandRatio <= reader.type.byteSize } ?? false
    }

    struct Trial {
        var function: Function
        var copies: [ValueID]
        var copyTypes: [TensorType]
        /// The arithmetic of the copies' kernels above `cheapFlopsPerElement`
        /// (`OpSpec.flops`).
        var flops: Double
    }

    /// `function` with the uses of `value` after its longest unused stretch
    /// reading a copy made just before them, or nil when the value cannot be
    /// copied (a result of the function, itself or through a reshape, or reading an
    /// argument an update overwrites before the late use).
    func recomputingLateUses(of value: ValueID, in function: Function, schedule givenSchedule: Schedule? = nil,
                             types givenTypes: [ValueID: TensorType]? = nil, policy: ChainPolicy = .heldOperands,
                             kernelLimit: Double = cheapFlopsPerElement) -> Trial? {
        let schedule = givenSchedule ?? Schedule(function), types = givenTypes ?? function.types
        // A reshape reading the value is a use too: late, it reads the copy,
        // and so do the nodes reading it (all later still). It shares the
        // value's storage, so neither may be a result.
        guard !schedule.results.contains(where: { (schedule.root[$0] ?? $0) == value }),
              let (_, at, split) = Self.longestStretch(of: value, in: schedule),
              let uses = schedule.uses[value] else { return nil }

        var nextID = function.nextID
        var inserted: [Node] = []
        /// Whether a copy computes a dead operand's producer again (else it
        /// holds the operand longer): data movement and normalizations
        /// always; elementwise loops and cheap kernels as the policy says,
        /// under `.heldOperands` only where their own operands are there at
        /// `at` anyway or computed so in turn, so that copying one holds
        /// nothing longer.
        func recomputes(_ producer: Node) -> Bool {
            guard let spec = OpRegistry.spec(producer.op) else { return false }
            if spec.rematerializable || spec.recomputable { return true }
            guard Self.recomputedFromOperands(producer, types: types, kernelLimit: kernelLimit) else { return false }
            if policy == .throughLoops { return true }
            return producer.operands.allSatisfy {
                Self.available($0, at: at, for: producer, depth: 1, in: function, schedule: schedule, types: types,
                               kernelLimit: kernelLimit)
            }
        }
        /// A copy of `id`'s node placed before `at`, its operands copied in
        /// turn where they would be dead there.
        func copy(_ id: ValueID, depth: Int) -> ValueID? {
            var node = function.nodes[schedule.position[id]!]
            for (index, operand) in node.operands.enumerated() {
                let root = schedule.root[operand] ?? operand
                if let overwrite = schedule.overwrittenAt[root], overwrite <= at { return nil }
                guard !schedule.arguments.contains(root), (schedule.lastUse[root] ?? 0) < at,
                      !Self.isSmall(operand, beside: node, types: types),
                      depth + 1 < Self.maximumChain, root == operand, let position = schedule.position[operand],
                      recomputes(function.nodes[position]) else { continue }
                guard let recomputed = copy(operand, depth: depth + 1) else { return nil }
                node.operands[index] = recomputed
            }
            node.id = nextID
            nextID += 1
            node.arenaOffset = nil
            node.inPlaceOf = nil
            // The original gathers its batch moments (a recompiled .ddir's); the copy need not.
            node.attrs[FusedConvOps.momentsKey] = nil
            inserted.append(node)
            return node.id
        }
        guard let replacement = copy(value, depth: 0) else { return nil }

        var result = function
        for position in uses[split...] {
            result.nodes[position].operands = result.nodes[position].operands.map { $0 == value ? replacement : $0 }
        }
        result.nodes.insert(contentsOf: inserted, at: at)
        // A copy's operands are the step's values or earlier copies (at most
        // `maximumChain`): looked up there, not in a copy of every type.
        func type(of value: ValueID) -> TensorType { inserted.first { $0.id == value }?.type ?? types[value]! }
        let flops = inserted.reduce(0.0) { sum, node in
            guard let rule = OpRegistry.spec(node.op)?.flops else { return sum }
            let flops = rule(node.operands.map(type), node.type, node.attrs)
            return flops > Self.cheapFlopsPerElement * Double(node.type.count) ? sum + flops : sum
        }
        return Trial(function: result, copies: inserted.map(\.id), copyTypes: inserted.map(\.type), flops: flops)
    }
}

/// Positions, uses and storage of a function's values: a buffer is live
/// from its definition to its last use (results to the end), aliases share
/// their operand's bytes, and arguments take none. (Its peak of live bytes
/// is plan-memory's, `PlanMemory.liveness`.) Rematerialize builds one after
/// every copy it tries, so its maps are arrays indexed by value id (ids are
/// dense): hashing each id was most of the pass's time.
struct Schedule {
    var position: ValueMap<Int>
    /// Positions of the nodes reading each value, ascending.
    var uses: ValueMap<[Int]>
    var root: ValueMap<ValueID>
    /// Last position reading each storage root; the end for results.
    var lastUse: ValueMap<Int>
    var arguments: Set<ValueID>
    /// Arguments an update may overwrite during the call, and where: the
    /// position of the update's value (plan-memory computes it in place
    /// there when it is the argument's last reader); a copy placed after it
    /// would read the new value.
    var overwrittenAt: [ValueID: Int] = [:]
    /// Values the function returns or updates with.
    var results: Set<ValueID>

    init(_ function: Function) {
        arguments = Set(function.args.map(\.id))
        let roots = InPlaceAnalysis.storageRootTable(function)
        let capacity = roots.count
        root = ValueMap(roots.map { $0 < 0 ? nil : $0 })
        results = Set(function.rootValues)
        position = ValueMap(capacity: capacity)
        uses = ValueMap(capacity: capacity)
        lastUse = ValueMap(capacity: capacity)
        // By index: a loop over the nodes would copy each (retaining all of
        // its parts).
        for index in function.nodes.indices {
            let id = function.nodes[index].id
            position[id] = index
            let storage = roots[id]
            lastUse[storage] = max(lastUse[storage] ?? index, index)
            for operand in function.nodes[index].operands {
                if uses[operand]?.last != index { uses.append(index, to: operand) }
                let storage = roots[operand]
                lastUse[storage] = max(lastUse[storage] ?? index, index)
            }
        }
        for value in results { lastUse[root[value] ?? value] = function.nodes.count }
        for update in function.updates {
            overwrittenAt[update.target] = position[root[update.value] ?? update.value] ?? function.nodes.count
        }
    }
}

/// Values by id in an array: nil where an id has none.
struct ValueMap<Element> {
    private var slots: [Element?]

    init(capacity: Int) { slots = Array(repeating: nil, count: capacity) }
    init(_ slots: [Element?]) { self.slots = slots }

    subscript(id: ValueID) -> Element? {
        get { id >= 0 && id < slots.count ? slots[id] : nil }
        set {
            if id >= slots.count { slots += repeatElement(nil, count: id + 1 - slots.count) }
            slots[id] = newValue
        }
    }
}

extension ValueMap where Element == [Int] {
    mutating func append(_ position: Int, to id: ValueID) {
        if id >= slots.count { slots += repeatElement(nil, count: id + 1 - slots.count) }
        if slots[id] == nil { slots[id] = [position] } else { slots[id]!.append(position) }
    }
}
