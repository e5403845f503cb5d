import Foundation
import IR
import Passes
import TestSupport
import XCTest

/// `group-loops`: which consecutive elementwise nodes share a loop, what the
/// dump shows, the planner keeping a group's operands alive to its end, and
/// the verifier's refusal of groups the lowering cannot build. (C and LLVM
/// against the interpreter: LLVMEmitterTests.testLoopGroupsComputeTheirNodesInOneLoop
/// and the whole training steps of StepAgreementTests.)
final class LoopGroupTests: XCTestCase {
    func testAnOptimizerStepBecomesOneGroup() throws {
        _ = try checkIR("""
            func @step(%0: f32[8] param "w", %1: f32[8] state "m", %2: f32[8] state "v", %3: f32[8] input "g", %4: f32[] input "lr",
                       %9: f32[2,8] input "x") {
              %5 = fused_elementwise(%3, %0) {expr=add(in0, mul(in1, 0.01))} : f32[8]
              %6 = fused_elementwise(%1, %5) {expr=add(mul(0.9, in0), mul(0.1, in1))} : f32[8]
              %7 = fused_elementwise(%2, %5) {expr=add(mul(0.999, in0), mul(0.001, mul(in1, in1)))} : f32[8]
              %8 = fused_elementwise(%0, %4, %6, %7) {expr=sub(in0, mul(in1, div(in2, add(sqrt(in3), 1e-08))))} : f32[8]
              %10 = exp(%9) : f32[2,8]
              %11 = neg(%0) : f32[8]
              return %10 as "y", %11 as "z"
              update %1 = %6
              update %2 = %7
              update %0 = %8
            }
            // The four share values: one group. exp has another shape, and neg
            // follows a node of another shape: each stays a loop of its own.
            // CHECK: %5 = fused_elementwise(%3, %0) {expr=add(in0, mul(in1, 0.01)), loop=0}
            // CHECK-NEXT: %6 = fused_elementwise(%1, %5) {expr=add(mul(0.9, in0), mul(0.1, in1)), loop=0}
            // CHECK-NEXT: %7 = fused_elementwise(%2, %5) {expr=add(mul(0.999, in0), mul(0.001, mul(in1, in1))), loop=0}
            // CHECK-NEXT: %8 = fused_elementwise(%0, %4, %6, %7) {expr=sub(in0, mul(in1, div(in2, add(sqrt(in3), 1e-08)))), loop=0}
            // CHECK-NEXT: %10 = exp(%9) : f32[2,8]
            // CHECK-NEXT: %11 = neg(%0) : f32[8]
            """, passes: [GroupLoops.name])
    }

    func testNodesThatShareNothingStayApart() throws {
        var module = try Parser.parse("""
            func @f(%0: f32[8] input "a", %1: f32[8] input "b") {
              %2 = exp(%0) : f32[8]
              %3 = neg(%1) : f32[8]
              return %2 as "x", %3 as "y"
            }
            """)
        XCTAssertEqual(try GroupLoops().run(&module), false)
        // A recompiled module keeps its groups and gains none.
        var grouped = try Parser.parse("""
            func @f(%0: f32[8] input "a") {
              %1 = exp(%0) {loop=4} : f32[8]
              %2 = neg(%1) {loop=4} : f32[8]
              return %2 as "y"
            }
            """)
        let before = grouped
        XCTAssertEqual(try GroupLoops().run(&grouped), false)
        XCTAssertEqual(grouped, before)
    }

    /// %2 is the group's first member's operand and dies there; the third
    /// member's result must still not take its bytes: the group's loop reads
    /// %2's element i after it has stored the third member's elements < i.
    func testTheGroupsOperandsLiveToItsEnd() throws {
        var module = try Parser.parse("""
            func @f(%0: f32[64,64] input "a", %1: f32[64,64] input "b") {
              %2 = matmul(%0, %1) : f32[64,64]
              %3 = fused_elementwise(%2, %0) {expr=add(in0, in1)} : f32[64,64]
              %4 = fused_elementwise(%3, %1) {expr=mul(in0, in1)} : f32[64,64]
              %5 = fused_elementwise(%4, %3) {expr=sub(in0, in1)} : f32[64,64]
              return %5 as "y"
            }
            """)
        XCTAssertEqual(try GroupLoops().run(&module), true)
        PlanMemory().plan(&module.functions[0])
        try Verifier.verify(module)
        let nodes = Dictionary(uniqueKeysWithValues: module.functions[0].nodes.map { ($0.id, $0) })
        let bytes = 64 * 64 * 4
        func range(_ id: ValueID) -> Range<Int> { nodes[id]!.arenaOffset!..<(nodes[id]!.arenaOffset! + bytes) }
        for member in [ValueID(3), 4, 5] {
            XCTAssertFalse(range(2).overlaps(range(member)), "%\(member) was placed over the group's operand %2")
        }
    }

    func testTheVerifierRefusesGroupsTheLoweringCannotBuild() throws {
        let shapes = """
            func @f(%0: f32[8] input "a", %1: f32[2,8] input "b") {
              %2 = exp(%0) {loop=0} : f32[8]
              %3 = exp(%1) {loop=0} : f32[2,8]
              return %2 as "x", %3 as "y"
            }
            """
        XCTAssertThrowsError(try Verifier.verify(try Parser.parse(shapes))) { error in
            XCTAssertTrue("\(error)".contains("the group computes [8]"), "\(error)")
        }
        let split = """
            func @f(%0: f32[8] input "a") {
              %1 = exp(%0) {loop=0} : f32[8]
              %2 = neg(%1) : f32[8]
              %3 = exp(%2) {loop=0} : f32[8]
              return %3 as "y"
            }
            """
        XCTAssertThrowsError(try Verifier.verify(try Parser.parse(split))) { error in
            XCTAssertTrue("\(error)".contains("must be consecutive"), "\(error)")
        }
        let kernel = """
            func @f(%0: f32[4,4] input "a") {
              %1 = exp(%0) {loop=0} : f32[4,4]
              %2 = matmul(%1, %1) {loop=0} : f32[4,4]
              return %2 as "y"
            }
            """
        XCTAssertThrowsError(try Verifier.verify(try Parser.parse(kernel))) { error in
            XCTAssertTrue("\(error)".contains("only elementwise loops are grouped"), "\(error)")
        }
    }
}
