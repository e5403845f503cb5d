import IR
import ModelZoo
import Passes
import TestSupport
import XCTest

/// fuse-conv-gather: a Winograd convolution of a decoder block's upsampled
/// and concatenated input reads it from its parts, computing the same
/// tensor. (The kernels, compiled by both backends, against the interpreter:
/// fused_conv2d's input_gather examples in OpAgreementTests.)
final class ConvGatherFusionTests: XCTestCase {
    static let decoderBlock = """
        func @f(%0: f32[2,3,3,4] input "x", %1: f32[2,2,6,8] input "skip", %2: f32[4,5,3,3] param "w",
                %3: f32[4,1,1] param "scale", %4: f32[4,1,1] param "shift") {
          %5 = upsample_nearest(%0) {channel_offset=0, channels=5, size=[6,8]} : f32[2,5,6,8]
          %6 = insert(%5, %1) {axis=1, offset=3} : f32[2,5,6,8]
          %7 = fused_conv2d(%6, %2, %3, %4) {algorithm="winograd4", epilogue=max(add(mul(in0, in1), in2), 0.0), pad=[1,1]} : f32[2,4,6,8]
          return %7 as "y"
        }
        """

    func agree(_ before: Module, _ after: Module, seed: UInt64) throws {
        let arguments = randomArguments(for: before.functions[0], seed: seed)
        let expected = try Interpreter.run(before.functions[0], arguments: arguments).outputs
        let got = try Interpreter.run(after.functions[0], arguments: arguments).outputs
        for (name, value) in expected {
            XCTAssertLessThanOrEqual(maxRelativeDifference(got[name]!.data, value.data), 1e-12, name)
        }
    }

    func testReadsAnUpsampledAndConcatenatedInputFromItsParts() throws {
        let after = try checkIR(Self.decoderBlock + """

            // CHECK: %7 = fused_conv2d(%0, %2, %3, %4, %1) {algorithm="winograd4", epilogue=max(add(mul(in0, in1), in2), 0.0), input_gather=[2,2,2], pad=[1,1]} : f32[2,4,6,8]
            // CHECK-NOT: upsample_nearest(
            // CHECK-NOT: insert(
            """, passes: [FuseConvGather.name])
        try agree(try Parser.parse(Self.decoderBlock), after, seed: 3)
    }

    func testReadsAnUpsamplingAloneByItsFactors() throws {
        let source = """
            func @f(%0: f32[1,3,2,3] input "x", %1: f32[2,3,3,3] param "w") {
              %2 = upsample_nearest(%0) {size=[6,6]} : f32[1,3,6,6]
              %3 = fused_conv2d(%2, %1) {algorithm="winograd2", epilogue=in0, pad=[1,1]} : f32[1,2,6,6]
              return %3 as "y"
            }
            """
        let after = try checkIR(source + """

            // CHECK: %3 = fused_conv2d(%0, %1) {algorithm="winograd2", epilogue=in0, input_gather=[3,2,0], pad=[1,1]}
            // CHECK-NOT: upsample_nearest(
            """, passes: [FuseConvGather.name])
        try agree(try Parser.parse(source), after, seed: 4)
    }

    /// TransUNet's decoder block: a bilinear upsampling (align_corners)
    /// concatenated with the skip, not placed into it.
    func testReadsABilinearlyUpsampledAndConcatenatedInputFromItsParts() throws {
        let source = """
            func @f(%0: f32[2,3,3,4] input "x", %1: f32[2,2,6,8] input "skip", %2: f32[4,5,3,3] param "w") {
              %3 = upsample_bilinear(%0) {align_corners=true, size=[6,8]} : f32[2,3,6,8]
              %4 = concat(%3, %1) {axis=1} : f32[2,5,6,8]
              %5 = conv2d(%4, %2) {algorithm="winograd4", pad=[1,1]} : f32[2,4,6,8]
              %6 = conv2d_grad_weight(%4, %5) {algorithm="winograd4", pad=[1,1], weight_shape=[4,5,3,3]} : f32[4,5,3,3]
              return %5 as "y", %6 as "dw"
            }
            """
        let after = try checkIR(source + """

            // CHECK: %5 = fused_conv2d(%0, %2, %1) {algorithm="winograd4", epilogue=in0, input_gather=[2,2,2], input_gather_upsample="bilinear_align_corners", pad=[1,1]}
            // CHECK-NEXT: %6 = fused_conv2d_grad_weight(%0, %5, %1) {algorithm="winograd4", input_gather=[2,2,2], input_gather_upsample="bilinear_align_corners", pad=[1,1], weight_shape=[4,5,3,3]}
            // CHECK-NOT: upsample_bilinear(
            // CHECK-NOT: concat(
            """, passes: [FuseConvGather.name])
        try agree(try Parser.parse(source), after, seed: 5)
    }

