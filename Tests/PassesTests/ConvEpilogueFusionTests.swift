import Foundation
import IR
import Passes
import TestSupport
import XCTest

/// `fuse-conv-epilogue`: which followers a convolution absorbs, what the dump
/// shows, and that the fused function computes what the unfused one did (the
/// f64 interpreter, before and after, on the same arguments).
final class ConvEpilogueFusionTests: XCTestCase {
    let passes = [FuseElementwise.name, FuseConvEpilogue.name, DCE.name]

    /// Runs the passes on `source`, checks the directives and the f64 outputs.
    func golden(_ source: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let fused = try checkIR(source, passes: passes, file: file, line: line)
        // Folding a norm into scale and shift reassociates: a few ulps of f64.
        try assertComputesTheSame(try Parser.parse(source), fused, seed: 7, tolerance: 1e-12, adjust: { function, arguments in
            // Variances must be positive.
            for arg in function.args where arg.name.hasPrefix("var") {
                arguments[arg.name] = HostTensor(arg.type, arguments[arg.name]!.data.map { 0.5 + abs($0) })
            }
        }, file: file, line: line)
    }

    static let header = """
        func @f(%0: f32[2,3,6,6] input "x", %1: f32[4,3,3,3] param "w", %2: f32[4] input "mean", %3: f32[4] input "var",
                %4: f32[4] param "gamma", %5: f32[4] param "beta", %6: f32[2,4,6,6] input "skip", %7: f32[1,4,1,1] param "bias") {
          %8 = conv2d(%0, %1) {pad=[1,1]} : f32[2,4,6,6]
        """

    func testFoldsABatchNormAndAReLUIntoTheConvolution() throws {
        try golden(Self.header + """
              %9 = batch_norm(%8, %2, %3, %4, %5) {eps=1e-05} : f32[2,4,6,6]
              %10 = relu(%9) : f32[2,4,6,6]
              return %10 as "y"
            }
            // The norm becomes a per-channel scale and shift, computed once on [4]-vectors.
            // CHECK: %11 = fused_elementwise(%3, %4) {expr=mul(rsqrt(add(in0, 1e-05)), in1)} : f32[4]
            // CHECK-NEXT: %12 = fused_elementwise(%5, %2, %11) {expr=sub(in0, mul(in1, in2))} : f32[4]
            // CHECK-NEXT: %13 = reshape(%11) {shape=[4,1,1]} : f32[4,1,1]
            // CHECK-NEXT: %14 = reshape(%12) {shape=[4,1,1]} : f32[4,1,1]
            // CHECK-NEXT: %10 = fused_conv2d(%0, %1, %13, %14) {epilogue=max(add(mul(in0, in1), in2), 0.0), pad=[1,1]} : f32[2,4,6,6]
            // CHECK-NOT: batch_norm(
            // CHECK-NOT: relu(
            """)
    }

    func testAbsorbsTheResidualAddOfABlock() throws {
        try golden(Self.header + """
              %9 = batch_norm(%8, %2, %3, %4, %5) {eps=1e-05} : f32[2,4,6,6]
              %10 = add(%9, %6) : f32[2,4,6,6]
              %11 = relu(%10) : f32[2,4,6,6]
              return %11 as "y"
            }
            // CHECK: %11 = fused_conv2d(%0, %1, %14, %15, %6) {epilogue=max(add(add(mul(in0, in1), in2), in3), 0.0), pad=[1,1]} : f32[2,4,6,6]
            // CHECK-NOT: fused_elementwise(%
            """)
    }

    func testAbsorbsABias() throws {
        try golden(Self.header + """
              %9 = add(%8, %7) : f32[2,4,6,6]
              return %9 as "y"
            }
            // CHECK: %9 = fused_conv2d(%0, %1, %7) {epilogue=add(in0, in1), pad=[1,1]} : f32[2,4,6,6]
            """)
    }

