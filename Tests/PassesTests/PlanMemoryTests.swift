import IR
@testable import Passes
import TestSupport
import XCTest

/// An independent checker of plan-memory's result: liveness over the
/// schedule, no two simultaneously live buffers overlapping, aliases sharing
/// their operand's storage, 64-byte alignment, and the arena against the
/// largest live set.
struct PlanCheck {
    var arenaBytes = 0
    /// The largest set of simultaneously live buffers, raw bytes and 64-byte-aligned sizes.
    var largestLiveBytes = 0
    var largestLiveAlignedBytes = 0
    /// Buffers (storage roots) placed in the arena.
    var buffers = 0
    var distinctOffsets = 0
    var failures: [String] = []

    var efficiency: Double { arenaBytes == 0 ? 1 : Double(largestLiveAlignedBytes) / Double(arenaBytes) }

    init(_ function: Function) {
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
        for (position, node) in function.nodes.enumerated() {
            guard let target = node.inPlaceOf else { continue }
            if !function.updates.contains(Update(target: target, value: node.id)) {
                fail("%\(node.id) is placed over %\(target) but is not its update")
            }
            if node.type != function.args.first(where: { $0.id == target })?.type { fail("%\(node.id) is placed over %\(target) of another type") }
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
            if r == node.id { first[r] = position }
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
                if offset % PlanMemory.alignment != 0 { fail("%\(node.id) is at \(offset), not 64-byte aligned") }
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
            (max(bytes, 1) + PlanMemory.alignment - 1) / PlanMemory.alignment * PlanMemory.alignment
        }
        var live: [(id: ValueID, last: Int, offset: Int?, size: Int)] = []
        var liveBytes = 0, liveAlignedBytes = 0
        for (position, node) in function.nodes.enumerated() where root[node.id] == node.id {
            live.removeAll { buffer in
                guard buffer.last < position else { return false }
                liveBytes -= buffer.size
                liveAlignedBytes -= aligned(buffer.size)
                return true
            }
            let offset = offsets[node.id], size = sizes[node.id]!
            // A node its spec lets write over an operand, placed exactly there
            // at that operand's last read, takes the operand's buffer over.
            if let k = OpRegistry.spec(node.op)?.overwritesOperand, k < node.operands.count, let offset,
               let taken = live.firstIndex(where: { $0.id == rootOf(node.operands[k]) && $0.last == position && $0.offset == offset }) {
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
            largestLiveBytes = max(largestLiveBytes, liveBytes)
            largestLiveAlignedBytes = max(largestLiveAlignedBytes, liveAlignedBytes)
        }
        if arena < largestLiveBytes { fail("arena \(arena) is smaller than the largest live set \(largestLiveBytes)") }
    }
}

final class PlanMemoryTests: XCTestCase {
    @discardableResult
    func plan(_ source: String, file: StaticString = #filePath, line: UInt = #line) throws -> (Function, PlanCheck, PlanMemory.Report) {
        var module = try Parser.parse(source)
        try Verifier.verify(module)
        let report = PlanMemory().plan(&module.functions[0])
        try Verifier.verify(module)
        let check = PlanCheck(module.functions[0])
        XCTAssertEqual(check.failures, [], file: file, line: line)
        XCTAssertEqual(report.arenaBytes, check.arenaBytes, file: file, line: line)
        XCTAssertEqual(report.lowerBoundBytes, check.largestLiveAlignedBytes, "the report's lower bound", file: file, line: line)
        return (module.functions[0], check, report)
    }

    func testAChainReusesTwoBuffers() throws {
        let (_, check, report) = try plan("""
        func @f(%0: f32[16,16] input "x") {
          %1 = exp(%0) : f32[16,16]
          %2 = neg(%1) : f32[16,16]
          %3 = tanh(%2) : f32[16,16]
          %4 = sigmoid(%3) : f32[16,16]
          %5 = relu(%4) : f32[16,16]
          return %5 as "y"
        }
        """)
        // Each op reads one buffer and writes another: two buffers suffice.
        XCTAssertEqual(check.largestLiveBytes, 2 * 1024)
        XCTAssertLessThanOrEqual(check.arenaBytes, 3 * 1024)
        XCTAssertLessThanOrEqual(check.distinctOffsets, 3)
        XCTAssertEqual(check.buffers, 5)
        XCTAssertEqual(report.efficiency, 1, "a chain is planned optimally")
    }