    /// A bilinear upsampling alone (TransUNet's last decoder block), here
    /// without align_corners and by other factors.
    func testReadsABilinearUpsamplingAlone() throws {
        let source = """
            func @f(%0: f32[1,3,2,3] input "x", %1: f32[2,3,3,3] param "w") {
              %2 = upsample_bilinear(%0) {size=[6,6]} : f32[1,3,6,6]
              %3 = fused_conv2d(%2, %1) {algorithm="winograd2", epilogue=in0, pad=[1,1]} : f32[1,2,6,6]
              return %3 as "y"
            }
            """
        let after = try checkIR(source + """

            // CHECK: %3 = fused_conv2d(%0, %1) {algorithm="winograd2", epilogue=in0, input_gather=[3,2,0], input_gather_upsample="bilinear", pad=[1,1]}
            // CHECK-NOT: upsample_bilinear(
            """, passes: [FuseConvGather.name])
        try agree(try Parser.parse(source), after, seed: 8)
    }

    /// A training step's forward convolution has no epilogue (its batch norm
    /// reads its value): it becomes a fused_conv2d whose epilogue is in0.
    func testAConvolutionWithoutAnEpilogueGetsTheIdentity() throws {
        let source = """
            func @f(%0: f32[1,3,2,3] input "x", %1: f32[2,3,3,3] param "w") {
              %2 = upsample_nearest(%0) {size=[4,6]} : f32[1,3,4,6]
              %3 = conv2d(%2, %1) {algorithm="winograd4", pad=[1,1]} : f32[1,2,4,6]
              return %3 as "y"
            }
            """
        let after = try checkIR(source + """

            // CHECK: %3 = fused_conv2d(%0, %1) {algorithm="winograd4", epilogue=in0, input_gather=[2,2,0], pad=[1,1]}
            """, passes: [FuseConvGather.name])
        try agree(try Parser.parse(source), after, seed: 6)
    }

    /// A training step's weight gradient reads the parts too, whether it
    /// reads the forward convolution's tensor or a copy of its own.
    func testTheWeightGradientReadsThePartsToo() throws {
        let source = Self.decoderBlock.replacingOccurrences(of: "return %7 as \"y\"", with: """
              %8 = conv2d_grad_weight(%6, %7) {algorithm="winograd4", pad=[1,1], weight_shape=[4,5,3,3]} : f32[4,5,3,3]
              return %7 as "y", %8 as "dw"
            """)
        let after = try checkIR(source + """

            // CHECK: %7 = fused_conv2d(%0, %2, %3, %4, %1) {algorithm="winograd4", epilogue=max(add(mul(in0, in1), in2), 0.0), input_gather=[2,2,2], pad=[1,1]}
            // CHECK-NEXT: %8 = fused_conv2d_grad_weight(%0, %7, %1) {algorithm="winograd4", input_gather=[2,2,2], pad=[1,1], weight_shape=[4,5,3,3]}
            // CHECK-NOT: insert(
            """, passes: [FuseConvGather.name])
        try agree(try Parser.parse(source), after, seed: 7)
    }

    /// The input gradient of a convolution that read a bilinear upsampling
    /// alone is taken back through it by one node, whose value is the
    /// gradient wrt x: the gradient wrt the upsampled input is never held.
    func testTheInputGradientIsTakenBackThroughALoneUpsampling() throws {
        let source = """
            func @f(%0: f32[2,2,6,8] input "dy", %1: f32[2,3,3,3] param "w") {
              %2 = conv2d_grad_input(%0, %1) {algorithm="winograd4", input_shape=[2,3,6,8], pad=[1,1]} : f32[2,3,6,8]
              %3 = upsample_bilinear_grad(%2) {align_corners=true, input_shape=[2,3,3,4], size=[6,8]} : f32[2,3,3,4]
              %4 = upsample_nearest_grad(%0) {input_shape=[2,2,3,4], size=[6,8]} : f32[2,2,3,4]
              return %3 as "dx", %4 as "other"
            }
            """
        let after = try checkIR(source + """

            // CHECK: %3 = fused_conv2d_grad_input(%0, %1) {algorithm="winograd4", epilogue=in0, input_gather=[2,2,0], input_gather_upsample="bilinear_align_corners", input_shape=[2,3,6,8], pad=[1,1]} : f32[2,3,3,4]
            // CHECK-NEXT: %4 = upsample_nearest_grad(%0)
            // CHECK-NOT: conv2d_grad_input(
            """, passes: [FuseConvGather.name])
        try agree(try Parser.parse(source), after, seed: 9)
    }