    func testLeavesAValueThatIsUsedTwiceOrReturned() throws {
        // The convolution's value is also an output: fusing would lose it.
        try golden(Self.header + """
              %9 = relu(%8) : f32[2,4,6,6]
              return %9 as "y", %8 as "z"
            }
            // CHECK: %8 = conv2d(%0, %1) {pad=[1,1]} : f32[2,4,6,6]
            // CHECK-NEXT: %9 = relu(%8)
            """)
        // The norm's value feeds two ops: the conv takes the norm, not what follows
        // (whose expression, add(x, max(x, 0)), reads it twice).
        try golden(Self.header + """
              %9 = batch_norm(%8, %2, %3, %4, %5) {eps=1e-05} : f32[2,4,6,6]
              %10 = relu(%9) : f32[2,4,6,6]
              %11 = add(%9, %10) : f32[2,4,6,6]
              return %11 as "y"
            }
            // CHECK: %9 = fused_conv2d(%0, %1, %14, %15) {epilogue=add(mul(in0, in1), in2), pad=[1,1]}
            // CHECK-NEXT: %11 = fused_elementwise(%9) {expr=add(in0, max(in0, 0.0))}
            """)
    }

    func testLeavesWhatTheKernelCannotCompute() throws {
        // A product with a full tensor, and a sigmoid, are not in the kernel's family.
        try golden(Self.header + """
              %9 = mul(%8, %6) : f32[2,4,6,6]
              %10 = sigmoid(%8) : f32[2,4,6,6]
              return %9 as "y", %10 as "z"
            }
            // CHECK: %8 = conv2d(%0, %1)
            // CHECK-NOT: fused_conv2d(
            """)
        try golden(Self.header + """
              %9 = sigmoid(%8) : f32[2,4,6,6]
              return %9 as "y"
            }
            // CHECK: %8 = conv2d(%0, %1)
            // CHECK-NOT: fused_conv2d(
            """)
    }

    /// The backward of a ReLU before a convolution: the input gradient is
    /// gated by the ReLU's output, after a gradient from a skip connection is
    /// added, inside the kernel.
    func testFusesAReLUsBackwardIntoTheInputGradient() throws {
        let header = """
            func @f(%0: f32[2,4,6,6] input "dy", %1: f32[4,3,3,3] param "w", %2: f32[2,3,6,6] input "relu_out",
                    %3: f32[2,3,6,6] input "skip_grad") {
              %4 = conv2d_grad_input(%0, %1) {input_shape=[2,3,6,6], pad=[1,1]} : f32[2,3,6,6]
              %5 = constant() {value=0.0} : f32[]
              %6 = greater(%2, %5) : f32[2,3,6,6]
            """
        try golden(header + """
              %7 = mul(%4, %6) : f32[2,3,6,6]
              return %7 as "dx"
            }
            // CHECK: %7 = fused_conv2d_grad_input(%0, %1, %2) {epilogue=mul(in0, gt(in1, 0.0)), input_shape=[2,3,6,6], pad=[1,1]} : f32[2,3,6,6]
            // CHECK-NOT: fused_elementwise(
            """)
        try golden(header + """
              %7 = add(%4, %3) : f32[2,3,6,6]
              %8 = mul(%7, %6) : f32[2,3,6,6]
              return %8 as "dx"
            }
            // CHECK: %8 = fused_conv2d_grad_input(%0, %1, %3, %2) {epilogue=mul(add(in0, in1), gt(in2, 0.0)), input_shape=[2,3,6,6], pad=[1,1]} : f32[2,3,6,6]
            """)
        // Gated before the sum, then a sigmoid: one loop, not the kernel's family.
        try golden(header + """
              %7 = mul(%4, %6) : f32[2,3,6,6]
              %8 = add(%7, %3) : f32[2,3,6,6]
              %9 = sigmoid(%8) : f32[2,3,6,6]
              return %9 as "dx"
            }
            // CHECK: %4 = conv2d_grad_input(%0, %1)
            // CHECK-NEXT: fused_elementwise(%4, %2, %3) {expr=sigmoid(add(mul(in0, gt(in1, 0.0)), in2))}
            """)
    }

