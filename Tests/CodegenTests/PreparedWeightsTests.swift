import Foundation
import IR
import Passes
import Runtime
import Driver
import TestSupport
import XCTest

/// `prepare-weights`: inference's Winograd filters transformed once by a
/// companion entry point. The prepared IR computes what the original does
/// (the interpreter, in f64), both backends agree with the interpreter with
/// the filters packed for this machine's panels and for another ISA's (the
/// kernel then repacks them), new weights are prepared again, and prepared
/// state never reaches a checkpoint.
final class PreparedWeightsTests: XCTestCase {
    /// Two entry points reading the same filters (one state buffer), F(4×4)
    /// and F(2×2), a convolution of a computed filter (not prepared), and a
    /// training step (never prepared: its weights change every call).
    static let source = """
        func @infer(%0: f32[2,4,9,7] input "x", %1: f32[5,4,3,3] param "w", %2: f32[5,1,1] param "scale", %3: f32[5,1,1] param "shift",
                    %4: f32[3,5,3,3] param "w2", %9: f32[3,1,1] param "bias") {
          %5 = fused_conv2d(%0, %1, %2, %3) {algorithm="winograd4", epilogue=max(add(mul(in0, in1), in2), 0.0), pad=[1,1]} : f32[2,5,9,7]
          %6 = fused_conv2d(%5, %4, %9) {algorithm="winograd2", epilogue=add(in0, in1), pad=[1,1]} : f32[2,3,9,7]
          %7 = mul(%4, %4) : f32[3,5,3,3]
          %8 = fused_conv2d(%5, %7, %9) {algorithm="winograd4", epilogue=add(in0, in1), pad=[0,2]} : f32[2,3,7,9]
          return %6 as "logits", %8 as "squared"
        }
        func @denoise(%0: f32[2,4,9,7] input "x", %1: f32[5,4,3,3] param "w", %2: f32[5,1,1] param "scale", %3: f32[5,1,1] param "shift") {
          %5 = fused_conv2d(%0, %1, %2, %3) {algorithm="winograd4", epilogue=max(add(mul(in0, in1), in2), 0.0), pad=[1,1]} : f32[2,5,9,7]
          return %5 as "prediction"
        }
        func @step(%0: f32[2,4,9,7] input "x", %1: f32[5,4,3,3] param "w", %2: f32[5,1,1] param "scale", %3: f32[5,1,1] param "shift") {
          %5 = fused_conv2d(%0, %1, %2, %3) {algorithm="winograd4", epilogue=max(add(mul(in0, in1), in2), 0.0), pad=[1,1]} : f32[2,5,9,7]
          %6 = mul(%1, %1) : f32[5,4,3,3]
          return %5 as "y"
          update %1 = %6
        }
        """

    func arguments(of function: Function, seed: UInt64, scaled: Double = 1) -> [String: HostTensor] {
        var rng = TestRNG(seed: seed)
        var values: [String: HostTensor] = [:]
        for (i, arg) in function.args.enumerated() {
            let t = sampleTensor(arg.type, op: "conv2d", operand: i, rng: &rng)
            values[arg.name] = HostTensor(t.type, t.data.map { $0 * scaled })
        }
        return values
    }

    func testThePreparedIRComputesWhatTheOriginalDoes() throws {
        let original = try Parser.parse(Self.source)
        var prepared = original
        XCTAssertTrue(try PrepareWeights(panelRows: 12).run(&prepared))
        XCTAssertEqual(prepared.functions.map(\.name), ["infer", "denoise", "step", "prepare_infer", "prepare_denoise"])
        try Verifier.verify(prepared)
        let text = Printer.print(prepared)
        XCTAssertTrue(text.contains(#"winograd_filters(%0) {algorithm="winograd4", panel=12}"#), text)
        XCTAssertTrue(text.contains(#"state "prepared.w.winograd4.p12""#), text)
        XCTAssertTrue(text.contains(#"state "prepared.w2.winograd2.p12""#), text)
        XCTAssertEqual(prepared["step"], original["step"], "a step that updates its weights keeps its filters")
        XCTAssertEqual(prepared["infer"]!.nodes.filter { $0.attrs[WinogradFilterOps.panelKey] != nil }.count, 2,
                       "the squared filter is computed in the call, so its convolution transforms it")

        for name in ["infer", "denoise"] {
            let function = original[name]!
            let weights = arguments(of: function, seed: 7)
            let want = try Interpreter.run(function, arguments: weights).outputs
            let preparer = prepared[PreparedWeights.preparerName(of: name)]!
            var preparerArguments = weights.filter { key, _ in preparer.argument(named: key) != nil }
            for arg in preparer.args where arg.role == .state { preparerArguments[arg.name] = HostTensor(arg.type, [Double](repeating: .nan, count: arg.type.count)) }
            var all = weights
            for (target, value) in try Interpreter.run(preparer, arguments: preparerArguments).updates { all[target] = value }
            let got = try Interpreter.run(prepared[name]!, arguments: all).outputs
            for (output, value) in want {
                XCTAssertLessThanOrEqual(closeness(got[output]!.data, value.data, atol: 1e-12, rtol: 1e-10), 1, "\(name) \(output)")
            }
        }
    }

    func testBothBackendsAgreeWithTheInterpreterForEitherPanelAndNewWeights() throws {
        let module = try Parser.parse(Self.source)
        let infer = module["infer"]!
        for backend in Backend.allCases {
            for panel in [12, 6] { // AVX-512's and AVX2's: one of them is repacked by the kernel on this machine
                let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-test-\(UUID().uuidString)")
                defer { try? FileManager.default.removeItem(at: dir) }
                var options = CompileOptions()
                options.backend = backend
                options.panelRows = panel
                let artifact = try Artifact(directory: try CompileDriver.compile(module, to: dir.appendingPathComponent("t.ddepc"), options: options).artifact)
                XCTAssertEqual(artifact.manifest.layout.entry("infer")?.preparedBy, "prepare_infer")
                XCTAssertNil(artifact.manifest.layout.entry("step")?.preparedBy)
                XCTAssertTrue(try artifact.finalIR.contains("panel=\(panel)"))
                let executor = try Executor(artifact: artifact)
                for (round, scale) in [1.0, -0.5].enumerated() {
                    // The second round sets other weights: they must be prepared again.
                    let weights = arguments(of: infer, seed: 11, scaled: scale)
                    var inputs: [String: HostTensor] = [:]
                    for arg in infer.args {
                        if arg.role == .input { inputs[arg.name] = weights[arg.name] } else { try executor.set(arg.name, weights[arg.name]!) }
                    }
                    let want = try Interpreter.run(infer, arguments: weights).outputs
                    let got = try executor.run("infer", inputs: inputs)
                    for (output, value) in want {
                        XCTAssertLessThanOrEqual(closeness(got[output]!.data, value.data, atol: 1e-5, rtol: 1e-4), 1,
                                                 "\(backend) panel \(panel) round \(round) \(output)")
                    }
                }
                let saved = try executor.store.withExport(metadata: [:]) { $0.names }
                XCTAssertFalse(saved.contains { PreparedWeights.isPrepared($0) }, "prepared state is not saved")
                XCTAssertTrue(saved.contains("w"))
            }
        }
    }
}
