import ABI
import IR
import ModelZoo
import XCTest

/// The four entry points: names, roles, shapes, updates.
final class EntryPointTests: XCTestCase {
    static let allNames = ["infer", "pretrain_step", "pretrain_dep_step", "finetune_step", "classify_step", "denoise"]

    func testSmallUNetBuildsAllEntryPoints() throws {
        let module = try buildModule(UNet.small, config: EntryConfig(batch: 1, size: 64, classes: 2))
        XCTAssertEqual(module.functions.map(\.name), Self.allNames)
        try Verifier.verify(module)
        try checkSignatures(module, batch: 1, size: 64, classes: 2)
    }

    /// The trainer fills a step's inputs by the names the ABI gives them:
    /// every input an entry point of the DSL declares is one of those.
    func testEveryEntryPointInputIsInTheStepSignature() throws {
        let module = try buildModule(UNet.small, config: EntryConfig(batch: 2, size: 64, classes: 2))
        for function in module.functions {
            for input in function.args where input.role == .input {
                XCTAssertTrue(StepSignature.modelInputs.contains(input.name), "@\(function.name) takes \"\(input.name)\"")
            }
            for output in function.outputs {
                XCTAssertTrue([StepSignature.loss, StepSignature.logits, StepSignature.prediction].contains(output.name),
                              "@\(function.name) returns \"\(output.name)\"")
            }
        }
    }

    func testResNet50UNetBuildsAllEntryPoints() throws {
        let module = try buildModule(UNet(encoder: .resnet50), config: EntryConfig(batch: 1, size: 64, classes: 3))
        XCTAssertEqual(module.functions.map(\.name), Self.allNames)
        try Verifier.verify(module)
        try checkSignatures(module, batch: 1, size: 64, classes: 3)
        let infer = try XCTUnwrap(module["infer"])
        XCTAssertEqual(infer.argument(named: "enc.layer4.2.conv3.weight")?.type, .f32([2048, 512, 1, 1]))
        XCTAssertEqual(infer.argument(named: "enc.layer1.0.downsample.0.weight")?.type, .f32([256, 64, 1, 1]))
        XCTAssertEqual(infer.argument(named: "enc.layer2.0.conv2.weight")?.type, .f32([128, 128, 3, 3]))
        XCTAssertEqual(infer.argument(named: "dec.blocks.0.conv1.0.weight")?.type, .f32([256, 3072, 3, 3]))
        XCTAssertEqual(infer.argument(named: "dec.blocks.4.conv2.1.running_var")?.type, .f32([16]))
        XCTAssertEqual(infer.argument(named: "head.seg.weight")?.type, .f32([3, 16, 3, 3]))
        // torchvision v1.5: the stride sits on the 3×3 conv of the bottleneck.
        let conv2 = try XCTUnwrap(infer.argument(named: "enc.layer2.0.conv2.weight"))
        let strided = infer.nodes.first { $0.op == "conv2d" && $0.operands[1] == conv2.id }
        XCTAssertEqual(strided?.attrs["stride"], .ints([2, 2]))
    }

    /// Inputs, outputs, roles and updates every pass relies on.
    func checkSignatures(_ module: Module, batch b: Int, size s: Int, classes: Int) throws {
        let image = TensorType.f32([b, 3, s, s])
        let infer = try XCTUnwrap(module["infer"])
        XCTAssertEqual(inputs(infer), ["x": image])
        XCTAssertEqual(infer.outputs.map(\.name), ["logits"])
        XCTAssertEqual(infer.types[infer.outputs[0].value], .f32([b, classes, s, s]))
        XCTAssertTrue(infer.updates.isEmpty, "infer is eval mode")
        XCTAssertFalse(infer.args.contains { $0.name.hasPrefix("head.denoise") })

        for name in ["pretrain_step", "pretrain_dep_step"] {
            let step = try XCTUnwrap(module[name])
            XCTAssertEqual(inputs(step), ["x": image, "seed": TensorType(.i64, []),
                                          "noise_a": .f32([b]), "noise_b": .f32([b]),
                                          "target_noise": .f32([]), "target_image": .f32([])])
            XCTAssertEqual(step.outputs.map(\.name), ["loss"])
            XCTAssertEqual(step.types[step.outputs[0].value], .f32([]))
            XCTAssertEqual(step.argument(named: "head.denoise.weight")?.type.shape.first, 3)
            XCTAssertNil(step.argument(named: "head.seg.weight"))
            XCTAssertTrue(step.nodes.contains { $0.op == "random_normal" })
            XCTAssertTrue(step.nodes.contains { $0.op == "mse" })
        }

        let finetune = try XCTUnwrap(module["finetune_step"])
        XCTAssertEqual(inputs(finetune), ["x": image, "labels": TensorType(.i32, [b, s, s])])
        XCTAssertEqual(finetune.outputs.map(\.name), ["loss"])
        let ce = try XCTUnwrap(finetune.nodes.first { $0.op == "cross_entropy" })
        XCTAssertEqual(ce.attrs["ignore_index"], .int(255))

        // Running statistics are state everywhere; weights are weights everywhere.
        for function in module.functions {
            for arg in function.args where arg.role != .input {
                let isStat = arg.name.hasSuffix(".running_mean") || arg.name.hasSuffix(".running_var")
                XCTAssertEqual(arg.role == .state, isStat, "\(function.name): \(arg.name) is \(arg.role)")
                XCTAssertNotNil(arg.initRule, arg.name)
            }
        }

        // Training steps update exactly the running statistics of training-mode BNs.
        let dep = try XCTUnwrap(module["pretrain_dep_step"])
        let depStats = Set(dep.args.filter { $0.role == .state }.map(\.id))
        XCTAssertEqual(Set(dep.updates.map(\.target)), depStats)
        XCTAssertEqual(Set(finetune.updates.map(\.target)), Set(finetune.args.filter { $0.role == .state }.map(\.id)))
    }

