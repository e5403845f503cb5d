import IR
import ModelZoo
import Passes
import TestSupport
import XCTest

/// TransUNet's structure and names, its input-size and decoder-width
/// errors, and finite-difference gradient checks of the layers composed
/// from core ops (weight standardization, attention, a transformer block,
/// zero padding to a size), the way the op registry checks every op.
final class TransUNetTests: XCTestCase {
    func testTinyTransUNetNamesAndShapes() throws {
        let module = try buildModule(TransUNet.tiny, config: EntryConfig(batch: 2, size: 32, classes: 3))
        let infer = try XCTUnwrap(module["infer"])
        let expected: [String: [Int]] = [
            "enc.root.conv.weight": [16, 3, 7, 7], "enc.root.gn.weight": [16],
            "enc.body.block1.unit1.conv2.weight": [16, 16, 3, 3], "enc.body.block1.unit1.downsample.weight": [64, 16, 1, 1],
            "enc.body.block2.unit1.gn_proj.bias": [128], "enc.body.block2.unit1.conv3.weight": [128, 32, 1, 1],
            "enc.patch_embeddings.weight": [64, 128, 1, 1], "enc.position_embeddings": [1, 16, 64],
            "enc.layer.1.attn.query.weight": [64, 64], "enc.layer.1.attn.out.bias": [64],
            "enc.layer.0.ffn.fc1.weight": [128, 64], "enc.layer.0.ffn_norm.weight": [64], "enc.encoder_norm.bias": [64],
            "dec.conv_more.0.weight": [32, 64, 3, 3], "dec.blocks.0.conv1.0.weight": [16, 32 + 64, 3, 3],
            "dec.blocks.1.conv1.0.weight": [16, 16 + 16, 3, 3], "dec.blocks.2.conv1.0.weight": [8, 16, 3, 3],
            "dec.blocks.2.conv2.1.running_var": [8], "head.seg.weight": [3, 8, 3, 3],
        ]
        for (name, shape) in expected {
            XCTAssertEqual(infer.argument(named: name)?.type.shape, shape, name)
        }
        // The 1/4 skip is padded from 7×7 (after the unpadded max-pool) to 8×8.
        XCTAssertTrue(infer.nodes.contains { $0.op == "pad" && $0.type.shape == [2, 64, 8, 8] })
        XCTAssertTrue(infer.nodes.contains { $0.op == "upsample_bilinear" && $0.attrs["align_corners"] == .bool(true) })
        // DDeP freezes the whole hybrid encoder, transformer included.
        let pretrain = try XCTUnwrap(module["pretrain_step"])
        XCTAssertTrue(pretrain.args.filter { $0.name.hasPrefix("enc.") }.allSatisfy { $0.role == .frozen })
        XCTAssertTrue(pretrain.args.filter { $0.name.hasPrefix("dec.") && $0.role.isWeight }.allSatisfy { $0.role == .param })
    }

    func testFullSizeLayoutAt224() throws {
        let module = try buildModule(TransUNet.r50ViTB16, config: EntryConfig(batch: 1, size: 224, classes: 9, entries: [.infer]))
        let infer = try XCTUnwrap(module["infer"])
        XCTAssertEqual(infer.argument(named: "enc.position_embeddings")?.type.shape, [1, 196, 768])
        XCTAssertEqual(infer.argument(named: "enc.body.block3.unit9.conv3.weight")?.type.shape, [1024, 256, 1, 1])
        XCTAssertEqual(infer.argument(named: "enc.layer.11.ffn.fc2.weight")?.type.shape, [768, 3072])
        XCTAssertEqual(infer.argument(named: "dec.blocks.3.conv1.0.weight")?.type.shape, [16, 64, 3, 3], "the last block has no skip")
        XCTAssertTrue(infer.nodes.contains { $0.op == "pad" && $0.type.shape == [1, 256, 56, 56] }, "55 → 56 for the 1/4 skip")
        XCTAssertEqual(TransUNet.r50ViTB16.inputMultiple, 16)
    }

    func testBadSizesAndWidthsAreClearErrors() {
        XCTAssertThrowsError(try buildModule(TransUNet.tiny, config: EntryConfig(batch: 1, size: 36))) { error in
            XCTAssertTrue("\(error)".contains("multiple of 8"), "\(error)")
        }
        let wrong = TransUNet(.tiny, decoderWidths: [32, 16, 8])
        XCTAssertThrowsError(try buildModule(wrong, config: EntryConfig(batch: 1, size: 32))) { error in
            XCTAssertTrue("\(error)".contains("needs 4 decoder widths"), "\(error)")
        }
    }

    // MARK: - Gradients of composed layers

    /// Builds `layer` on a random input as a function with a scalar loss
    /// Σ layer(x)·r, differentiates it and compares every parameter's (and
    /// the input's) gradient with f64 central differences.
    func checkGradients(input shape: [Int], _ name: String, _ layer: (Tensor, Scope) -> Tensor,
                        file: StaticString = #filePath, line: UInt = #line) throws {
        let ctx = BuildContext(function: name, training: true)
        let x = ctx.root.param("x", shape, init: .normal(1))
        let y = layer(x, ctx.root["layer"])
        let r = ctx.input("r", y.type)
        ctx.output((y * r).sum(axes: Array(0..<y.rank)), name: "loss")
        let function = try ctx.finish()
        var module = Module(functions: [function])
        _ = try Autodiff().run(&module)

        var rng = TestRNG(seed: 3)
        var args: [String: HostTensor] = [:]
        for arg in function.args {
            args[arg.name] = HostTensor(arg.type, (0..<arg.type.count).map { _ in rng.uniform() })
        }
        let analytic = try Interpreter.run(module.functions[0], arguments: args).outputs
        func loss(_ a: [String: HostTensor]) throws -> Double { try Interpreter.run(function, arguments: a).outputs["loss"]!.scalar }
        var checked = 0
        for arg in function.args where arg.role == .param {
            let h = 1e-6
            let numeric = try (0..<arg.type.count).map { i -> Double in
                var plus = args, minus = args
                plus[arg.name]!.data[i] += h
                minus[arg.name]!.data[i] -= h
                return (try loss(plus) - loss(minus)) / (2 * h)
            }
            let got = analytic["grad:" + arg.name]?.data ?? [Double](repeating: 0, count: arg.type.count)
            XCTAssertLessThanOrEqual(closeness(got, numeric, atol: 1e-6, rtol: 1e-5), 1,
                                     "\(name): ∂loss/∂\(arg.name)\nanalytic \(got.prefix(6))\nnumeric  \(numeric.prefix(6))",
                                     file: file, line: line)
            checked += 1
        }
        XCTAssertGreaterThan(checked, 0, file: file, line: line)
    }

    func testWeightStandardizedConvGradient() throws {
        try checkGradients(input: [2, 3, 5, 5], "std_conv") { x, scope in
            StdConv2d(scope, 3, 4, kernel: 3, stride: 2, padding: 1)(x)
        }
    }

    func testAttentionGradient() throws {
        try checkGradients(input: [2, 3, 4], "attention") { x, scope in
            MultiHeadSelfAttention(scope, dim: 4, heads: 2)(x)
        }
    }

    func testTransformerBlockGradient() throws {
        try checkGradients(input: [1, 3, 4], "block") { x, scope in
            TransformerBlock(scope, dim: 4, heads: 2, mlpDim: 6)(x)
        }
    }

    func testZeroPadToSizeGradient() throws {
        try checkGradients(input: [1, 2, 3, 2], "zero_pad") { x, _ in x.zeroPad(to: [4, 4]) }
    }
}
