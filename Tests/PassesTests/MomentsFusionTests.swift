import IR
@testable import Passes
import TestSupport
import XCTest

/// one-pass-moments and fuse-conv-moments: a training batch norm's mean and
/// variance from one batch_moments node, gathered by the convolution before
/// it where there is one; and the rules that keep that node's buffer safe.
final class MomentsFusionTests: XCTestCase {
    func testEveryTrainingBatchNormTakesItsMomentsInOnePass() throws {
        var module = Module(functions: [try UNetSmall.function("finetune_step")])
        try runPasses([Autodiff.name, AdamOptimizer.name, FoldConstants.name, CSE.name, DCE.name, BatchNormFromMoments.name], on: &module)
        let before = module
        let reductions = before.functions[0].count("reduce_mean")
        XCTAssertEqual(try runPasses([OnePassMoments.name], on: &module), [true])
        let after = module.functions[0]
        let layers = after.count("batch_moments")
        XCTAssertGreaterThan(layers, 10)
        XCTAssertEqual(after.count("reduce_mean"), reductions - 2 * layers, "both means of every layer went")
        XCTAssertEqual(after.nodes.filter { $0.op == "mul" && $0.operands.count == 2 && $0.operands[0] == $0.operands[1] }.count,
                       before.functions[0].nodes.filter { $0.op == "mul" && $0.operands.count == 2 && $0.operands[0] == $0.operands[1] }.count - layers,
                       "and the squares only the variances read")
        try assertComputesTheSame(before, module, seed: 4, tolerance: 1e-12)
    }

    /// Averaged across processes, the variance is taken around the global
    /// mean: those moments keep their two reductions.
    func testDataParallelMomentsKeepTheirForm() throws {
        var module = Module(functions: [try UNetSmall.function("finetune_step")])
        try runPasses([SyncBatchNorm.name, Autodiff.name, AdamOptimizer.name, FoldConstants.name, CSE.name, DCE.name, BatchNormFromMoments.name],
                      on: &module)
        XCTAssertEqual(try runPasses([OnePassMoments.name], on: &module), [false])
    }

    static let convolutions = """
        func @f(%0: f32[2,3,8,8] input "x", %1: f32[4,3,3,3] param "w") {
          %2 = conv2d(%0, %1) {algorithm="winograd4", pad=[1,1]} : f32[2,4,8,8]
          %3 = add(%0, %0) : f32[2,3,8,8]
          %4 = mul(%2, %2) : f32[2,4,8,8]
          %5 = batch_moments(%2) : f32[2,4]
          %6 = batch_moments(%3) : f32[2,3]
          return %4 as "y", %5 as "m", %6 as "n"
        }
        """

    func testTheMomentsOfAConvolutionMoveIntoItsEpilogue() throws {
        var module = try Parser.parse(Self.convolutions)
        let before = module
        XCTAssertEqual(try runPasses([FuseConvMoments.name], on: &module), [true])
        let nodes = module.functions[0].nodes
        XCTAssertEqual(nodes.map(\.id), [2, 5, 3, 4, 6], "right after its convolution")
        XCTAssertEqual(nodes[0].attrs[FusedConvOps.momentsKey], .bool(true))
        XCTAssertEqual(nodes[1].attrs[BatchMomentsOps.inEpilogueKey], .bool(true))
        XCTAssertNil(nodes[4].attrs[BatchMomentsOps.inEpilogueKey], "an add has no epilogue to gather them")
        try assertComputesTheSame(before, module, seed: 5, tolerance: 0)
        XCTAssertEqual(try runPasses([FuseConvMoments.name], on: &module), [false], "done once")
    }

