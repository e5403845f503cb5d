import IR
import Passes
import TestSupport
import XCTest

/// split-conv-grad-input: an input gradient read only by slices along its
/// channels (a concatenation's gradient) is computed by parts, each from
/// the filters' matching input channels.
final class SplitConvGradInputTests: XCTestCase {
    /// A decoder block's backward: the gradient of concat(upsample(x), skip)
    /// sliced into the upsampled part and the skip's.
    static let concatenationGradient = """
        func @f(%0: f32[2,4,6,8] input "dy", %1: f32[4,5,3,3] param "w") {
          %2 = conv2d_grad_input(%0, %1) {algorithm="winograd4", input_shape=[2,5,6,8], pad=[1,1]} : f32[2,5,6,8]
          %3 = slice(%2) {end=[2,3,6,8], start=[0,0,0,0]} : f32[2,3,6,8]
          %4 = slice(%2) {end=[2,5,6,8], start=[0,3,0,0]} : f32[2,2,6,8]
          %5 = upsample_bilinear_grad(%3) {align_corners=true, input_shape=[2,3,3,4], size=[6,8]} : f32[2,3,3,4]
          return %5 as "dx", %4 as "dskip"
        }
        """

    func testEachSliceIsTheGradientOfItsFilters() throws {
        let after = try checkIR(Self.concatenationGradient + """

            // CHECK: %6 = slice(%1) {end=[4,3,3,3], start=[0,0,0,0]} : f32[4,3,3,3]
            // CHECK-NEXT: %7 = slice(%1) {end=[4,5,3,3], start=[0,3,0,0]} : f32[4,2,3,3]
            // CHECK-NEXT: %3 = conv2d_grad_input(%0, %6) {algorithm="winograd4", input_shape=[2,3,6,8], pad=[1,1]} : f32[2,3,6,8]
            // CHECK-NEXT: %4 = conv2d_grad_input(%0, %7) {algorithm="winograd4", input_shape=[2,2,6,8], pad=[1,1]} : f32[2,2,6,8]
            // CHECK-NOT: %2 =
            """, passes: [SplitConvGradInput.name])
        try assertComputesTheSame(try Parser.parse(Self.concatenationGradient), after, seed: 21, tolerance: 1e-12)
    }

    /// With fuse-conv-gather after it, the upsampled part is taken back
    /// through its upsampling by its own kernel: no slice is left.
    func testTheUpsampledPartIsThenGathered() throws {
        let after = try checkIR(Self.concatenationGradient + """

            // CHECK: %5 = fused_conv2d_grad_input(%0, %6) {algorithm="winograd4", epilogue=in0, input_gather=[2,2,0], input_gather_upsample="bilinear_align_corners", input_shape=[2,3,6,8], pad=[1,1]} : f32[2,3,3,4]
            // CHECK-NOT: upsample_bilinear_grad(
            """, passes: [SplitConvGradInput.name, FuseConvGather.name])
        try assertComputesTheSame(try Parser.parse(Self.concatenationGradient), after, seed: 22, tolerance: 1e-12)
    }

    /// A gradient read whole, an output, or of a grouped convolution stays.
    func testLeavesAGradientReadWholeOrGrouped() throws {
        let whole = Self.concatenationGradient.replacingOccurrences(of: "%4 as \"dskip\"", with: "%4 as \"dskip\", %2 as \"all\"")
        let rows = Self.concatenationGradient.replacingOccurrences(of: "end=[2,5,6,8], start=[0,3,0,0]", with: "end=[2,5,6,8], start=[0,3,1,0]")
            .replacingOccurrences(of: ": f32[2,2,6,8]", with: ": f32[2,2,5,8]")
        let grouped = """
            func @f(%0: f32[1,4,5,5] input "dy", %1: f32[4,2,3,3] param "w") {
              %2 = conv2d_grad_input(%0, %1) {groups=2, input_shape=[1,4,5,5], pad=[1,1]} : f32[1,4,5,5]
              %3 = slice(%2) {end=[1,2,5,5], start=[0,0,0,0]} : f32[1,2,5,5]
              return %3 as "dx"
            }
            """
        for source in [whole, rows, grouped] {
            var module = try Parser.parse(source)
            XCTAssertEqual(try runPasses([SplitConvGradInput.name], on: &module), [false], source)
        }
    }
}
