import IR
import ModelZoo
import XCTest

/// A custom model with a channel mismatch on a known line.
struct MismatchedModel: SegmentationModel {
    static let mismatchLine = #line + 4
    func encode(_ x: Tensor, scope: Scope) -> [Tensor] {
        let a = Conv2d(scope["a"], 3, 8, kernel: 3, stride: 2, padding: 1)(x)
        // Wrong: `a` has 8 channels, this conv expects 4.
        let b = Conv2d(scope["b"], 4, 8, kernel: 3, padding: 1)(a)
        let c = b + a.maxPool2d(kernel: 3)  // a second error, which must not replace the first
        return [c]
    }
    func decode(_ features: [Tensor], scope: Scope) -> Tensor {
        features[0].upsample(scale: 2)
    }
}

/// A minimal custom model written in the DSL, as a model file would.
struct TinyModel: SegmentationModel {
    func encode(_ x: Tensor, scope: Scope) -> [Tensor] {
        let stem = Conv2dBNReLU(scope["stem"], 3, 4, stride: 2)(x)
        return [x, stem]
    }
    func decode(_ features: [Tensor], scope: Scope) -> Tensor {
        let up = features[1].resize(to: [features[0].shape[2], features[0].shape[3]], mode: .bilinear(alignCorners: false))
        let joined = Tensor.concat([up, features[0]])
        return Conv2dBNReLU(scope["fuse"], joined.channels, 4)(joined)
    }
    var inputMultiple: Int { 2 }
}

final class DSLTests: XCTestCase {
    func testShapeMismatchIsReportedAtTheModelLine() {
        XCTAssertThrowsError(try buildModule(MismatchedModel(), config: EntryConfig(batch: 1, size: 16))) { error in
            guard let error = error as? IRError else { return XCTFail("not an IRError: \(error)") }
            XCTAssertEqual(error.loc, SourceLoc(file: "DSLTests.swift", line: MismatchedModel.mismatchLine))
            XCTAssertTrue(error.message.contains("conv2d(f32[1,8,8,8], f32[8,4,3,3])"), error.message)
            XCTAssertTrue(error.description.hasPrefix("DSLTests.swift:\(MismatchedModel.mismatchLine): error: "), error.description)
        }
    }

    func testCustomModelBuildsAndNamesParameters() throws {
        let module = try buildModule(TinyModel(), config: EntryConfig(batch: 2, size: 8, classes: 5))
        let infer = try XCTUnwrap(module["infer"])
        XCTAssertEqual(infer.argument(named: "enc.stem.0.weight")?.type, .f32([4, 3, 3, 3]))
        XCTAssertEqual(infer.argument(named: "enc.stem.1.running_mean")?.role, .state)
        XCTAssertEqual(infer.argument(named: "dec.fuse.0.weight")?.type, .f32([4, 7, 3, 3]))
        XCTAssertEqual(infer.argument(named: "head.seg.bias")?.type, .f32([5]))
        // Nodes of the custom model point at this file's lines.
        let conv = try XCTUnwrap(infer.nodes.first { $0.op == "conv2d" })
        XCTAssertEqual(conv.loc?.file, "DSLTests.swift")
        XCTAssertEqual(module["pretrain_step"]?.args.first { $0.name == "enc.stem.0.weight" }?.role, .frozen)
    }

    func testWrongHeadResolutionIsAnError() {
        struct Coarse: SegmentationModel {
            func encode(_ x: Tensor, scope: Scope) -> [Tensor] { [x.avgPool2d(kernel: 2)] }
            func decode(_ features: [Tensor], scope: Scope) -> Tensor { features[0] }
        }
        XCTAssertThrowsError(try buildModule(Coarse(), config: EntryConfig(batch: 1, size: 8))) { error in
            XCTAssertTrue("\(error)".contains("head.seg output is f32[1,2,4,4]"), "\(error)")
        }
    }

