import IR
@testable import Passes
import TestSupport
import XCTest

final class PlanMemoryTests: XCTestCase {
    @discardableResult
    func plan(_ source: String, file: StaticString = #filePath, line: UInt = #line) throws -> (Function, ArenaCheck, PlanMemory.Report) {
        var module = try Parser.parse(source)
        try Verifier.verify(module)
        let report = PlanMemory().plan(&module.functions[0])
        try Verifier.verify(module)
        let check = ArenaCheck(module.functions[0])
        XCTAssertEqual(check.failures, [], file: file, line: line)
        XCTAssertEqual(report.arenaBytes, check.arenaBytes, file: file, line: line)
        XCTAssertEqual(report.lowerBoundBytes, check.largestLiveAlignedBytes, "the report's lower bound", file: file, line: line)
        return (module.functions[0], check, report)
    }

    func testAnElementwiseChainRunsInOneBuffer() throws {
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
        // Each op reads its operand's elements before it writes its own, over
        // them: one buffer suffices for the whole chain.
        XCTAssertEqual(check.largestLiveBytes, 1024)
        XCTAssertEqual(check.arenaBytes, 1024)
        XCTAssertEqual(check.distinctOffsets, 1)
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

    /// An elementwise loop writes over an operand of its own type at that
    /// operand's last read; never over one it broadcasts, read at other
    /// elements, nor over one read later.
    func testALoopWritesOverASameShapedOperandAtItsLastRead() throws {
        let (function, check, _) = try plan("""
        func @f(%0: f32[2,3,4,4] input "x", %1: f32[1,3,1,1] input "s") {
          %2 = exp(%0) : f32[2,3,4,4]
          %3 = exp(%1) : f32[1,3,1,1]
          %4 = mul(%3, %2) : f32[2,3,4,4]
          %5 = neg(%4) : f32[2,3,4,4]
          %6 = add(%5, %4) : f32[2,3,4,4]
          %7 = mul(%6, %3) : f32[2,3,4,4]
          return %7 as "y"
        }
        """)
        let byID = function.nodesByID
        XCTAssertEqual(byID[4]!.arenaOffset, byID[2]!.arenaOffset, "%4 reads %2 last, element for element")
        XCTAssertNotEqual(byID[5]!.arenaOffset, byID[4]!.arenaOffset, "%6 still reads %4")
        XCTAssertEqual(byID[6]!.arenaOffset, byID[5]!.arenaOffset, "%6 is the last reader of %5 (and %4)")
        XCTAssertNotEqual(byID[7]!.arenaOffset, byID[3]!.arenaOffset, "%3 is broadcast, and smaller")
        XCTAssertEqual(check.failures, [])
        // LLVMEmitterTests.testLoopsWrittenOverTheirOperandsComputeTheSame runs such loops.
    }

    /// A Winograd convolution's weights scratch is a buffer live during its
    /// call only: apart from its operands and result, over what is dead.
    func testKernelScratchIsPlacedForItsCallOnly() throws {
        let (function, check, report) = try plan("""
        func @f(%0: f32[1,16,8,8] input "x", %1: f32[16,16,3,3] param "w") {
          %2 = exp(%0) : f32[1,16,8,8]
          %3 = tanh(%2) : f32[1,16,8,8]
          %4 = conv2d(%3, %1) {algorithm="winograd4", pad=[1,1]} : f32[1,16,8,8]
          %5 = conv2d(%4, %1) {algorithm="winograd4", pad=[1,1]} : f32[1,16,8,8]
          return %5 as "y"
        }
        """)
        let scratchBytes = 36 * 24 * 16 * 4 // (4+2)² points, 16 output channels padded to 24 rows, 16 inputs
        let byID = function.nodesByID
        XCTAssertNotNil(byID[4]!.scratchOffset)
        XCTAssertNil(byID[3]!.scratchOffset)
        XCTAssertEqual(report.lowerBoundBytes, 2 * 4096 + scratchBytes, "input, output and scratch of one call")
        XCTAssertEqual(check.failures, [])
        // At the peak, the first convolution's call: its scratch, its result,
        // and its input (the buffer exp made, which tanh wrote over).
        XCTAssertEqual(report.heldAtPeak.map(\.producer), ["scratch of conv2d", "conv2d", "exp"])
        XCTAssertEqual(report.heldAtPeak.map(\.bytes), [scratchBytes, 4096, 4096])
        XCTAssertEqual(report.heldAtPeak.map(\.bytes).reduce(0, +), report.lowerBoundBytes)
        XCTAssertTrue(report.description.hasSuffix("at the peak: scratch of conv2d 55.3 KB (1), conv2d 4.1 KB (1), exp 4.1 KB (1)"), report.description)
        // Printed and parsed back; the checker refuses scratch over a live buffer.
        let printed = Printer.print(function)
        XCTAssertTrue(printed.contains("scratch @\(byID[5]!.scratchOffset!)"), printed)
        var overlapping = try Parser.parse(printed).functions[0]
        XCTAssertEqual(overlapping, function)
        let conv = overlapping.nodes.firstIndex { $0.id == 5 }!
        overlapping.nodes[conv].scratchOffset = overlapping.nodes[conv].arenaOffset
        XCTAssertTrue(ArenaCheck(overlapping).failures.contains { $0.contains("scratch of %5") && $0.contains("overlaps %5") },
                      "\(ArenaCheck(overlapping).failures)")
    }

    /// A kernel asking for per-thread scratch is lent the largest stretch of
    /// the arena nothing holds during its call, its planned scratch moved to
    /// one edge of it; the arena does not grow.
    func testPerThreadScratchBorrowsTheArenaFreeDuringTheCall() throws {
        let (function, check, report) = try plan("""
        func @f(%0: f32[1,16,8,8] input "x", %1: f32[16,16,3,3] param "w", %2: f32[256,1024] input "z") {
          %3 = conv2d(%0, %1) {algorithm="winograd4", pad=[1,1]} : f32[1,16,8,8]
          %4 = exp(%2) : f32[256,1024]
          %5 = reduce_sum(%4) {axes=[0,1]} : f32[]
          %6 = add(%3, %5) : f32[1,16,8,8]
          return %6 as "y"
        }
        """)
        let scratchBytes = 36 * 24 * 16 * 4 // see testKernelScratchIsPlacedForItsCallOnly
        let byID = function.nodesByID
        let spare = try XCTUnwrap(byID[3]!.spare)
        XCTAssertEqual(report.arenaBytes, 1 << 20 + 4096 + 64, "%4 beside %3 (%6 over it) and %5")
        XCTAssertEqual(spare.count, report.arenaBytes - 4096 - scratchBytes, "all but the call's output and its scratch")
        XCTAssertNil(byID[4]!.spare, "a loop borrows nothing")
        XCTAssertEqual(check.failures, [])
        // Printed and parsed back; the checker refuses a spare region over a live buffer.
        let printed = Printer.print(function)
        XCTAssertTrue(printed.contains("spare @\(spare.lowerBound) size \(spare.count)"), printed)
        var overlapping = try Parser.parse(printed).functions[0]
        XCTAssertEqual(overlapping, function)
        let conv = overlapping.nodes.firstIndex { $0.id == 3 }!
        overlapping.nodes[conv].spare = byID[3]!.arenaOffset! ..< byID[3]!.arenaOffset! + 4096
        XCTAssertTrue(ArenaCheck(overlapping).failures.contains { $0.contains("spare region of %3") && $0.contains("overlaps %3") },
                      "\(ArenaCheck(overlapping).failures)")
    }

    /// A call's planned scratch, live at its position only, moves to the
    /// gap where it leaves the largest stretch free for the call's
    /// per-thread scratch: into a gap its own size, not the start of the
    /// large one.
    func testPlannedScratchMovesOutOfTheLargestGap() throws {
        let function = try Parser.parse("""
        func @f(%0: f32[1,16,8,8] input "x", %1: f32[16,16,3,3] param "w") {
          %2 = conv2d(%0, %1) {algorithm="winograd4", pad=[1,1]} : f32[1,16,8,8]
          return %2 as "y"
        }
        """).functions[0]
        let scratch = 36 * 24 * 16 * 4, arena = 1 << 20, large = 600_000 / 64 * 64
        // The output at 0, the large gap, a buffer, a gap of the scratch's size, a buffer to the end.
        let blocker = 4096 + large, small = blocker + 4096
        let buffers = [PlanMemory.Buffer(size: 4096, first: 0, last: 0), PlanMemory.Buffer(size: scratch, first: 0, last: 0),
                       PlanMemory.Buffer(size: 4096, first: 0, last: 0), PlanMemory.Buffer(size: arena - small - scratch, first: 0, last: 0)]
        let offsets = [0, 4096, blocker, small + scratch] // the scratch first placed at the start of the large gap
        let spares = PlanMemory.spares(function, buffers: buffers, offsets: offsets, scratchOf: [2: 1], arena: arena)
        XCTAssertEqual(spares.count, 1)
        XCTAssertEqual(spares.first?.scratchOffset, small)
        XCTAssertEqual(spares.first?.spare, 4096 ..< blocker)
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

    /// A recompiled module's spare regions were planned for another arena:
    /// planning again drops one it would not lend (no free stretch of 256 KiB
    /// here), where it used to stay and overlap the node's own result.
    func testPlanningAgainDropsASpareRegionItWouldNotLend() throws {
        let (function, _, _) = try plan("""
        func @f(%0: f32[1,2,6,6] input "x", %1: f32[3,2,3,3] param "w") {
          %2 = exp(%0) : f32[1,2,6,6]
          %3 = conv2d(%2, %1) {pad=[1,1]} : f32[1,3,6,6] @0 spare @64 size 1048576
          return %3 as "y"
        }
        """)
        XCTAssertNil(function.nodesByID[3]!.spare)
    }

    /// The three greedy placements leave a hole no later buffer fits; the
    /// search over largest-first orders with large buffers swapped finds a
    /// placement at the lower bound.
    func testSearchedOrderReachesTheLowerBoundTheGreedyPlacementsMiss() {
        // Units of 64 bytes: A 1 [1, 3], B 4 [1, 1], C 1 [2, 6], D 4 [4, 4]; the bound is 5
        // (B 0..<4, A 4..<5, C 0..<1, D 1..<5). Largest first puts D at 0, so C goes above A.
        let buffers: [PlanMemory.Buffer] = [.init(size: 64, first: 1, last: 3), .init(size: 256, first: 1, last: 1),
                                            .init(size: 64, first: 2, last: 6), .init(size: 256, first: 4, last: 4)]
        let greedy = [PlanMemory.placeInScheduleOrder(buffers), PlanMemory.placeLargestFirst(buffers), PlanMemory.placeFullestFirst(buffers)]
        XCTAssertEqual(greedy.map(\.arena).min(), 6 * 64)
        let searched = PlanMemory.searchLargestFirst(buffers, lowerBound: 5 * 64, best: greedy[1])
        XCTAssertEqual(searched.arena, 5 * 64)
        for a in buffers.indices {
            for b in buffers.indices where a < b && buffers[a].overlaps(buffers[b]) {
                let (x, y) = (searched.offsets[a], searched.offsets[b])
                XCTAssertTrue(x + buffers[a].size <= y || y + buffers[b].size <= x, "buffers \(a) and \(b) are live together")
            }
        }
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
            let check = ArenaCheck(function)
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
        let failures = ArenaCheck(function).failures
        XCTAssertTrue(failures.contains { $0.contains("overlaps") }, "\(failures)")
        XCTAssertTrue(failures.contains { $0.contains("not 64-byte aligned") }, "\(failures)")
        function.nodes[2].arenaOffset = nil
        XCTAssertTrue(ArenaCheck(function).failures.contains { $0.contains("%3 = add has no arena offset") })
    }
}