    /// An input gradient another node reads too, or one by im2col, stays.
    func testLeavesAnInputGradientItCannotTakeBack() throws {
        let read = """
            func @f(%0: f32[1,2,6,6] input "dy", %1: f32[2,3,3,3] param "w") {
              %2 = conv2d_grad_input(%0, %1) {algorithm="winograd2", input_shape=[1,3,6,6], pad=[1,1]} : f32[1,3,6,6]
              %3 = upsample_nearest_grad(%2) {input_shape=[1,3,3,3], size=[6,6]} : f32[1,3,3,3]
              return %3 as "dx", %2 as "full"
            }
            """
        let direct = read.replacingOccurrences(of: "algorithm=\"winograd2\", ", with: "")
            .replacingOccurrences(of: ", %2 as \"full\"", with: "")
        for source in [read, direct] {
            var module = try Parser.parse(source)
            XCTAssertEqual(try runPasses([FuseConvGather.name], on: &module), [false], source)
        }
    }

    /// A concatenation another node reads (an im2col weight gradient), an
    /// im2col convolution's and an upsampling by a fraction stay as they are.
    func testLeavesWhatItCannotReadFromItsParts() throws {
        let read = Self.decoderBlock.replacingOccurrences(of: "return %7 as \"y\"", with: """
              %8 = conv2d_grad_weight(%6, %7) {pad=[1,1], weight_shape=[4,5,3,3]} : f32[4,5,3,3]
              return %7 as "y", %8 as "dw"
            """)
        let direct = Self.decoderBlock.replacingOccurrences(of: "algorithm=\"winograd4\", ", with: "")
        let fractional = """
            func @f(%0: f32[1,3,4,4] input "x", %1: f32[2,3,3,3] param "w") {
              %2 = upsample_nearest(%0) {size=[6,6]} : f32[1,3,6,6]
              %3 = fused_conv2d(%2, %1) {algorithm="winograd2", epilogue=in0, pad=[1,1]} : f32[1,2,6,6]
              return %3 as "y"
            }
            """
        for source in [read, direct, fractional] {
            var module = try Parser.parse(source)
            XCTAssertEqual(try runPasses([FuseConvGather.name], on: &module), [false], source)
        }
    }

    /// The type rule refuses a skip of the wrong shape and a gathered input
    /// without a Winograd algorithm; an input gradient's, a skip or an
    /// epilogue too.
    func testTheTypeRuleChecksTheParts() throws {
        let fused = """
            func @f(%0: f32[2,3,3,4] input "x", %1: f32[2,2,6,8] input "skip", %2: f32[4,5,3,3] param "w") {
              %3 = fused_conv2d(%0, %2, %1) {algorithm="winograd4", epilogue=in0, input_gather=[2,2,2], pad=[1,1]} : f32[2,4,6,8]
              return %3 as "y"
            }
            """
        XCTAssertNoThrow(try Verifier.verify(try Parser.parse(fused)))
        let gradient = """
            func @f(%0: f32[2,2,6,8] input "dy", %1: f32[2,3,3,3] param "w") {
              %2 = fused_conv2d_grad_input(%0, %1) {algorithm="winograd4", epilogue=in0, input_gather=[2,2,0], input_shape=[2,3,6,8], pad=[1,1]} : f32[2,3,3,4]
              return %2 as "dx"
            }
            """
        XCTAssertNoThrow(try Verifier.verify(try Parser.parse(gradient)))
        let cases = [
            (fused.replacingOccurrences(of: "input_gather=[2,2,2]", with: "input_gather=[2,2,3]"), "the last operand, the skip, must be [2, 3, 6, 8]"),
            (fused.replacingOccurrences(of: "algorithm=\"winograd4\", ", with: ""), "only a Winograd convolution gathers its input"),
            (fused.replacingOccurrences(of: "input_gather=[2,2,2]", with: "input_gather=[0,2,2]"), "whole factors of at least 1"),
            (fused.replacingOccurrences(of: "input_gather=[2,2,2]", with: "input_gather=[2,2,2], input_gather_upsample=\"bicubic\""),
             "needs \"bilinear\" or \"bilinear_align_corners\""),
            (fused.replacingOccurrences(of: "input_gather=[2,2,2]", with: "input_gather_upsample=\"bilinear\""), "without input_gather="),
            (gradient.replacingOccurrences(of: "input_gather=[2,2,0]", with: "input_gather=[2,2,1]"), "the skip's channels must be 0"),
            (gradient.replacingOccurrences(of: "%1: f32[2,3,3,3] param \"w\"", with: "%1: f32[2,3,3,3] param \"w\", %9: f32[2,3,6,8] input \"g\"")
                .replacingOccurrences(of: "(%0, %1) {algorithm=\"winograd4\", epilogue=in0", with: "(%0, %1, %9) {algorithm=\"winograd4\", epilogue=add(in0, in1)"),
             "has the epilogue in0"),
            (gradient.replacingOccurrences(of: "algorithm=\"winograd4\", ", with: ""), "only a Winograd convolution gathers its input"),
        ]
        for (source, expected) in cases {
            XCTAssertThrowsError(try Verifier.verify(try Parser.parse(source))) { error in
                let message = (error as? IRError)?.message ?? "\(error)"
                XCTAssertTrue(message.contains(expected), message)
            }
        }
    }

