import IR
import ModelZoo
import Passes
import TestSupport
import XCTest

/// matmul-layout: attention's products read Q, K and V where the
/// projections left them and write the context into the tokens, instead of
/// through permuted copies, computing the same tensors.
final class MatmulLayoutTests: XCTestCase {
    func testAttentionReadsAndWritesHeadsInTheTokensLayout() throws {
        let source = """
            func @f(%0: f32[2,3,8] input "q", %1: f32[2,3,8] input "k", %2: f32[2,3,8] input "v") {
              %3 = reshape(%0) {shape=[2,3,2,4]} : f32[2,3,2,4]
              %4 = permute(%3) {perm=[0,2,1,3]} : f32[2,2,3,4]
              %5 = reshape(%1) {shape=[2,3,2,4]} : f32[2,3,2,4]
              %6 = permute(%5) {perm=[0,2,1,3]} : f32[2,2,3,4]
              %7 = reshape(%2) {shape=[2,3,2,4]} : f32[2,3,2,4]
              %8 = permute(%7) {perm=[0,2,1,3]} : f32[2,2,3,4]
              %9 = matmul(%4, %6) {transpose_b=true} : f32[2,2,3,3]
              %10 = softmax(%9) {axis=-1} : f32[2,2,3,3]
              %11 = matmul(%10, %8) : f32[2,2,3,4]
              %12 = permute(%11) {perm=[0,2,1,3]} : f32[2,3,2,4]
              %13 = reshape(%12) {shape=[2,3,8]} : f32[2,3,8]
              return %13 as "y"
            }
            // CHECK: %9 = matmul(%3, %5) {a_perm=[0,2,1,3], b_perm=[0,2,1,3], transpose_b=true} : f32[2,2,3,3]
            // CHECK: %12 = matmul(%10, %7) {b_perm=[0,2,1,3], result_perm=[0,2,1,3]} : f32[2,3,2,4]
            // CHECK-NEXT: %13 = reshape(%12)
            // CHECK-NOT: permute(
            """
        try checkIRComputesTheSame(source, passes: [MatmulLayout.name], output: "y", seed: 3)
    }

    func testLeavesPermutesThatAreReadOtherwiseOrMoveTheRows() throws {
        var module = try Parser.parse("""
            func @f(%0: f32[2,3,4] input "x", %1: f32[3,2,4] input "w") {
              %2 = permute(%0) {perm=[1,0,2]} : f32[3,2,4]
              %3 = matmul(%2, %1) {transpose_b=true} : f32[3,2,2]
              %4 = tanh(%2) : f32[3,2,4]
              %5 = permute(%0) {perm=[0,2,1]} : f32[2,4,3]
              %6 = matmul(%5, %0) : f32[2,4,4]
              %7 = matmul(%0, %5) : f32[2,3,3]
              %8 = permute(%7) {perm=[0,2,1]} : f32[2,3,3]
              return %3 as "a", %4 as "b", %6 as "c", %8 as "d"
            }
            """)
        XCTAssertEqual(try runPasses([MatmulLayout.name], on: &module), [false])
    }

    /// The whole pipeline on the tiny TransUNet: every permute of its
    /// attention is gone from inference and both training steps, and the
    /// f64 interpreter gives the outputs and updates of the pipeline without
    /// the pass. (Compiled, OpAgreementTests checks each layout against the
    /// interpreter on both backends, and TransUNetParityTests the steps
    /// against PyTorch.)
    func testTinyTransUNetAgreesWithoutThePass() throws {
        let module = try buildModule(TransUNet.tiny, config: EntryConfig(batch: 2, size: 32, classes: 3, entries: [.infer, .pretrainStep, .finetuneStep]))
        var folded = module
        var copied = module
        try PassManager(PassManager.standardPipeline()).run(&folded)
        try PassManager(PassManager.standardPipeline().filter { !($0 is MatmulLayout) }).run(&copied)
        for (before, after) in zip(copied.functions, folded.functions) where ["infer", "pretrain_step", "finetune_step"].contains(before.name) {
            let fourAxes = { (function: Function) in function.nodes.filter { $0.op == "permute" && $0.type.rank == 4 }.count }
            XCTAssertGreaterThan(fourAxes(before), 0, before.name)
            XCTAssertEqual(fourAxes(after), 0, "\(before.name): the heads are read and written in place")
            try assertSameOutputsAndUpdates(before, after, seed: 4, classes: 3, tolerance: 1e-9)
        }
    }
}
