import Foundation
import IR
import ModelZoo
import Runtime
import Driver
import XCTest

/// One fixture written by tools/make_fixtures.py: a model's weights, inputs
/// and PyTorch's answers (float64 arithmetic on the float32 weights), under
/// `param/`, `input/`, `infer/`, `pretrain_step/`, `finetune_step/` names.
struct ParityFixture {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")

    let file: SafetensorsFile
    let config: EntryConfig

    init(_ name: String) throws {
        let file = try SafetensorsFile(contentsOf: Self.directory.appendingPathComponent(name + ".safetensors"))
        func number(_ key: String) throws -> Int { try XCTUnwrap(file.metadata[key].flatMap { Int($0) }, "metadata \(key)") }
        self.file = file
        config = EntryConfig(batch: try number("batch"), size: try number("size"), classes: try number("classes"),
                             entries: [.infer, .pretrainStep, .finetuneStep])
    }

    /// The float tensor `name` as a host tensor.
    func tensor(_ name: String) throws -> HostTensor {
        let t = try file.tensor(name)
        let values: [Double]
        switch t.dtype {
        case .f32: values = try t.values(as: Float.self).map(Double.init)
        case .i32: values = try t.values(as: Int32.self).map(Double.init)
        case .i64: values = try t.values(as: Int64.self).map(Double.init)
        default: throw XCTSkip("unexpected dtype \(t.dtype) for \(name)")
        }
        let dtype: DType = t.dtype == .i32 ? .i32 : t.dtype == .i64 ? .i64 : .f32
        return HostTensor(TensorType(dtype, t.shape), values)
    }

    /// Names under `prefix/` (without the prefix).
    func names(under prefix: String) -> [String] {
        file.names.filter { $0.hasPrefix(prefix + "/") }.map { String($0.dropFirst(prefix.count + 1)) }
    }

    /// The inputs of one entry point.
    func inputs(for entry: EntryPoint) throws -> [String: HostTensor] {
        var inputs = ["x": try tensor("input/x")]
        switch entry {
        case .infer, .denoise: break
        case .finetuneStep, .classifyStep: inputs["labels"] = try tensor("input/labels")
        case .pretrainStep, .pretrainDepStep:
            inputs["seed"] = try tensor("input/seed")
            // The fixture's noise scales are one fixed γ: repeat them per sample.
            for name in ["noise_a", "noise_b"] {
                let scale = try tensor("input/" + name).scalar
                inputs[name] = HostTensor(.f32([config.batch]), [Double](repeating: scale, count: config.batch))
            }
            inputs["target_noise"] = HostTensor(scalar: 1)
            inputs["target_image"] = HostTensor(scalar: 0)
        }
        return inputs
    }

    /// Writes every fixture weight and running statistic into the executor;
    /// the model must hold exactly the fixture's tensors, shape for shape.
    func load(into executor: Executor) throws {
        let layout = executor.artifact.manifest.layout
        // Prepared state is ddepc's own, computed from the weights.
        let ours = Set((layout.params + layout.state).map(\.name).filter { !PreparedWeights.isPrepared($0) })
        let theirs = Set(names(under: "param"))
        XCTAssertEqual(ours.subtracting(theirs).sorted(), [], "ddepc tensors the PyTorch model lacks")
        XCTAssertEqual(theirs.subtracting(ours).sorted(), [], "PyTorch tensors ddepc's model lacks")
        for name in theirs.intersection(ours) { try executor.set(name, try tensor("param/" + name)) }
    }

    /// Compiles `model` with gradient-only training steps (`grad:<name>`
    /// outputs, no optimizer) for one backend and loads the fixture weights.
    func compile(_ model: any SegmentationModel, backend: Backend, into directory: URL) throws -> Executor {
        let module = try buildModule(model, config: config)
        var options = CompileOptions()
        options.backend = backend
        options.optimizer = nil
        options.batch = config.batch
        options.size = config.size
        options.classes = config.classes
        let path = directory.appendingPathComponent("\(backend.rawValue).ddepc")
        _ = try CompileDriver.compile(module, to: path, options: options)
        let executor = try Executor(artifact: try Artifact(directory: path))
        try load(into: executor)
        return executor
    }
}

