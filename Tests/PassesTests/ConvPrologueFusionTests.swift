import IR
import Passes
import TestSupport
import XCTest

/// `fuse-conv-prologue`: a Winograd convolution absorbs the normalize-and-ReLU
/// loop that is its input's only reader, the dump shows it, and the fused
/// function computes what the unfused one did (the f64 interpreter, before
/// and after, on the same arguments).
final class ConvPrologueFusionTests: XCTestCase {
    func golden(_ source: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let fused = try checkIR(source, passes: [FuseConvPrologue.name], file: file, line: line)
        try assertComputesTheSame(try Parser.parse(source), fused, seed: 11, tolerance: 1e-12, file: file, line: line)
    }

    static let header = """
        func @f(%0: f32[2,3,8,8] input "xc", %1: f32[1,3,1,1] input "s", %2: f32[3] input "t", %3: f32[4,3,3,3] param "w",
                %20: f32[1,4,1,1] input "bias") {
          %4 = reshape(%2) {shape=[1,3,1,1]} : f32[1,3,1,1]
        """

    /// A training step's batch norm and ReLU before a convolution (the
    /// activation's only reader): the loop goes, its expression becomes the
    /// prologue, scale and shift become the last operands.
    func testAWinogradConvolutionAbsorbsTheNormalizeAndReLUBeforeIt() throws {
        try golden(Self.header + """
              %5 = fused_elementwise(%4, %0, %1) {expr=max(add(mul(in2, in1), in0), 0.0)} : f32[2,3,8,8]
              %6 = conv2d(%5, %3) {algorithm="winograd4", pad=[1,1]} : f32[2,4,8,8]
              return %6 as "y"
            }
            // CHECK-NOT: fused_elementwise(
            // CHECK: %6 = fused_conv2d(%0, %3, %1, %4) {algorithm="winograd4", epilogue=in0, pad=[1,1], prologue=max(add(mul(in0, in1), in2), 0.0)} : f32[2,4,8,8]
            """)
    }

    /// An epilogue stays as it was, with the prologue's operands after its own.
    func testTheEpilogueKeepsItsOperands() throws {
        try golden(Self.header + """
              %5 = fused_elementwise(%0, %1, %4) {expr=add(mul(in0, in1), in2)} : f32[2,3,8,8]
              %6 = fused_elementwise(%2) {expr=exp(in0)} : f32[3]
              %7 = fused_conv2d(%5, %3, %20) {algorithm="winograd2", epilogue=max(add(in0, in1), 0.0), pad=[1,1]} : f32[2,4,8,8]
              return %7 as "y", %6 as "e"
            }
            // CHECK: %7 = fused_conv2d(%0, %3, %20, %1, %4) {algorithm="winograd2", epilogue=max(add(in0, in1), 0.0), pad=[1,1], prologue=add(mul(in0, in1), in2)} : f32[2,4,8,8]
            """)
    }

    /// In the backward pass the rematerialized activation is read by the
    /// convolution's weight gradient and as the ReLU gate of the input
    /// gradient below it: both read xc instead, and the loop goes.
    func testTheGradientsReadTheNormalizedValueInstead() throws {
        try golden(Self.header + """
              %5 = fused_elementwise(%0, %1, %4) {expr=max(add(mul(in0, in1), in2), 0.0)} : f32[2,3,8,8]
              %6 = fused_elementwise(%20) {expr=mul(in0, 2.0)} : f32[1,4,1,1]
              %7 = fused_elementwise(%6) {expr=add(in0, 0.5)} : f32[1,4,1,1]
              %8 = conv2d(%0, %3) {pad=[1,1]} : f32[2,4,8,8]
              %9 = fused_elementwise(%8, %7) {expr=mul(in0, in1)} : f32[2,4,8,8]
              %10 = conv2d_grad_weight(%5, %9) {algorithm="winograd4", pad=[1,1], weight_shape=[4,3,3,3]} : f32[4,3,3,3]
              %11 = fused_conv2d_grad_input(%9, %3, %5) {epilogue=mul(in0, gt(in1, 0.0)), input_shape=[2,3,8,8], pad=[1,1]} : f32[2,3,8,8]
              return %10 as "dw", %11 as "dx"
            }
            // CHECK-NOT: max(add(mul(in0, in1), in2), 0.0)} : f32[2,3,8,8]
            // CHECK: %10 = fused_conv2d_grad_weight(%0, %9, %1, %4) {algorithm="winograd4", pad=[1,1], prologue=max(add(mul(in0, in1), in2), 0.0), weight_shape=[4,3,3,3]} : f32[4,3,3,3]
            // CHECK-NEXT: %11 = fused_conv2d_grad_input(%9, %3, %0, %1, %4) {epilogue=mul(in0, gt(add(mul(in1, in2), in3), 0.0)), input_shape=[2,3,8,8], pad=[1,1]} : f32[2,3,8,8]
            """)
    }

    /// An im2col weight gradient takes no prologue: the loop stays for every reader.
    func testOneReaderThatCannotAbsorbKeepsTheLoop() throws {
        try golden(Self.header + """
              %5 = fused_elementwise(%0, %1, %4) {expr=max(add(mul(in0, in1), in2), 0.0)} : f32[2,3,8,8]
              %6 = conv2d(%0, %3) {pad=[1,1]} : f32[2,4,8,8]
              %7 = conv2d_grad_weight(%5, %6) {pad=[1,1], weight_shape=[4,3,3,3]} : f32[4,3,3,3]
              %8 = fused_conv2d_grad_input(%6, %3, %5) {epilogue=mul(in0, gt(in1, 0.0)), input_shape=[2,3,8,8], pad=[1,1]} : f32[2,3,8,8]
              return %7 as "dw", %8 as "dx"
            }
            // CHECK: %5 = fused_elementwise(%0, %1, %4)
            // CHECK: %8 = fused_conv2d_grad_input(%6, %3, %5) {epilogue=mul(in0, gt(in1, 0.0))
            """)
    }

    /// Nothing is computed twice or lost: an activation read again later, or
    /// returned, stays a loop of its own; an im2col convolution takes no
    /// prologue.
    func testLeavesSharedActivationsAndIm2colConvolutions() throws {
        try golden(Self.header + """
              %5 = fused_elementwise(%0, %1, %4) {expr=max(add(mul(in0, in1), in2), 0.0)} : f32[2,3,8,8]
              %6 = conv2d(%5, %3) {algorithm="winograd4", pad=[1,1]} : f32[2,4,8,8]
              %7 = fused_elementwise(%0, %1, %4) {expr=max(add(mul(in0, in1), in2), 0.0)} : f32[2,3,8,8]
              %8 = conv2d(%7, %3) {pad=[1,1]} : f32[2,4,8,8]
              %9 = fused_elementwise(%0, %1, %4) {expr=max(add(mul(in0, in1), in2), 0.0)} : f32[2,3,8,8]
              %10 = conv2d(%9, %3) {algorithm="winograd4", pad=[1,1]} : f32[2,4,8,8]
              return %6 as "y", %5 as "a", %8 as "z", %10 as "u", %9 as "b"
            }
            // CHECK: %5 = fused_elementwise(
            // CHECK: %6 = conv2d(%5, %3)
            // CHECK: %7 = fused_elementwise(
            // CHECK: %8 = conv2d(%7, %3) {pad=[1,1]}
            // CHECK: %10 = conv2d(%9, %3)
            // CHECK-NOT: prologue=
            """)
    }
}