    func testParameterReuseMustKeepItsShape() {
        let ctx = BuildContext(function: "f", training: false)
        let x = ctx.input("x", .f32([1, 3, 4, 4]))
        _ = Conv2d(ctx.root["c"], 3, 3, kernel: 1)(x)
        _ = Conv2d(ctx.root["c"], 3, 3, kernel: 3, padding: 1)(x)
        XCTAssertThrowsError(try ctx.finish()) { error in
            XCTAssertTrue("\(error)".contains("parameter \"c.weight\" was created with shape [3, 3, 1, 1]"), "\(error)")
        }
    }

    /// Training-mode batch norm: batch statistics, PyTorch running-stat updates.
    func testBatchNormTrainingSemantics() throws {
        let ctx = BuildContext(function: "bn", training: true)
        let x = ctx.input("x", .f32([2, 3, 2, 2]))
        ctx.output(BatchNorm2d(ctx.root["bn"], 3)(x), name: "y")
        let function = try ctx.finish()
        try Verifier.verify(function)
        XCTAssertEqual(function.updates.count, 2)

        let data = (0..<24).map { Double(($0 * 7) % 11) - 3 }
        let result = try Interpreter.run(function, arguments: [
            "x": HostTensor(.f32([2, 3, 2, 2]), data),
            "bn.weight": HostTensor(.f32([3]), [1, 2, 3]), "bn.bias": HostTensor(.f32([3]), [0, 0, 1]),
            "bn.running_mean": HostTensor(.f32([3]), [0, 0, 0]), "bn.running_var": HostTensor(.f32([3]), [1, 1, 1]),
        ])
        for c in 0..<3 {
            let values = (0..<2).flatMap { n in (0..<4).map { data[(n * 3 + c) * 4 + $0] } }
            let mean = values.reduce(0, +) / 8
            let biased = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / 8
            XCTAssertEqual(result.updates["bn.running_mean"]!.data[c], 0.1 * mean, accuracy: 1e-12)
            XCTAssertEqual(result.updates["bn.running_var"]!.data[c], 0.9 + 0.1 * biased * 8 / 7, accuracy: 1e-12)
            let y = (0..<2).flatMap { n in (0..<4).map { result.outputs["y"]!.data[(n * 3 + c) * 4 + $0] } }
            let expected = values.map { ($0 - mean) / (biased + 1e-5).squareRoot() * Double(c + 1) + (c == 2 ? 1 : 0) }
            for (got, want) in zip(y, expected) { XCTAssertEqual(got, want, accuracy: 1e-9) }
        }

        // Eval mode uses the running statistics and updates nothing.
        let eval = BuildContext(function: "bn", training: false)
        eval.output(BatchNorm2d(eval.root["bn"], 3)(eval.input("x", .f32([2, 3, 2, 2]))), name: "y")
        let evalFunction = try eval.finish()
        XCTAssertTrue(evalFunction.updates.isEmpty)
        let bn = try XCTUnwrap(evalFunction.nodes.first { $0.op == "batch_norm" })
        XCTAssertEqual(bn.operands[1], evalFunction.argument(named: "bn.running_mean")?.id)
    }

    func testTensorOperatorsAndLayers() throws {
        let ctx = BuildContext(function: "f", training: false)
        let x = ctx.input("x", .f32([2, 5]))
        let y = Linear(ctx.root["fc"], 5, 3)(x)
        let z = (2 * y - 1).relu() / 4 + y.sigmoid() * y.tanh()
        ctx.output(z.softmax(axis: 1).mean(axes: [0, 1]), name: "out")
        let function = try ctx.finish()
        try Verifier.verify(function)
        XCTAssertEqual(function.argument(named: "fc.weight")?.type, .f32([3, 5]))
        XCTAssertEqual(function.types[function.outputs[0].value], .f32([]))

        let g = BuildContext(function: "g", training: true)
        let image = g.input("x", .f32([1, 8, 4, 4]))
        g.output(GroupNorm(g.root["gn"], groups: 2, channels: 8)(image), name: "y")
        XCTAssertEqual(try g.finish().argument(named: "gn.weight")?.initRule, .ones)
    }
}