    func testAliasesOutputsAndUpdatesStayLive() throws {
        let (function, check, _) = try plan("""
        func @f(%0: f32[16,16] input "x", %1: f32[256] state "s") {
          %2 = exp(%0) : f32[16,16]
          %3 = reshape(%2) {shape=[256]} : f32[256]
          %4 = neg(%3) : f32[256]
          %5 = exp(%4) : f32[256]
          %6 = reshape(%0) {shape=[256]} : f32[256]
          %7 = add(%5, %6) : f32[256]
          %8 = tanh(%7) : f32[256]
          %9 = sigmoid(%8) : f32[256]
          %10 = reshape(%9) {shape=[16,16]} : f32[16,16]
          %11 = relu(%10) : f32[16,16]
          %12 = add(%11, %11) : f32[16,16]
          return %4 as "early", %12 as "y"
          update %1 = %8
        }
        """)
        let byID = function.nodesByID
        XCTAssertEqual(byID[3]!.arenaOffset, byID[2]!.arenaOffset, "a reshape shares its operand's bytes")
        XCTAssertEqual(byID[10]!.arenaOffset, byID[9]!.arenaOffset)
        XCTAssertNil(byID[6]!.arenaOffset, "a reshape of an argument is not in the arena")
        // %8 is the update of %1, which nothing reads: it is computed in place.
        XCTAssertEqual(byID[8]!.inPlaceOf, 1)
        XCTAssertNil(byID[8]!.arenaOffset)
        // %4 is an output: nothing after it may reuse its bytes.
        for late in [9, 11, 12] {
            XCTAssertNotEqual(byID[late]!.arenaOffset, byID[4]!.arenaOffset)
        }
        XCTAssertGreaterThanOrEqual(check.arenaBytes, 3 * 1024)
    }

    func testAnUpdateIsComputedInPlaceOnlyWhenNothingCanTell() throws {
        // %4 (the new s) may overwrite s: s is read only by it, element for element.
        // %6 may not overwrite t: %7 reads t's old value after it.
        // %8 may not overwrite u: it is a reduction, not a pointwise loop.
        let (function, _, report) = try plan("""
        func @f(%0: f32[64] input "x", %1: f32[64] state "s", %2: f32[64] param "t", %3: f32[] state "u") {
          %4 = add(%1, %0) : f32[64]
          %5 = mul(%4, %4) : f32[64]
          %6 = sub(%2, %5) : f32[64]
          %7 = add(%6, %2) : f32[64]
          %8 = reduce_sum(%7) {axes=[0]} : f32[]
          return %7 as "y"
          update %1 = %4
          update %2 = %6
          update %3 = %8
        }
        """)
        let byID = function.nodesByID
        XCTAssertEqual(byID[4]!.inPlaceOf, 1)
        XCTAssertNil(byID[6]!.inPlaceOf)
        XCTAssertNotNil(byID[6]!.arenaOffset)
        XCTAssertNil(byID[8]!.inPlaceOf)
        XCTAssertEqual(report.inPlaceUpdates, 1)
        XCTAssertEqual(report.inPlaceBytes, 256)
        // The placement round-trips through the text form.
        let printed = Printer.print(function)
        XCTAssertTrue(printed.contains("@%1"), printed)
        XCTAssertEqual(try Parser.parse(printed).functions[0], function)
    }

    func testTheVerifierRefusesAnIllegalInPlaceUpdate() throws {
        let source = """
        func @f(%0: f32[64] input "x", %1: f32[64] param "t") arena 512 {
          %2 = sub(%1, %0) : f32[64] @%1
          %3 = add(%2, %1) : f32[64] @256
          return %3 as "y"
          update %1 = %2
        }
        """
        XCTAssertThrowsError(try Verifier.verify(try Parser.parse(source))) { error in
            XCTAssertTrue("\(error)".contains("is read after %2"), "\(error)")
        }
    }

    /// A batch norm may write its result over its input at the input's last
    /// read, and only there.
    func testAKernelWritesOverAnOperandItsSpecAllowsOnlyAtItsLastRead() throws {
        let (function, check, _) = try plan("""
        func @f(%0: f32[2,3,4,4] input "x", %1: f32[3] param "g", %2: f32[3] param "b") {
          %3 = exp(%0) : f32[2,3,4,4]
          %4 = batch_norm_train(%3, %1, %2) {eps=1e-05} : f32[2,3,4,4]
          %5 = neg(%4) : f32[2,3,4,4]
          %6 = batch_norm_train(%5, %1, %2) {eps=1e-05} : f32[2,3,4,4]
          %7 = add(%6, %5) : f32[2,3,4,4]
          return %7 as "y"
        }
        """)
        let byID = function.nodesByID
        XCTAssertEqual(byID[4]!.arenaOffset, byID[3]!.arenaOffset, "%3 is read last by %4, which takes its bytes")
        XCTAssertNotEqual(byID[6]!.arenaOffset, byID[5]!.arenaOffset, "%7 still reads %5")
        XCTAssertEqual(check.failures, [])
    }

