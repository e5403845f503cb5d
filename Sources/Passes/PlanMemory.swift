import ABI
import IR

/// Liveness-based placement of every activation in one arena. Each value
/// is a buffer at a 64-byte-aligned offset, live from its definition to its
/// last use; reshapes share their operand's bytes. Buffers are placed three
/// ways (first fit in schedule order, largest first into the tightest gap,
/// the fullest positions' buffers first) and the smallest arena is kept. The
/// result is
/// recorded in the IR (`@offset` per node, `arena N` per function) and as a
/// report whose lower bound (the largest set of simultaneously live bytes)
/// makes the planner's efficiency a number. The scratch a kernel borrows
/// for its call (`KernelCall.scratchFloats`) is a buffer live at that node
/// only (`scratch @offset` in the dump). Kernels that also ask for
/// per-thread scratch (`KernelCall.threadScratch`, sized by the ISA and the
/// thread count at run time) are lent the largest stretch of the arena
/// that nothing holds during their call (`spare @offset size bytes`): it
/// costs no arena, and the process keeps no heap blocks for what fits.
///
/// An update that can overwrite its argument (`InPlaceAnalysis`: an
/// optimizer step's new weights and moments, running statistics) is placed
/// there (`@%arg`) and takes no arena bytes: nothing is held twice or copied
/// back after the call. A node that may write its result over an operand
/// (`InPlaceAnalysis.overwritableOperands`: a batch norm, an elementwise
/// loop) takes that operand's bytes when nothing reads the operand
/// afterwards.
public struct PlanMemory: Pass {
    public static let name = "plan-memory"
    public static let alignment = ArenaCheck.alignment

    public init() {}

    public struct Report: CustomStringConvertible {
        public var function: String
        public var arenaBytes: Int
        public var lowerBoundBytes: Int
        /// Updates computed in place of their argument, and their bytes.
        public var inPlaceUpdates = 0
        public var inPlaceBytes = 0
        /// What is live at the peak, by producing op, largest first: where
        /// the memory goes, and what rematerialize or a budget could free.
        public var heldAtPeak: [HeldValues] = []
        public var efficiency: Double { arenaBytes == 0 ? 1 : Double(lowerBoundBytes) / Double(arenaBytes) }
        public var description: String {
            "@\(function): arena \(arenaBytes) bytes, lower bound \(lowerBoundBytes) bytes (\(Int((efficiency * 100).rounded()))%)"
                + (inPlaceUpdates > 0 ? ", \(inPlaceUpdates) updates in place (\(inPlaceBytes) bytes)" : "")
                + (heldAtPeak.isEmpty ? "" : "; at the peak: " + heldAtPeak.prefix(6).map(\.description).joined(separator: ", "))
        }
    }

    /// Values of one kind live at a function's peak: the op that produced
    /// them (for kernel scratch, "scratch of" it), how many, and their bytes.
    public struct HeldValues: CustomStringConvertible {
        public var producer: String
        public var count: Int
        public var bytes: Int
        public var description: String {
            "\(producer) \(ByteCount.text(Double(bytes))) (\(count))"
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
        let live = Self.liveness(of: function)
        let buffers = live.buffers
        let (offsets, peak) = Self.placement(live)
        for n in function.nodes.indices {
            let id = function.nodes[n].id
            function.nodes[n].arenaOffset = live.bufferOf[live.root[id]].map { offsets[$0] }
            function.nodes[n].inPlaceOf = live.inPlace[id]
            function.nodes[n].scratchOffset = live.scratchOf[id].map { offsets[$0] }
            function.nodes[n].spare = nil // a recompiled module's, planned for another arena
        }
        for (n, spare, scratchOffset) in Self.spares(function, buffers: buffers, offsets: offsets, scratchOf: live.scratchOf, arena: peak) {
            function.nodes[n].spare = spare
            if let scratchOffset { function.nodes[n].scratchOffset = scratchOffset }
        }
        function.arenaBytes = peak
        return Self.report(function, live: live)
    }

    /// The arena `plan` gives `function`, without writing its placement
    /// (rematerialize judges each function's copies by it).
    static func arenaBytes(of function: Function) -> Int {
        placement(liveness(of: function)).arena
    }