    func inputs(_ function: Function) -> [String: TensorType] {
        Dictionary(uniqueKeysWithValues: function.args.filter { $0.role == .input }.map { ($0.name, $0.type) })
    }

    func testDDePFreezesTheEncoder() throws {
        let module = try buildModule(UNet.small, config: EntryConfig(batch: 2, size: 64))
        let step = try XCTUnwrap(module["pretrain_step"])
        let encoder = step.args.filter { $0.name.hasPrefix("enc.") }
        XCTAssertFalse(encoder.isEmpty)
        for arg in encoder {
            let isStat = arg.name.hasSuffix(".running_mean") || arg.name.hasSuffix(".running_var")
            XCTAssertEqual(arg.role, isStat ? .state : .frozen, arg.name)
        }
        for arg in step.args where arg.name.hasPrefix("dec.") || arg.name.hasPrefix("head.") {
            XCTAssertNotEqual(arg.role, .frozen, arg.name)
        }
        let encoderIDs = Set(encoder.map(\.id))
        XCTAssertFalse(step.updates.contains { encoderIDs.contains($0.target) }, "DDeP updates an encoder argument")
        // The decoder's batch norms train: 5 blocks × 2 BNs × (mean, var).
        XCTAssertEqual(step.updates.count, 20)
        // Encoder batch norms run on running statistics (eval mode).
        let stemMean = try XCTUnwrap(step.argument(named: "enc.bn1.running_mean"))
        XCTAssertTrue(step.nodes.contains { $0.op == "batch_norm" && $0.operands[1] == stemMean.id })

        // DeP trains everything.
        let dep = try XCTUnwrap(module["pretrain_dep_step"])
        XCTAssertFalse(dep.args.contains { $0.role == .frozen })
        XCTAssertTrue(dep.updates.contains { $0.target == dep.argument(named: "enc.bn1.running_mean")?.id })
    }

    func testConfigValidation() {
        XCTAssertThrowsError(try buildModule(UNet.small, config: EntryConfig(size: 48))) { error in
            XCTAssertTrue("\(error)".contains("multiple of 32"), "\(error)")
        }
        XCTAssertThrowsError(try buildModule(UNet.small, config: EntryConfig(batch: 0)))
        XCTAssertThrowsError(try buildModule(UNet.small, config: EntryConfig(entries: [])))
        XCTAssertThrowsError(try buildModule(UNet(encoder: ResNetEncoder(depth: 20)), config: EntryConfig())) { error in
            XCTAssertTrue("\(error)".contains("unsupported ResNet depth 20"), "\(error)")
        }
    }

    func testEntrySubsetAndRuntimeTarget() throws {
        let config = EntryConfig(batch: 1, size: 32, entries: [.pretrainStep])
        let module = try buildModule(UNet.small, config: config)
        XCTAssertEqual(module.functions.map(\.name), ["pretrain_step"])
        let step = try XCTUnwrap(module["pretrain_step"])
        // mse(prediction, target_noise·ε + target_image·x): the target is chosen per run.
        let nodes = Dictionary(uniqueKeysWithValues: step.nodes.map { ($0.id, $0) })
        let mse = try XCTUnwrap(step.nodes.first { $0.op == "mse" })
        let target = try XCTUnwrap(nodes[mse.operands[1]])
        XCTAssertEqual(target.op, "add")
        let terms = target.operands.compactMap { nodes[$0] }
        XCTAssertEqual(terms.map(\.op), ["mul", "mul"])
        XCTAssertEqual(nodes[terms[0].operands[0]]?.op, "random_normal")
        XCTAssertEqual(terms[0].operands[1], step.argument(named: "target_noise")?.id)
        XCTAssertEqual(terms[1].operands, [step.argument(named: "x")!.id, step.argument(named: "target_image")!.id])
    }

    /// The textual IR of a whole module parses back to the same module.
    func testPrintedModuleRoundTrips() throws {
        let module = try buildModule(UNet.small, config: EntryConfig(batch: 1, size: 32))
        let text = Printer.print(module)
        XCTAssertEqual(try Parser.parse(text), module)
        XCTAssertTrue(text.contains("loc(\"ModelZoo/"), "zoo nodes point at DSL lines")
    }
}