    func testTheTypeRuleRefusesAnEpilogueTheKernelCannotRun() throws {
        let source = """
            func @f(%0: f32[1,3,5,5] input "x", %1: f32[4,3,1,1] param "w") {
              %2 = fused_conv2d(%0, %1) {epilogue=tanh(in0)} : f32[1,4,5,5]
              return %2 as "y"
            }
            """
        XCTAssertThrowsError(try Verifier.verify(try Parser.parse(source))) { error in
            XCTAssertTrue("\(error)".contains("cannot apply the epilogue tanh(in0)"), "\(error)")
        }
        // A gate must be a full tensor: per channel, it is no ReLU's backward.
        let perChannelGate = """
            func @f(%0: f32[1,4,5,5] input "dy", %1: f32[4,3,1,1] param "w", %2: f32[3,1,1] param "g") {
              %3 = fused_conv2d_grad_input(%0, %1, %2) {epilogue=mul(in0, gt(in1, 0.0)), input_shape=[1,3,5,5]} : f32[1,3,5,5]
              return %3 as "dx"
            }
            """
        XCTAssertThrowsError(try Verifier.verify(try Parser.parse(perChannelGate))) { error in
            XCTAssertTrue("\(error)".contains("cannot apply the epilogue mul(in0, gt(in1, 0.0)) to operands [\"per-channel\"]"), "\(error)")
        }
    }

    /// A training step of the small U-Net: the input gradient of every
    /// convolution after a ReLU takes the ReLU's backward, and the step
    /// computes the same in the f64 interpreter.
    func testUNetTrainingStepGatesItsInputGradientsInTheKernel() throws {
        var unfused = Module(functions: [try UNetSmall.function("finetune_step")])
        try runPasses([Autodiff.name, AdamOptimizer.name, FoldConstants.name, CSE.name, DCE.name, FuseElementwise.name], on: &unfused)
        var fused = unfused
        XCTAssertEqual(try runPasses([FuseConvEpilogue.name, DCE.name], on: &fused).first, true)
        let after = fused.functions[0]
        let gated = after.nodes.filter { node in
            guard node.op == "fused_conv2d_grad_input", let epilogue = try? node.attrs.expr("epilogue") else { return false }
            return "\(epilogue)".contains("gt(")
        }
        XCTAssertGreaterThan(gated.count, 2)
        let arguments = randomArguments(for: unfused.functions[0], seed: 5)
        let expected = try Interpreter.run(unfused.functions[0], arguments: arguments)
        let got = try Interpreter.run(after, arguments: arguments)
        for (output, value) in expected.outputs {
            XCTAssertLessThanOrEqual(maxRelativeDifference(got.outputs[output]!.data, value.data), 1e-9, output)
        }
    }

    /// The small U-Net's inference and frozen-encoder DDeP steps: every
    /// convolution followed by a norm with given statistics (inference, and
    /// the frozen encoder in DDeP) is fused, and
    /// the whole function computes the same in the f64 interpreter.
    func testUNetInferenceAndDDePEncoderAreFused() throws {
        for name in ["infer", "pretrain_step"] {
            var unfused = Module(functions: [try UNetSmall.function(name)])
            try runPasses([Autodiff.name, AdamOptimizer.name, FoldConstants.name, CSE.name, DCE.name, FuseElementwise.name], on: &unfused)
            var fused = unfused
            XCTAssertEqual(try runPasses([FuseConvEpilogue.name, DCE.name], on: &fused).first, true, name)
            let after = fused.functions[0]
            let uses = after.nodes.flatMap(\.operands).reduce(into: [ValueID: Int]()) { $0[$1, default: 0] += 1 }
            // What stays is a training-mode norm: its statistics read the convolution too.
            for node in after.nodes where node.op == "batch_norm" && uses[node.operands[0]] == 1 {
                XCTFail("\(name): %\(node.id) = batch_norm of the single-use %\(node.operands[0]) is not fused")
            }
            if name == "infer" { XCTAssertFalse(after.nodes.contains { $0.op == "batch_norm" }, "inference folds every norm") }
            XCTAssertGreaterThan(after.nodes.filter { $0.op == "fused_conv2d" }.count, 5, name)
            let arguments = randomArguments(for: unfused.functions[0], seed: 3)
            let expected = try Interpreter.run(unfused.functions[0], arguments: arguments)
            let got = try Interpreter.run(after, arguments: arguments)
            for (output, value) in expected.outputs {
                XCTAssertLessThanOrEqual(maxRelativeDifference(got.outputs[output]!.data, value.data), 1e-9, "\(name) \(output)")
            }
        }
    }
}