    /// Three placements, the smallest kept (the first on a tie): first fit
    /// in schedule order, largest first into the tightest gap (which packs
    /// a training step's mix of large and small buffers closer to the lower
    /// bound), and the fullest positions' buffers first (which does better
    /// where recomputed values leave many short gaps); then a search when
    /// none reaches the lower bound.
    static func placement(_ live: Liveness) -> (offsets: [Int], arena: Int) {
        let buffers = live.buffers
        let best = [placeInScheduleOrder(buffers), placeLargestFirst(buffers), placeFullestFirst(buffers)].min { $0.arena < $1.arena }!
        guard best.arena > live.peak.bytes else { return best }
        return searchLargestFirst(buffers, lowerBound: live.peak.bytes, best: best)
    }

    /// The report of a function this pass planned, without placing it again.
    public static func report(of function: Function) -> Report {
        report(function, live: liveness(of: function))
    }

    static func report(_ function: Function, live: Liveness) -> Report {
        var report = Report(function: function.name, arenaBytes: function.arenaBytes ?? 0, lowerBoundBytes: live.peak.bytes)
        report.inPlaceUpdates = live.inPlace.count
        let types = function.types
        report.inPlaceBytes = live.inPlace.keys.reduce(0) { $0 + types[$1]!.byteSize }
        report.heldAtPeak = Self.heldAtPeak(function, live: live)
        return report
    }

