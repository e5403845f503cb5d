import IR
import Passes
import TestSupport
import XCTest

/// fuse-concat: an upsampled operand is written into its concatenation and
/// the others inserted after it, computing the same tensor.
final class ConcatFusionTests: XCTestCase {
    func testUpsamplesIntoTheConcatenationAndInsertsTheOthers() throws {
        let source = """
            func @f(%0: f32[2,3,2,3] input "x", %1: f32[2,2,4,6] input "skip", %2: f32[2,1,4,6] input "more") {
              %3 = upsample_nearest(%0) {size=[4,6]} : f32[2,3,4,6]
              %4 = concat(%1, %3, %2) {axis=1} : f32[2,6,4,6]
              %5 = tanh(%4) : f32[2,6,4,6]
              return %5 as "y"
            }
            // CHECK: %6 = upsample_nearest(%0) {channel_offset=2, channels=6, size=[4,6]} : f32[2,6,4,6]
            // CHECK-NEXT: %7 = insert(%6, %1) {axis=1, offset=0} : f32[2,6,4,6]
            // CHECK-NEXT: %4 = insert(%7, %2) {axis=1, offset=5} : f32[2,6,4,6]
            // CHECK-NEXT: %5 = tanh(%4)
            // CHECK-NOT: concat(
            """
        let after = try checkIRComputesTheSame(source, passes: [FuseConcat.name], output: "y", seed: 5)
        // Planned, each insert writes over the tensor before it: one buffer.
        var planned = after
        PlanMemory().plan(&planned.functions[0])
        let offsets = Set(planned.functions[0].nodes.filter { $0.op != "tanh" }.map(\.arenaOffset))
        XCTAssertEqual(offsets.count, 1, "\(planned.functions[0].nodes.map { ($0.op, $0.arenaOffset) })")
    }

    func testLeavesAnUpsamplingWithAnotherUseAlone() throws {
        var module = try Parser.parse("""
            func @f(%0: f32[1,2,2,2] input "x", %1: f32[1,2,4,4] input "skip") {
              %2 = upsample_nearest(%0) {size=[4,4]} : f32[1,2,4,4]
              %3 = concat(%2, %1) {axis=1} : f32[1,4,4,4]
              %4 = add(%2, %1) : f32[1,2,4,4]
              return %3 as "c", %4 as "s"
            }
            """)
        XCTAssertEqual(try runPasses([FuseConcat.name], on: &module), [false])
    }

    /// The whole pipeline on UNet.small's inference gives the unfused
    /// pipeline's output in the f64 interpreter. (Compiled by both backends,
    /// the kernel writing into place and the in-place inserts are checked
    /// against PyTorch by UNetParityTests and against the interpreter by
    /// OpAgreementTests' insert example and the training-step tests.)
    func testUNetSmallInferenceAgreesWithoutTheFusion() throws {
        var fused = Module(functions: [try UNetSmall.function("infer")])
        var unfused = fused
        // (fuse-conv-gather would read some concatenations from their parts.)
        let pipeline = PassManager.standardPipeline().filter { !($0 is FuseConvGather) }
        try PassManager(pipeline).run(&fused)
        try PassManager(pipeline.filter { !($0 is FuseConcat) }).run(&unfused)
        XCTAssertEqual(fused.functions[0].nodes.filter { $0.op == "concat" }.count, 0)
        XCTAssertGreaterThan(fused.functions[0].nodes.filter { $0.op == "insert" }.count, 0)
        XCTAssertGreaterThan(unfused.functions[0].nodes.filter { $0.op == "concat" }.count, 0)
        let arguments = randomArguments(for: fused.functions[0], seed: 9)
        let expected = try Interpreter.run(unfused.functions[0], arguments: arguments).outputs
        let got = try Interpreter.run(fused.functions[0], arguments: arguments).outputs
        for (name, value) in expected {
            XCTAssertLessThanOrEqual(maxRelativeDifference(got[name]!.data, value.data), 1e-12, name)
        }
    }
}