    /// The whole pipeline on UNet.small's inference, Winograd wherever it
    /// applies, gives the pipeline's output without the pass in the f64
    /// interpreter, and no concatenation or upsampling is left.
    func testUNetSmallInferenceAgreesWithoutTheFusion() throws {
        var fused = Module(functions: [try UNetSmall.function("infer")])
        var unfused = fused
        try PassManager(PassManager.standardPipeline(convAlgorithm: .winograd)).run(&fused)
        try PassManager(PassManager.standardPipeline(convAlgorithm: .winograd).filter { !($0 is FuseConvGather) }).run(&unfused)
        let nodes = fused.functions[0].nodes
        XCTAssertGreaterThan(nodes.filter { $0.attrs[FusedConvOps.Gather.key] != nil }.count, 0)
        XCTAssertEqual(nodes.filter { ["insert", "upsample_nearest", "concat"].contains($0.op) }.count, 0, "\(nodes.map(\.op))")
        try agree(unfused, fused, seed: 11)
    }

    /// The whole pipeline on the tiny TransUNet's inference, DDeP step and
    /// fine-tuning step (whose skips take their gradients too), Winograd
    /// wherever it applies: its decoder's bilinear upsamplings are
    /// all gathered (forward convolutions and weight gradients), every
    /// block's input gradient is taken back through its upsampling (the
    /// concatenations' by split-conv-grad-input's parts), and the f64
    /// interpreter gives the outputs and updates of the pipeline without
    /// either pass.
    func testTinyTransUNetAgreesWithoutTheFusion() throws {
        let module = try buildModule(TransUNet.tiny, config: EntryConfig(batch: 2, size: 32, classes: 3, entries: [.infer, .pretrainStep, .finetuneStep]))
        var fused = module
        var unfused = module
        try PassManager(PassManager.standardPipeline(convAlgorithm: .winograd)).run(&fused)
        try PassManager(PassManager.standardPipeline(convAlgorithm: .winograd).filter { !($0 is FuseConvGather || $0 is SplitConvGradInput) }).run(&unfused)
        for (before, after) in zip(unfused.functions, fused.functions) where ["infer", "pretrain_step", "finetune_step"].contains(before.name) {
            let gathered = after.nodes.filter { (try? FusedConvOps.Gather.read($0.attrs))??.upsample == .bilinear(alignCorners: true) }
            XCTAssertEqual(Set(gathered.map(\.op)), before.name == "infer" ? ["fused_conv2d"]
                           : ["fused_conv2d", "fused_conv2d_grad_weight", "fused_conv2d_grad_input"], before.name)
            XCTAssertEqual(after.nodes.filter { ["upsample_bilinear", "upsample_bilinear_grad"].contains($0.op) }.count, 0, before.name)
            XCTAssertEqual(after.nodes.filter { $0.op == "fused_conv2d_grad_input" && $0.attrs[FusedConvOps.Gather.key] != nil }.count,
                           before.nodes.filter { $0.op == "upsample_bilinear_grad" }.count, before.name)
            try assertSameOutputsAndUpdates(before, after, seed: 12, classes: 3, tolerance: 1e-9)
        }
    }
}
