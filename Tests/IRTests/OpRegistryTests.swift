import XCTest
import IR
import Passes
import TestSupport

/// Walks every op in the registry: each has every part, each example round-trips
/// through the printer and parser, and every differentiable op's gradient rule
/// agrees with central finite differences of its f64 reference evaluation.
final class OpRegistryTests: XCTestCase {
    func testEveryOpHasEveryPart() throws {
        XCTAssertEqual(Set(OpRegistry.all.map(\.name)).count, OpRegistry.all.count, "op names are unique")
        for spec in OpRegistry.all {
            XCTAssertFalse(spec.doc.isEmpty, "\(spec.name) has a doc line")
            XCTAssertTrue(spec.doc.contains(spec.name), "\(spec.name)'s doc shows its printed form")
            XCTAssertFalse(spec.examples.isEmpty, "\(spec.name) has examples")
            for example in spec.examples {
                let type = try spec.checkedType(operands: example.operands, attrs: example.attrs)
                var rng = TestRNG(seed: 1)
                let operands = example.operands.enumerated().map { sampleTensor($1, op: spec.name, operand: $0, rng: &rng) }
                let result = try spec.evaluate(operands, example.attrs, type)
                XCTAssertEqual(result.type, type, "\(spec.name) evaluates to its inferred type")
                switch spec.lowering {
                case .kernels(let lower):
                    XCTAssertFalse(try lower(example.operands, type, example.attrs).isEmpty, "\(spec.name) lowers")
                case .elementwise(let exprOf):
                    _ = try exprOf(example.attrs)
                case .kernelOverLoop(let exprOf, let kernelOf):
                    XCTAssertLessThanOrEqual(try exprOf(example.attrs).inputCount, example.operands.count, "\(spec.name)'s loop reads its operands")
                    XCTAssertEqual(try kernelOf(example.operands, type, example.attrs).buffers.count, example.operands.count + 1,
                                   "\(spec.name)'s kernel gets the result and every operand")
                case .alias:
                    break
                }
            }
        }
    }

    func testEveryExampleRoundTripsThroughText() throws {
        for spec in OpRegistry.all {
            for example in spec.examples {
                var function = try singleOpFunction(spec, operands: example.operands, attrs: example.attrs, withLoss: false)
                function.nodes[0].loc = SourceLoc(file: "model \"x\".swift", line: 7)
                let module = Module(functions: [function])
                let text = Printer.print(module)
                let parsed = try Parser.parse(text)
                XCTAssertEqual(parsed, module, "round trip of \(spec.name):\n\(text)")
                XCTAssertEqual(Printer.print(parsed), text)
            }
        }
    }

    func testEveryGradientMatchesFiniteDifferences() throws {
        var checked: [String] = []
        for spec in OpRegistry.all where spec.gradient != nil {
            for (exampleIndex, example) in spec.examples.enumerated() where example.operands.contains(where: { $0.dtype.isFloat }) {
                let function = try singleOpFunction(spec, operands: example.operands, attrs: example.attrs, withLoss: true)
                var module = Module(functions: [function])
                _ = try Autodiff().run(&module)
                try Verifier.verify(module)
                let grad = module.functions[0]

                var rng = TestRNG(seed: UInt64(7 + exampleIndex))
                var args: [String: HostTensor] = [:]
                for arg in function.args {
                    let operandIndex = Int(arg.name.dropFirst()) ?? -1
                    args[arg.name] = sampleTensor(arg.type, op: spec.name, operand: operandIndex, rng: &rng)
                }
                let analytic = try Interpreter.run(grad, arguments: args).outputs
                func loss(_ args: [String: HostTensor]) throws -> Double {
                    try Interpreter.run(function, arguments: args).outputs["loss"]!.scalar
                }
                for arg in function.args where arg.role == .param {
                    let h = 1e-6
                    var numeric: [Double] = []
                    for i in 0..<arg.type.count {
                        var plus = args, minus = args
                        plus[arg.name]!.data[i] += h
                        minus[arg.name]!.data[i] -= h
                        numeric.append((try loss(plus) - loss(minus)) / (2 * h))
                    }
                    let got = analytic["grad:" + arg.name]?.data ?? [Double](repeating: 0, count: arg.type.count)
                    // f64 central differences: truncation error ~h², rounding ~1e-10/h.
                    let worst = closeness(got, numeric, atol: 1e-6, rtol: 1e-5)
                    XCTAssertLessThanOrEqual(worst, 1, "\(spec.name) example \(exampleIndex): ∂loss/∂\(arg.name)\nanalytic \(got.prefix(8))\nnumeric  \(numeric.prefix(8))")
                }
                checked.append(spec.name)
            }
        }
        // The ops without a gradient rule are backward ops, comparisons and
        // random_normal; backward ops are checked here as their forward op's rule,
        // and fused ops (formed after autodiff) against their unfused chains;
        // allreduce_start/wait split a gradient bucket's exchange after autodiff,
        // fuse-concat builds a concatenation from inserts after it, and
        // prepare-weights transforms the filters of entry points nothing differentiates,
        // and one-pass-moments forms batch_moments from a batch norm's moments.
        let undifferentiated = OpRegistry.all.filter { $0.gradient == nil }.map(\.name).sorted()
        XCTAssertEqual(undifferentiated, ["allreduce_start", "allreduce_wait", "avg_pool2d_grad", "batch_moments", "conv2d_grad_input", "conv2d_grad_weight", "cross_entropy_grad",
                                          "equal", "fused_batch_norm_train", "fused_conv2d", "fused_conv2d_grad_input", "fused_conv2d_grad_weight", "fused_elementwise", "fused_reduce", "gelu_grad", "greater", "greater_equal", "group_norm_grad_terms",
                                          "insert", "layer_norm_grad_params", "layer_norm_grad_terms", "max_pool2d_grad", "random_normal", "upsample_bilinear_grad", "upsample_nearest_grad",
                                          "winograd_filters"])
        XCTAssertGreaterThan(Set(checked).count, 30)
    }

    /// The compute-bound ops count their FLOPs (the benchmark's GFLOP/s);
    /// a convolution's gradients do the same work as the convolution.
    func testComputeBoundOpsCountTheirFlops() throws {
        let counted = OpRegistry.all.filter { $0.flops != nil }.map(\.name).sorted()
        XCTAssertEqual(counted, ["conv2d", "conv2d_grad_input", "conv2d_grad_weight", "fused_conv2d", "fused_conv2d_grad_input", "fused_conv2d_grad_weight", "matmul"])
        let conv = try OpRegistry.require("conv2d"), x = TensorType.f32([2, 4, 7, 6]), w = TensorType.f32([6, 2, 3, 3])
        let attrs: Attributes = ["stride": .ints([2, 1]), "pad": .ints([1, 2]), "dilation": .ints([1, 2]), "groups": .int(2)]
        let y = try conv.checkedType(operands: [x, w], attrs: attrs)
        let flops = conv.flops!([x, w], y, attrs)
        XCTAssertEqual(flops, 2 * Double(y.count) * 2 * 3 * 3)
        XCTAssertEqual(try OpRegistry.require("conv2d_grad_weight").flops!([x, y], w, attrs), flops)
        XCTAssertEqual(try OpRegistry.require("matmul").flops!([.f32([3, 4]), .f32([4, 5])], .f32([3, 5]), [:]), 2 * 15 * 4)
    }
}