/// max |got − want| / (max |want| + 1e-4·groupScale): the error measure
/// tools/make_fixtures.py reports for PyTorch's own float32 run. The group
/// term keeps tensors whose exact value is zero (an attention key's bias
/// gradient) from dividing by rounding noise.
func parityError(_ got: [Double], _ want: [Double], groupScale: Double) -> Double {
    precondition(got.count == want.count, "\(got.count) vs \(want.count) values")
    var worst = 0.0, scale = 0.0
    for (g, w) in zip(got, want) {
        if g.isNaN { return .infinity }
        worst = max(worst, abs(g - w))
        scale = max(scale, abs(w))
    }
    let denominator = scale + 1e-4 * groupScale
    return denominator == 0 ? worst : worst / denominator
}

/// Runs a compiled model's entry points on the fixture's inputs and compares
/// every output, gradient and running-statistic update with PyTorch's.
class ParityTestCase: XCTestCase {
    /// Tolerances (parityError) per comparison group: about ten times what
    /// the compiled models measure (2e-6 logits, 1e-7 losses, 4e-6 DDeP
    /// gradients, 1e-6 running statistics), the room another summation
    /// order (another BLAS, another CPU) may need.
    struct Tolerances {
        var logits = 2e-5
        var loss = 1e-6
        var pretrainGrads = 5e-5
        var finetuneGrads = 2e-4
        var updates = 1e-5
    }

    /// Compares one backend's entry points with the fixture; returns the
    /// worst error of each group (for the report printed by the tests).
    func checkParity(_ executor: Executor, _ fixture: ParityFixture, tolerances: Tolerances,
                     label: String) throws -> [String: Double] {
        var worst: [String: Double] = [:]
        func record(_ group: String, _ error: Double, _ limit: Double, _ what: String) {
            worst[group] = max(worst[group] ?? 0, error)
            XCTAssertLessThanOrEqual(error, limit, "\(label): \(what) differs from PyTorch (error \(error), tolerance \(limit))")
        }

        try fixture.load(into: executor)
        let logits = try XCTUnwrap(executor.run("infer", inputs: try fixture.inputs(for: .infer))["logits"])
        let expectedLogits = try fixture.tensor("infer/logits")
        XCTAssertEqual(logits.shape, expectedLogits.shape)
        record("infer/logits", parityError(logits.data, expectedLogits.data, groupScale: 0), tolerances.logits, "infer logits")

        for entry in [EntryPoint.pretrainStep, .finetuneStep] {
            try fixture.load(into: executor)
            let step = entry.rawValue
            let outputs = try executor.run(step, inputs: try fixture.inputs(for: entry))
            let loss = try XCTUnwrap(outputs["loss"]).scalar
            let expectedLoss = try fixture.tensor("\(step)/loss").scalar
            record("\(step)/loss", abs(loss - expectedLoss) / abs(expectedLoss), tolerances.loss, "\(step) loss \(loss) vs \(expectedLoss)")

            // Every trainable parameter has a gradient in both, and nothing else does.
            let expectedNames = Set(fixture.names(under: "\(step)/grad"))
            let gotNames = Set(outputs.keys.filter { $0.hasPrefix("grad:") }.map { String($0.dropFirst(5)) })
            XCTAssertEqual(gotNames, expectedNames, "\(label) \(step): the trained parameters differ from PyTorch's")
            XCTAssertFalse(expectedNames.isEmpty)
            let expected = try Dictionary(uniqueKeysWithValues: expectedNames.map { ($0, try fixture.tensor("\(step)/grad/\($0)")) })
            let groupScale = expected.values.map { $0.data.map(abs).max() ?? 0 }.max() ?? 0
            let limit = entry == .pretrainStep ? tolerances.pretrainGrads : tolerances.finetuneGrads
            for name in expectedNames.intersection(gotNames).sorted() {
                let got = try XCTUnwrap(outputs["grad:" + name])
                XCTAssertEqual(got.shape, expected[name]!.shape, name)
                record("\(step)/grad", parityError(got.data, expected[name]!.data, groupScale: groupScale), limit, "\(step) ∂loss/∂\(name)")
            }

            // Running statistics updated by training-mode batch norm.
            let updated = fixture.names(under: "\(step)/update")
            for name in updated {
                let want = try fixture.tensor("\(step)/update/\(name)")
                record("\(step)/update", parityError(try executor.get(name).data, want.data, groupScale: 0), tolerances.updates,
                       "\(step) updated \(name)")
            }
            XCTAssertFalse(updated.isEmpty, "\(step) updates running statistics")
        }
        return worst
    }
}
