import Foundation
import IR
import Passes
import Runtime
import Driver
import TestSupport
import XCTest

/// fuse-conv-moments end to end (`--moments-in-epilogue`): a convolution followed by batch_moments
/// of its result (im2col, Winograd F(4×4) and F(2×2), with an epilogue and
/// a prologue) gathers the moments in its epilogue on both backends. They
/// agree with the f64 interpreter, and they are the very bits the
/// batch_moments kernel computes from the stored result.
final class ConvMomentsTests: XCTestCase {
    static let source = """
        func @fused(%0: f32[3,4,9,7] input "x", %1: f32[5,4,3,3] param "w", %2: f32[6,5,1,1] param "w1",
                    %3: f32[5,1,1] param "scale", %4: f32[5,1,1] param "shift", %13: f32[5,5,3,3] param "w2", %14: f32[6,1,1] param "bias") {
          %5 = conv2d(%0, %1) {pad=[1,1]} : f32[3,5,9,7]
          %6 = batch_moments(%5) : f32[2,5]
          %7 = conv2d(%0, %1) {algorithm="winograd4", pad=[1,1]} : f32[3,5,9,7]
          %8 = batch_moments(%7) : f32[2,5]
          %9 = fused_conv2d(%7, %13, %3, %4) {algorithm="winograd2", epilogue=in0, pad=[0,1], prologue=max(add(mul(in0, in1), in2), 0.0)} : f32[3,5,7,7]
          %10 = batch_moments(%9) : f32[2,5]
          %11 = fused_conv2d(%9, %2, %14) {epilogue=max(add(in0, in1), 0.0)} : f32[3,6,7,7]
          %12 = batch_moments(%11) : f32[2,6]
          return %5 as "y0", %6 as "m0", %7 as "y1", %8 as "m1", %9 as "y2", %10 as "m2", %11 as "y3", %12 as "m3"
        }
        func @separate(%0: f32[3,5,9,7] input "y0", %1: f32[3,5,9,7] input "y1", %2: f32[3,5,7,7] input "y2", %3: f32[3,6,7,7] input "y3") {
          %4 = batch_moments(%0) : f32[2,5]
          %5 = batch_moments(%1) : f32[2,5]
          %6 = batch_moments(%2) : f32[2,5]
          %7 = batch_moments(%3) : f32[2,6]
          return %4 as "m0", %5 as "m1", %6 as "m2", %7 as "m3"
        }
        """

    func testEveryConvolutionGathersTheBitsBatchMomentsComputes() throws {
        let module = try Parser.parse(Self.source)
        let fused = try XCTUnwrap(module["fused"])
        var rng = TestRNG(seed: 21)
        var arguments: [String: HostTensor] = [:]
        for (i, arg) in fused.args.enumerated() { arguments[arg.name] = sampleTensor(arg.type, op: "conv2d", operand: i, rng: &rng) }
        let expected = try Interpreter.run(fused, arguments: arguments).outputs
        for backend in Backend.allCases {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-moments-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: dir) }
            var options = CompileOptions()
            options.backend = backend
            options.momentsInEpilogue = true
            let artifact = dir.appendingPathComponent("moments.ddepc")
            _ = try CompileDriver.compile(module, to: artifact, options: options)
            let executor = try Executor(artifact: try Artifact(directory: artifact))
            let finalIR = try executor.artifact.finalIR
            XCTAssertEqual(finalIR.components(separatedBy: "in_epilogue=true").count - 1, 4, "\(backend): every one is gathered\n\(finalIR)")
            for arg in fused.args where arg.role != .input { try executor.set(arg.name, arguments[arg.name]!) }
            let got = try executor.run("fused", inputs: ["x": arguments["x"]!])
            let outputs = (0..<4).map { "y\($0)" }
            let separate = try executor.run("separate", inputs: Dictionary(uniqueKeysWithValues: outputs.map { ($0, got[$0]!) }))
            for k in 0..<4 {
                let name = "m\(k)"
                XCTAssertEqual(got[name]!.data, separate[name]!.data, "\(backend) \(name): the epilogue's bits are batch_moments'")
                // f32 convolutions (Winograd's rounding included) against f64.
                let worst = closeness(got[name]!.data, expected[name]!.data, atol: 1e-4, rtol: 1e-4)
                XCTAssertLessThanOrEqual(worst, 1, "\(backend) \(name): \(got[name]!.data) vs \(expected[name]!.data)")
            }
        }
    }
}