    func testTheVerifierHoldsTheConvolutionAndItsMomentsTogether() throws {
        for (source, problem) in [
            ("""
             %2 = conv2d(%0, %1) {moments=true, pad=[1,1]} : f32[2,4,8,8]
             %3 = add(%0, %0) : f32[2,3,8,8]
             %4 = batch_moments(%2) {in_epilogue=true} : f32[2,4]
             """, "the node after it is not batch_moments(%2)"),
            ("""
             %2 = conv2d(%0, %1) {pad=[1,1]} : f32[2,4,8,8]
             %4 = batch_moments(%2) {in_epilogue=true} : f32[2,4]
             %3 = add(%0, %0) : f32[2,3,8,8]
             """, "must follow the convolution of its operand, marked moments=true"),
            ("""
             %3 = add(%0, %0) {moments=true} : f32[2,3,8,8]
             %4 = batch_moments(%3) {in_epilogue=true} : f32[2,3]
             %2 = conv2d(%0, %1) {pad=[1,1]} : f32[2,4,8,8]
             """, "only [\"conv2d\", \"fused_conv2d\"] gather batch moments"),
        ] {
            let module = try Parser.parse("""
                func @f(%0: f32[2,3,8,8] input "x", %1: f32[4,3,3,3] param "w") {
                \(source)
                  return %4 as "m"
                }
                """)
            XCTAssertThrowsError(try Verifier.verify(module)) { error in
                XCTAssertTrue("\(error)".contains(problem), "\(error)")
            }
        }
    }

    /// A recompiled step's convolution that gathers moments, computed again
    /// for a late use: the copy gathers none (its moments' buffer may be
    /// another value's by then).
    func testARecomputedConvolutionGathersNoMoments() throws {
        var module = try Parser.parse("""
            func @f(%0: f32[1,8,8,8] input "x", %1: f32[16,8,1,1] param "w") {
              %2 = conv2d(%0, %1) {moments=true} : f32[1,16,8,8]
              %3 = batch_moments(%2) {in_epilogue=true} : f32[2,16]
              %4 = softmax(%2) {axis=1} : f32[1,16,8,8]
              %5 = softmax(%4) {axis=2} : f32[1,16,8,8]
              %6 = mul(%5, %4) : f32[1,16,8,8]
              %7 = mse(%6, %2) : f32[]
              return %7 as "loss", %3 as "m"
            }
            """)
        let before = module
        XCTAssertEqual(try runPasses([Rematerialize.name], on: &module), [true])
        let convolutions = module.functions[0].nodes.filter { $0.op == "conv2d" }
        XCTAssertEqual(convolutions.map { $0.attrs[FusedConvOps.momentsKey] != nil }, [true, false], "\(Printer.print(module))")
        try assertComputesTheSame(before, module, seed: 6, tolerance: 0)
    }

    /// The convolution writes the moments during its call: plan-memory keeps
    /// their buffer off everything live then, the input that dies there
    /// included, and the arena check refuses a placement that does not.
    func testTheMomentsBufferIsLiveFromItsConvolution() throws {
        var module = try Parser.parse("""
            func @f(%0: f32[2,3,8,8] input "x", %1: f32[4,3,3,3] param "w") {
              %2 = add(%0, %0) : f32[2,3,8,8]
              %3 = conv2d(%2, %1) {pad=[1,1]} : f32[2,4,8,8]
              %4 = batch_moments(%3) : f32[2,4]
              %5 = mul(%3, %3) : f32[2,4,8,8]
              return %4 as "m", %5 as "y"
            }
            """)
        try runPasses([FuseConvMoments.name, PlanMemory.name], on: &module)
        var function = module.functions[0]
        XCTAssertEqual(ArenaCheck(function).failures, [])
        let input = function.nodes.first { $0.id == 2 }!.arenaOffset!
        let moments = function.nodes.firstIndex { $0.id == 4 }!
        XCTAssertNotEqual(function.nodes[moments].arenaOffset, input, "%2 dies at the convolution, but is read during its call")
        function.nodes[moments].arenaOffset = input
        XCTAssertTrue(ArenaCheck(function).failures.contains { $0.contains("%4 [\(input)") && $0.contains("overlaps %2") },
                      "\(ArenaCheck(function).failures)")
    }
}