    /// The buffers live at the peak, grouped by what produced them.
    static func heldAtPeak(_ function: Function, live: Liveness) -> [HeldValues] {
        let ops = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0.op) })
        var groups: [String: HeldValues] = [:]
        for buffer in live.buffers where buffer.first <= live.peak.position && live.peak.position <= buffer.last {
            guard let value = buffer.value, let op = ops[value] else { continue }
            let producer = buffer.scratch ? "scratch of " + op : op
            groups[producer, default: HeldValues(producer: producer, count: 0, bytes: 0)].count += 1
            groups[producer]!.bytes += buffer.size
        }
        return groups.values.sorted { ($0.bytes, $1.producer) > ($1.bytes, $0.producer) }
    }

    /// The buffers a function's values need before placement, and their peak.
    struct Liveness {
        var buffers: [Buffer]
        /// The buffer of each storage root in the arena.
        var bufferOf: [ValueID: Int]
        /// Updates computed over their argument, which take no buffer.
        var inPlace: [ValueID: ValueID]
        /// The buffer of the scratch each node's kernels borrow during its call.
        var scratchOf: [ValueID: Int]
        /// The storage root of each value id (`InPlaceAnalysis.rootTable`).
        var root: [ValueID]
        /// The largest sum of buffers live at one position (the lower bound
        /// of any placement), and the first position where it is reached.
        var peak: (bytes: Int, position: Int)
    }

    /// One buffer per storage root in the arena, live from its definition to
    /// its last use, with updates computed over their arguments and nodes
    /// over the operands they may overwrite. rematerialize counts its peak
    /// with this too, so it judges a copy by what plan-memory will do.
    static func liveness(of function: Function) -> Liveness {
        // Tables by value id (ids are dense): rematerialize counts the peak
        // after each batch of copies it tries, and hashing every id was most
        // of that count.
        let analysis = InPlaceAnalysis(function)
        let root = analysis.rootTable
        var isArgument = [Bool](repeating: false, count: root.count)
        for arg in function.args { isArgument[arg.id] = true }
        // Updates that can overwrite their argument need no arena bytes.
        var inPlace: [ValueID: ValueID] = [:]
        for update in function.updates {
            guard let index = analysis.position(of: update.value), root[update.value] == update.value else { continue }
            if analysis.problem(placing: function.nodes[index], over: update.target) == nil {
                inPlace[update.value] = update.target
            }
        }
        // Last use (schedule position) of each arena-resident root; −1: none.
        let end = function.nodes.count
        var lastUse = [Int](repeating: -1, count: root.count)
        for position in function.nodes.indices { // by index: no copy of each node
            let id = function.nodes[position].id
            lastUse[root[id]] = max(lastUse[root[id]], position)
            for operand in function.nodes[position].operands where !isArgument[operand] {
                lastUse[root[operand]] = position
            }
        }
        for value in function.rootValues where !isArgument[value] { lastUse[root[value]] = end }
        // A loop group reads every operand and writes every result once per
        // element, all in one loop: nothing one member touches may be reused
        // before the group's last member (a later member's result placed
        // over an earlier one's operand would overwrite elements not read yet).
        for run in LoopGroups.runs(function) {
            let last = run.upperBound - 1
            for position in run {
                for value in function.nodes[position].operands + [function.nodes[position].id] where !isArgument[value] {
                    lastUse[root[value]] = max(lastUse[root[value]], last)
                }
            }
        }

        // One buffer per storage root in the arena, live from its definition
        // to its last use. A node that may write its result over an operand
        // (a batch norm, an elementwise loop) joins that operand's buffer
        // when it reads it last.
        let types = function.types
        var buffers: [Buffer] = []
        var bufferOf: [ValueID: Int] = [:]
        var scratchOf: [ValueID: Int] = [:]
        for position in function.nodes.indices {
            let node = function.nodes[position]
            if root[node.id] == node.id && inPlace[node.id] == nil {
                let size = Self.aligned(max(node.type.byteSize, 1))
                let last = lastUse[node.id] >= 0 ? lastUse[node.id] : position
                if let b = Self.overwritable(node, at: position, size: size, types: types, buffers: buffers, bufferOf: bufferOf,
                                             root: root, lastUse: lastUse, isArgument: isArgument) {
                    buffers[b].last = last
                    bufferOf[node.id] = b
                } else {
                    // Moments a convolution's epilogue gathers are written during its call.
                    let first = BatchMomentsOps.isWrittenByProducer(node) ? position - 1 : position
                    bufferOf[node.id] = buffers.count
                    buffers.append(Buffer(size: size, first: first, last: last, value: node.id))
                }
            }
            // Kernel scratch, live during the node's call only.
            let scratch = OpRegistry.spec(node.op)?.kernelScratchFloats(operands: node.operands.map { types[$0]! }, result: node.type,
                                                                        attrs: node.attrs) ?? 0
            if scratch > 0 {
                scratchOf[node.id] = buffers.count
                buffers.append(Buffer(size: Self.aligned(scratch * 4), first: position, last: position, value: node.id, scratch: true))
            }
        }
        var change = [Int](repeating: 0, count: end + 2)
        for buffer in buffers {
            change[buffer.first] += buffer.size
            change[buffer.last + 1] -= buffer.size
        }
        var liveBytes = 0, peak = (bytes: 0, position: 0)
        for (position, delta) in change.enumerated() {
            liveBytes += delta
            if liveBytes > peak.bytes { peak = (liveBytes, position) }
        }
        return Liveness(buffers: buffers, bufferOf: bufferOf, inPlace: inPlace, scratchOf: scratchOf, root: root, peak: peak)
    }

    /// Smallest spare region worth lending: a GEMM's packing space on one
    /// thread is about this much.
    static let smallestSpare = 256 << 10

    /// For each node whose kernels borrow per-thread scratch, the largest
    /// free stretch of the arena while it runs (none below `smallestSpare`).
    /// Its planned scratch, live at that position only, moves to where it
    /// leaves the largest stretch free (the same arena either way): a
    /// Winograd step's transformed filters, 39 MB in TransUNet's decoder,
    /// otherwise split the only stretch its blocks would fit.
    static func spares(_ function: Function, buffers: [Buffer], offsets: [Int], scratchOf: [ValueID: Int], arena: Int)
        -> [(node: Int, spare: Range<Int>?, scratchOffset: Int?)] {
        var types = function.types
        var result: [(node: Int, spare: Range<Int>?, scratchOffset: Int?)] = []
        for (position, node) in function.nodes.enumerated() {
            let operands = node.operands.map { types[$0]! }
            types[node.id] = node.type
            guard OpRegistry.spec(node.op)?.kernelsBorrowThreadScratch(operands: operands, result: node.type, attrs: node.attrs) == true
            else { continue }
            let scratch = scratchOf[node.id]
            let held = buffers.indices.filter { $0 != scratch && buffers[$0].first <= position && position <= buffers[$0].last }
                .map { offsets[$0] ..< offsets[$0] + buffers[$0].size }
                .sorted { $0.lowerBound < $1.lowerBound }
            var gaps: [Range<Int>] = [], free = 0
            for range in held + [arena ..< arena] {
                if range.lowerBound > free { gaps.append(free ..< range.lowerBound) }
                free = max(free, range.upperBound)
            }
            var scratchOffset: Int?
            if let scratch {
                // At the start of the tightest gap it fits: that leaves the
                // largest stretch free (a larger gap is either kept whole or
                // was the only one it fits).
                let size = buffers[scratch].size
                guard let best = gaps.indices.filter({ gaps[$0].count >= size }).min(by: { gaps[$0].count < gaps[$1].count })
                else { continue } // never: the place plan-memory gave it is one of the gaps
                scratchOffset = gaps[best].lowerBound
                gaps[best] = gaps[best].lowerBound + size ..< gaps[best].upperBound
            }
            let largest = gaps.max { $0.count < $1.count }.flatMap { $0.count >= smallestSpare ? $0 : nil }
            if largest != nil || scratchOffset != nil { result.append((position, largest, scratchOffset)) }
        }
        return result
    }

    /// A buffer of the arena: its size (aligned) and the schedule positions
    /// it is live at, [first, last].
    struct Buffer {
        var size: Int
        var first: Int
        var last: Int
        /// The value that made it (the first, when others write over it),
        /// or the node whose kernel scratch it is.
        var value: ValueID? = nil
        var scratch = false
        func overlaps(_ other: Buffer) -> Bool { first <= other.last && other.first <= last }
    }

    /// The buffer `node` may write its result over: that of the first
    /// operand it may overwrite (`InPlaceAnalysis.overwritableOperands`), in
    /// the arena, of the result's size and read by nothing after this node.
    static func overwritable(_ node: Node, at position: Int, size: Int, types: [ValueID: TensorType], buffers: [Buffer],
                             bufferOf: [ValueID: Int], root: [ValueID], lastUse: [Int], isArgument: [Bool]) -> Int? {
        for k in InPlaceAnalysis.overwritableOperands(of: node, types: types) {
            let operand = node.operands[k]
            guard !isArgument[operand], root[operand] == operand, lastUse[operand] == position,
                  let b = bufferOf[operand], buffers[b].last == position, buffers[b].size == size else { continue }
            return b
        }
        return nil
    }

    /// First fit in schedule order: each buffer at the lowest offset free of
    /// the buffers live when it is defined.
    static func placeInScheduleOrder(_ buffers: [Buffer]) -> (offsets: [Int], arena: Int) {
        var offsets = [Int](repeating: 0, count: buffers.count), arena = 0
        var live: [Int] = [] // buffer indices, by offset
        for (b, buffer) in buffers.enumerated() {
            live.removeAll { buffers[$0].last < buffer.first }
            var candidate = 0, insertAt = live.count
            for (index, other) in live.enumerated() {
                if offsets[other] - candidate >= buffer.size {
                    insertAt = index
                    break
                }
                candidate = max(candidate, offsets[other] + buffers[other].size)
            }
            live.insert(b, at: insertAt)
            offsets[b] = candidate
            arena = max(arena, candidate + buffer.size)
        }
        return (offsets, arena)
    }

    /// Largest first, each into the smallest gap between the buffers placed
    /// so far that it overlaps in time (the greedy-by-size strategy of
    /// TensorFlow Lite's arena planner), else above them.
    static func placeLargestFirst(_ buffers: [Buffer]) -> (offsets: [Int], arena: Int) {
        placeBestFit(buffers, order: largestFirst(buffers))
    }

    /// Buffer indices by size, the larger first (then by definition).
    static func largestFirst(_ buffers: [Buffer]) -> [Int] {
        buffers.indices.sorted { (buffers[$0].size, buffers[$1].first, $1) > (buffers[$1].size, buffers[$0].first, $0) }
    }

    /// The buffers live where the most bytes are first, largest first among
    /// them, then those of the next fullest position, each into the smallest
    /// gap (TensorFlow Lite's greedy-by-breadth): the fullest positions,
    /// which set the lower bound, are packed before anything fragments them.
    static func placeFullestFirst(_ buffers: [Buffer]) -> (offsets: [Int], arena: Int) {
        let end = buffers.map(\.last).max() ?? 0
        var change = [Int](repeating: 0, count: end + 2)
        for buffer in buffers {
            change[buffer.first] += buffer.size
            change[buffer.last + 1] -= buffer.size
        }
        var live = [Int](repeating: 0, count: end + 1), bytes = 0
        for position in 0...end {
            bytes += change[position]
            live[position] = bytes
        }
        let breadth = buffers.map { live[$0.first...$0.last].max()! }
        return placeBestFit(buffers, order: buffers.indices.sorted {
            (breadth[$0], buffers[$0].size, buffers[$1].first, $1) > (breadth[$1], buffers[$1].size, buffers[$0].first, $0)
        })
    }

    /// Orders of the largest-first placement searched for one that reaches
    /// the lower bound, when the three above miss it.
    static let searchOrders = 48

    /// Largest first again, with a few of the large buffers (each at least a
    /// sixteenth of the lower bound) swapped in its order, for up to
    /// `searchOrders` orders drawn from a counter (`RandomOps.mix`: the same
    /// artifact on every compile), keeping the smallest arena and stopping at the lower
    /// bound. A greedy placement misses it when an early choice splits the
    /// space a later group of large buffers needs: transunet-ddep-1x's
    /// training steps, where a Winograd input gradient now writes over the
    /// ReLU gate it reads, took 735.5 MB against a bound of 709.8, with a
    /// 25.7 MB hole beside the 102.8 MB upsampled input of the last block's
    /// weight gradient; a few orders in, the search packs it at the bound.
    static func searchLargestFirst(_ buffers: [Buffer], lowerBound: Int, best start: (offsets: [Int], arena: Int))
        -> (offsets: [Int], arena: Int) {
        let largest = largestFirst(buffers)
        let large = largest.filter { buffers[$0].size * 16 >= lowerBound }, rest = largest.filter { buffers[$0].size * 16 < lowerBound }
        guard large.count > 1 else { return start }
        var best = start
        var draws: UInt64 = 0
        func next() -> Int {
            draws += 1
            return Int(truncatingIfNeeded: RandomOps.mix(draws) >> 1)
        }
        for _ in 0..<searchOrders where best.arena > lowerBound {
            var order = large
            for _ in 0..<(1 + next() % 4) { order.swapAt(next() % order.count, next() % order.count) }
            let placed = placeBestFit(buffers, order: order + rest)
            if placed.arena < best.arena { best = placed }
        }
        return best
    }

    /// Places buffers in `order`, each into the smallest gap between the
    /// buffers placed so far that it overlaps in time, else above them.
    ///
    /// The placed buffers are kept by offset as plain integers: this scan,
    /// over every placed buffer for each new one, runs for each order the
    /// search tries and for each arena rematerialize judges, and was the
    /// largest part of TransUNet's compile.
    static func placeBestFit(_ buffers: [Buffer], order: [Int]) -> (offsets: [Int], arena: Int) {
        struct Placed {
            var start, end: Int // bytes
            var first, last: Int // schedule positions
        }
        var offsets = [Int](repeating: 0, count: buffers.count), arena = 0
        var placed: [Placed] = [] // by offset
        placed.reserveCapacity(buffers.count)
        for b in order {
            let buffer = buffers[b]
            var candidate = 0, bestOffset = -1, bestGap = Int.max
            for other in placed where other.first <= buffer.last && buffer.first <= other.last {
                let gap = other.start - candidate
                if gap >= buffer.size, gap < bestGap {
                    bestOffset = candidate
                    bestGap = gap
                }
                candidate = max(candidate, other.end)
            }
            let offset = bestOffset >= 0 ? bestOffset : candidate
            offsets[b] = offset
            // After the placed buffers at or below this offset.
            var low = 0, high = placed.count
            while low < high {
                let middle = (low + high) / 2
                if placed[middle].start > offset { high = middle } else { low = middle + 1 }
            }
            placed.insert(Placed(start: offset, end: offset + buffer.size, first: buffer.first, last: buffer.last), at: low)
            arena = max(arena, offset + buffer.size)
        }
        return (offsets, arena)
    }
}