    func testAFreedGapIsReused() throws {
        let (function, check, _) = try plan("""
        func @f(%0: f32[64] input "x", %1: f32[16] input "y") {
          %2 = exp(%0) : f32[64]
          %3 = neg(%2) : f32[64]
          %4 = reduce_sum(%3) {axes=[0]} : f32[]
          %5 = add(%1, %4) : f32[16]
          %6 = exp(%5) : f32[16]
          %7 = add(%6, %4) : f32[16]
          return %7 as "y"
        }
        """)
        // After %3 is read, the small buffers fit where the 256-byte ones were.
        XCTAssertLessThanOrEqual(check.arenaBytes, 2 * 256 + 64)
        XCTAssertLessThan(function.nodesByID[6]!.arenaOffset!, 512)
    }

    /// First fit in schedule order leaves a gap too small for a later, larger
    /// buffer; placing the largest first reaches the lower bound, and the
    /// planner keeps the smaller of the two arenas.
    func testLargestFirstPlacementAvoidsAGapFirstFitLeaves() throws {
        // Units of 64 bytes: A 1 [0, end], B 2 [1, 2], C 1 [2, end], D 3 [3, end].
        let (function, check, report) = try plan("""
        func @f(%0: f32[16] input "x") {
          %1 = exp(%0) : f32[16]
          %2 = concat(%1, %1) {axis=0} : f32[32]
          %3 = slice(%2) {start=[8], end=[24]} : f32[16]
          %4 = concat(%1, %3, %3) {axis=0} : f32[48]
          return %4 as "d", %1 as "a", %3 as "c"
        }
        """)
        XCTAssertEqual(report.lowerBoundBytes, 5 * 64)
        XCTAssertEqual(check.arenaBytes, 5 * 64, "first fit in order needs 7 units: D above the gap B leaves")
        let inOrder = PlanMemory.placeInScheduleOrder([
            .init(size: 64, first: 0, last: 4), .init(size: 128, first: 1, last: 2),
            .init(size: 64, first: 2, last: 4), .init(size: 192, first: 3, last: 4),
        ])
        XCTAssertEqual(inOrder.arena, 7 * 64)
        XCTAssertEqual(function.nodesByID[4]!.arenaOffset, 0, "D, the largest, goes first")
    }

    // The four UNet.small entry points after the whole standard pipeline.
    func testUNetSmallInferIsPlannedSoundly() throws { try checkUNet("infer") }
    func testUNetSmallPretrainStepIsPlannedSoundly() throws { try checkUNet("pretrain_step") }
    func testUNetSmallPretrainDepStepIsPlannedSoundly() throws { try checkUNet("pretrain_dep_step") }
    func testUNetSmallFinetuneStepIsPlannedSoundly() throws { try checkUNet("finetune_step") }

    func checkUNet(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let module = try UNetSmall.planned.get()
        XCTAssertNotNil(module[name], "UNet.small has @\(name)", file: file, line: line)
        for function in module.functions where function.name == name {
            let check = PlanCheck(function)
            XCTAssertEqual(check.failures, [], function.name, file: file, line: line)
            XCTAssertGreaterThan(check.buffers, 50, function.name, file: file, line: line)
            XCTAssertLessThan(check.distinctOffsets, check.buffers, "\(function.name) reuses memory", file: file, line: line)
            // Replanning gives the same plan and a report that agrees with the checker.
            var again = function
            let report = PlanMemory().plan(&again)
            XCTAssertEqual(again, function, "\(function.name): plan-memory is deterministic", file: file, line: line)
            XCTAssertEqual(report.lowerBoundBytes, check.largestLiveAlignedBytes, function.name, file: file, line: line)
            XCTAssertGreaterThanOrEqual(check.efficiency, 0.7, "\(function.name): \(report)", file: file, line: line)
            print("plan-memory \(report); \(check.buffers) buffers at \(check.distinctOffsets) offsets")
        }
    }

    func testCheckerCatchesOverlapsAndMisalignment() throws {
        // The checker itself: a plan that puts two live values in one place is rejected.
        var function = try Parser.parse("""
        func @f(%0: f32[16] input "x") {
          %1 = exp(%0) : f32[16] @0
          %2 = neg(%1) : f32[16] @32
          %3 = add(%1, %2) : f32[16] @128
          return %3 as "y"
        }
        """).functions[0]
        function.arenaBytes = 192
        let failures = PlanCheck(function).failures
        XCTAssertTrue(failures.contains { $0.contains("overlaps") }, "\(failures)")
        XCTAssertTrue(failures.contains { $0.contains("not 64-byte aligned") }, "\(failures)")
        function.nodes[2].arenaOffset = nil
        XCTAssertTrue(PlanCheck(function).failures.contains { $0.contains("%3 = add has no arena offset") })
    }
}
