/// An independent check of a function's arena placement (plan-memory's
/// result, or offsets written by hand in a .ddir): liveness over the
/// schedule, no two simultaneously live buffers overlapping (a kernel's
/// borrowed scratch is live during its call), aliases sharing
/// their operand's storage, 64-byte alignment, and the arena against the
/// largest live set. The verifier runs it on every placed function, so a
/// planner error stops the pipeline instead of corrupting a step.
public struct ArenaCheck {
    /// Every arena buffer starts at a multiple of this (a cache line, and
    /// the widest vector load).
    public static let alignment = 64

    public var arenaBytes = 0
    /// The largest set of simultaneously live buffers, raw bytes and 64-byte-aligned sizes.
    public var largestLiveBytes = 0
    public var largestLiveAlignedBytes = 0
    /// Buffers (storage roots) placed in the arena.
    public var buffers = 0
    public var distinctOffsets = 0
    public var failures: [String] = []

    public var efficiency: Double { arenaBytes == 0 ? 1 : Double(largestLiveAlignedBytes) / Double(arenaBytes) }

    public init(_ function: Function) {
        func fail(_ text: String) { failures.append("@\(function.name): \(text)") }
        guard let arena = function.arenaBytes else {
            fail("no arena size")
            return
        }
        arenaBytes = arena
        let args = Set(function.args.map(\.id))
        let end = function.nodes.count

        // Storage root of every node: aliases (reshape) share their operand's bytes.
        var root: [ValueID: ValueID] = [:]
        func rootOf(_ id: ValueID) -> ValueID { args.contains(id) ? id : root[id]! }
        for node in function.nodes {
            if case .alias? = OpRegistry.spec(node.op)?.lowering {
                root[node.id] = rootOf(node.operands[0])
            } else {
                root[node.id] = node.id
            }
        }
        // An update written over its argument: nothing may read the argument's
        // old value after it, and it must be that argument's update. From
        // then on it lives in the argument's storage, out of the arena.
        // (The last reader of each storage first, so that a training step's
        // thousand updates do not each scan the rest of the schedule.)
        let updates = Set(function.updates)
        var lastReader: [ValueID: Int] = [:]
        for (position, node) in function.nodes.enumerated() {
            for operand in node.operands { lastReader[rootOf(operand)] = position }
        }
        for (position, node) in function.nodes.enumerated() {
            guard let target = node.inPlaceOf else { continue }
            if !updates.contains(Update(target: target, value: node.id)) {
                fail("%\(node.id) is placed over %\(target) but is not its update")
            }
            if node.type != function.args.first(where: { $0.id == target })?.type { fail("%\(node.id) is placed over %\(target) of another type") }
            guard let reader = lastReader[target], reader > position else { continue }
            for later in function.nodes[(position + 1)...] where later.operands.contains(where: { rootOf($0) == target }) {
                fail("%\(later.id) reads %\(target) after %\(node.id) overwrote it")
            }
        }
        for node in function.nodes {
            if let target = node.inPlaceOf { root[node.id] = target }
            else if let operand = node.operands.first, case .alias? = OpRegistry.spec(node.op)?.lowering { root[node.id] = rootOf(operand) }
        }
        // Live interval [definition, last use] of each arena buffer; results
        // (outputs, updates) live to the end of the call.
        var first: [ValueID: Int] = [:], last: [ValueID: Int] = [:]
        for (position, node) in function.nodes.enumerated() {
            let r = root[node.id]!
            // Moments a convolution's epilogue gathers are written during its call.
            if r == node.id { first[r] = BatchMomentsOps.isWrittenByProducer(node) ? position - 1 : position }
            last[r] = max(last[r] ?? position, position)
            for operand in node.operands where !args.contains(operand) {
                last[rootOf(operand)] = max(last[rootOf(operand)]!, position)
            }
        }
        for value in function.rootValues where !args.contains(value) { last[rootOf(value)] = end }

        // Offsets: every buffer has one, aligned, inside the arena; aliases share it.
        let nodeOffsets = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0.arenaOffset) })
        var offsets: [ValueID: Int] = [:]
        for node in function.nodes {
            let r = root[node.id]!
            if args.contains(r) {
                if node.arenaOffset != nil { fail("%\(node.id) aliases an argument but has arena offset \(node.arenaOffset!)") }
            } else if r == node.id {
                guard let offset = node.arenaOffset else {
                    fail("%\(node.id) = \(node.op) has no arena offset")
                    continue
                }
                if offset % ArenaCheck.alignment != 0 { fail("%\(node.id) is at \(offset), not 64-byte aligned") }
                if offset < 0 || offset + node.type.byteSize > arena {
                    fail("%\(node.id) [\(offset), \(offset + node.type.byteSize)) is outside the \(arena)-byte arena")
                }
                offsets[r] = offset
            } else if node.arenaOffset != nodeOffsets[r]! {
                fail("alias %\(node.id) is at \(node.arenaOffset.map(String.init) ?? "nil"), its storage %\(r) at \(nodeOffsets[r]!.map(String.init) ?? "nil")")
            }
        }
        buffers = offsets.count
        distinctOffsets = Set(offsets.values).count

        // Sweep the schedule: each new buffer against every buffer still live.
        let sizes = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0.type.byteSize) })
        func aligned(_ bytes: Int) -> Int {
            (max(bytes, 1) + ArenaCheck.alignment - 1) / ArenaCheck.alignment * ArenaCheck.alignment
        }
        let types = function.types
        var live: [(id: ValueID, last: Int, offset: Int?, size: Int)] = []
        var liveBytes = 0, liveAlignedBytes = 0
        /// Checks the buffer `node` defines at `position` against those live, and adds it.
        func define(_ node: Node, at position: Int) {
            let offset = offsets[node.id], size = sizes[node.id]!
            // A node that may write over an operand (a batch norm, an
            // elementwise loop), placed exactly there at that operand's last
            // read, takes the operand's buffer over.
            let overwritable = Set(InPlaceAnalysis.overwritableOperands(of: node, types: types).map { rootOf(node.operands[$0]) })
            if let offset, let taken = live.firstIndex(where: { overwritable.contains($0.id) && $0.last == position && $0.offset == offset }) {
                liveBytes -= live[taken].size
                liveAlignedBytes -= aligned(live[taken].size)
                live.remove(at: taken)
            }
            if let offset {
                for other in live {
                    guard let otherOffset = other.offset else { continue }
                    if offset < otherOffset + other.size && otherOffset < offset + size {
                        fail("%\(node.id) [\(offset), \(offset + size)) overlaps %\(other.id) [\(otherOffset), \(otherOffset + other.size)), live from \(first[other.id]!) to \(other.last), at \(position)")
                    }
                }
            }
            live.append((node.id, last[node.id]!, offset, size))
            liveBytes += size
            liveAlignedBytes += aligned(size)
        }
        for (position, node) in function.nodes.enumerated() where root[node.id] == node.id && !BatchMomentsOps.isWrittenByProducer(node) {
            live.removeAll { buffer in
                guard buffer.last < position else { return false }
                liveBytes -= buffer.size
                liveAlignedBytes -= aligned(buffer.size)
                return true
            }
            define(node, at: position)
            // The moments its epilogue gathers are written during its call:
            // their buffer is one it defines too.
            if position + 1 < function.nodes.count, case let next = function.nodes[position + 1],
               BatchMomentsOps.isWrittenByProducer(next), root[next.id] == next.id {
                define(next, at: position)
            }
            // The scratch its kernels borrow, live during this call only.
            let scratchBytes = 4 * (OpRegistry.spec(node.op)?.kernelScratchFloats(operands: node.operands.map { types[$0]! },
                                                                                  result: node.type, attrs: node.attrs) ?? 0)
            if let scratch = node.scratchOffset {
                if scratchBytes == 0 { fail("%\(node.id) = \(node.op) has scratch at \(scratch) but its kernels borrow none") }
                if scratch % ArenaCheck.alignment != 0 { fail("scratch of %\(node.id) is at \(scratch), not 64-byte aligned") }
                if scratch < 0 || scratch + scratchBytes > arena {
                    fail("scratch of %\(node.id) [\(scratch), \(scratch + scratchBytes)) is outside the \(arena)-byte arena")
                }
                for other in live {
                    guard let otherOffset = other.offset else { continue }
                    if scratch < otherOffset + other.size && otherOffset < scratch + scratchBytes {
                        fail("scratch of %\(node.id) [\(scratch), \(scratch + scratchBytes)) overlaps %\(other.id) [\(otherOffset), \(otherOffset + other.size)), live from \(first[other.id]!) to \(other.last), at \(position)")
                    }
                }
                largestLiveBytes = max(largestLiveBytes, liveBytes + scratchBytes)
                largestLiveAlignedBytes = max(largestLiveAlignedBytes, liveAlignedBytes + aligned(scratchBytes))
            }
            // The arena lent to its kernels' per-thread scratch: held by nothing meanwhile.
            if let spare = node.spare {
                let borrows = OpRegistry.spec(node.op)?.kernelsBorrowThreadScratch(operands: node.operands.map { types[$0]! },
                                                                                    result: node.type, attrs: node.attrs) ?? false
                if !borrows { fail("%\(node.id) = \(node.op) has a spare region but its kernels borrow no per-thread scratch") }
                if spare.lowerBound % ArenaCheck.alignment != 0 { fail("spare region of %\(node.id) is at \(spare.lowerBound), not 64-byte aligned") }
                if spare.lowerBound < 0 || spare.upperBound > arena {
                    fail("spare region of %\(node.id) [\(spare.lowerBound), \(spare.upperBound)) is outside the \(arena)-byte arena")
                }
                let scratch = node.scratchOffset.map { $0 ..< $0 + scratchBytes }
                if let scratch, scratch.overlaps(spare) {
                    fail("spare region of %\(node.id) [\(spare.lowerBound), \(spare.upperBound)) overlaps its scratch [\(scratch.lowerBound), \(scratch.upperBound))")
                }
                for other in live {
                    guard let otherOffset = other.offset, spare.overlaps(otherOffset ..< otherOffset + other.size) else { continue }
                    fail("spare region of %\(node.id) [\(spare.lowerBound), \(spare.upperBound)) overlaps %\(other.id) [\(otherOffset), \(otherOffset + other.size)), live from \(first[other.id]!) to \(other.last), at \(position)")
                }
            }
            largestLiveBytes = max(largestLiveBytes, liveBytes)
            largestLiveAlignedBytes = max(largestLiveAlignedBytes, liveAlignedBytes)
        }
        if arena < largestLiveBytes { fail("arena \(arena) is smaller than the largest live set \(largestLiveBytes)") }
    }
}
