import IR
import ModelZoo
import XCTest

/// Runs built entry points in the reference interpreter, and the model-file
/// command line.
final class ExecutionTests: XCTestCase {
    /// Deterministic values for every argument: inputs given, weights by init rule.
    func arguments(for function: Function, inputs: [String: HostTensor]) -> [String: HostTensor] {
        var out = inputs
        for (k, arg) in function.args.enumerated() where out[arg.name] == nil {
            let rule = arg.initRule ?? .zeros
            switch rule {
            case .zeros: out[arg.name] = HostTensor(zeros: arg.type); continue
            case .ones: out[arg.name] = HostTensor(arg.type, [Double](repeating: 1, count: arg.type.count)); continue
            default: break
            }
            let std = rule.standardDeviation(shape: arg.type.shape)
            out[arg.name] = HostTensor(arg.type, (0..<arg.type.count).map {
                std * RandomOps.normal(seed: UInt64(k), index: UInt64($0))
            })
        }
        return out
    }

    func image(_ shape: [Int]) -> HostTensor {
        HostTensor(.f32(shape), (0..<shape.reduce(1, *)).map { sin(Double($0) * 0.37) })
    }

    func testSmallUNetPretrainStepRunsInTheInterpreter() throws {
        let module = try buildModule(UNet.small, config: EntryConfig(batch: 1, size: 32, entries: [.pretrainStep]))
        let step = try XCTUnwrap(module["pretrain_step"])
        let args = arguments(for: step, inputs: [
            "x": image([1, 3, 32, 32]),
            "seed": HostTensor(TensorType(.i64, []), [42]),
            "noise_a": HostTensor(.f32([1]), [0.97662]), "noise_b": HostTensor(.f32([1]), [0.21494]),
            "target_noise": HostTensor(scalar: 1), "target_image": HostTensor(scalar: 0),
        ])
        let result = try Interpreter.run(step, arguments: args)
        let loss = try XCTUnwrap(result.outputs["loss"]).scalar
        XCTAssertTrue(loss.isFinite && loss > 0, "loss \(loss)")
        XCTAssertEqual(result.updates.count, 20)
        XCTAssertTrue(result.updates.keys.allSatisfy { $0.hasPrefix("dec.") })
        for (name, value) in result.updates {
            XCTAssertTrue(value.data.allSatisfy(\.isFinite), name)
        }
        // Running variance moved off its initial 1 toward the batch variance.
        XCTAssertNotEqual(result.updates["dec.blocks.4.conv2.1.running_var"]?.data, [Double](repeating: 1, count: 8))
    }

    func testModelFileOptions() throws {
        let options = try ModelFile.parse(["--batch", "2", "--size", "128", "--classes", "19", "--out", "m.ddir",
                                           "--entries", "infer,finetune_step"])
        XCTAssertEqual(options.config, EntryConfig(batch: 2, size: 128, classes: 19, entries: [.infer, .finetuneStep]))
        XCTAssertEqual(options.out, "m.ddir")
        XCTAssertEqual(try ModelFile.parse([]).config, EntryConfig(batch: 4, size: 64, classes: 2))
        XCTAssertEqual(try ModelFile.parse([]).out, "-")
        XCTAssertThrowsError(try ModelFile.parse(["--bacth", "2"])) { XCTAssertTrue("\($0)".contains("unknown option '--bacth'")) }
        XCTAssertThrowsError(try ModelFile.parse(["--size", "big"])) { XCTAssertTrue("\($0)".contains("--size expects an integer")) }
        XCTAssertThrowsError(try ModelFile.parse(["--size"])) { XCTAssertTrue("\($0)".contains("--size needs a value")) }
        XCTAssertThrowsError(try ModelFile.parse(["--entries", "train"])) { XCTAssertTrue("\($0)".contains("unknown entry point 'train'")) }
    }

    func testModelFileRendersTheModule() throws {
        let (text, out) = try ModelFile.render(UNet.small, arguments: ["--batch", "1", "--size", "32"])
        XCTAssertEqual(out, "-")
        let module = try Parser.parse(text)
        XCTAssertEqual(module.functions.map(\.name), EntryPointTests.allNames)
        XCTAssertThrowsError(try ModelFile.render(MismatchedModel(), arguments: ["--size", "16"])) { error in
            XCTAssertTrue("\(error)".hasPrefix("DSLTests.swift:\(MismatchedModel.mismatchLine): error: "), "\(error)")
        }
    }
}
