import DDPKernels
import Foundation
import IR
import ModelZoo
import Passes
import Runtime
import Driver
import TestSupport
import XCTest

/// Whole training steps of a small U-Net: the C backend, the LLVM backend
/// and the f64 reference interpreter (on the artifact's final, fused IR)
/// compute the same loss, gradients (seen through Adam's first moment,
/// m = 0.1·g after one step), running statistics and weights. The default
/// compile computes the 32×32 layers' convolutions by Winograd F(4×4), the
/// 16×16 ones by F(2×2) and the smaller ones by im2col; a third compile has
/// F(4×4) wherever it applies. Another pair is compiled and run on the
/// kernels' AVX2 path, as on an AVX2-only machine.
///
/// Three images, not two: layer4's batch norms normalize 1×1 images, and
/// two values normalize to ±1 (less ε's share) whatever they are, so a
/// residual block's two batch norms sum to ties within 1e-7 of 0 whose
/// ReLU gate f32 rounding decides, differently from the f64 oracle.
final class StepAgreementTests: XCTestCase {
    static let config = EntryConfig(batch: 3, size: 32, classes: 3, entries: [.pretrainStep, .finetuneStep])
    static let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-steps-\(UUID().uuidString)")
    /// Compiled once per backend for all tests of this class.
    static var cache: [String: Executor] = [:]

    override class func tearDown() {
        cache = [:]
        try? FileManager.default.removeItem(at: directory)
    }

    /// The compiled model with freshly initialized weights and state,
    /// compiled for the kernels' `isa` (which stays chosen after).
    func compiled(_ backend: Backend, convAlgorithm: SelectConvAlgorithm.Mode = .auto, momentsInEpilogue: Bool = false,
                  isa: String = "native", convCosts: ConvCostTable? = nil) throws -> Executor {
        XCTAssertEqual(ddp_set_isa(isa), 1, "every machine of this kind runs \(isa)")
        let key = "\(backend.rawValue)-\(convAlgorithm.rawValue)\(momentsInEpilogue ? "-moments" : "")-\(isa)\(convCosts == nil ? "" : "-costs")"
        if let executor = Self.cache[key] {
            executor.store.initialize(seed: 5)
            return executor
        }
        let module = try buildModule(UNet.small, config: Self.config)
        let dir = Self.directory.appendingPathComponent(key)
        var options = CompileOptions()
        options.backend = backend
        options.convAlgorithm = convAlgorithm
        options.momentsInEpilogue = momentsInEpilogue
        options.convCosts = convCosts
        options.batch = Self.config.batch
        options.size = Self.config.size
        options.classes = Self.config.classes
        let path = dir.appendingPathComponent("unet.ddepc")
        _ = try CompileDriver.compile(module, to: path, options: options)
        let executor = try Executor(artifact: try Artifact(directory: path))
        executor.store.initialize(seed: 5)
        Self.cache[key] = executor
        return executor
    }

    func inputs(for entry: String) -> [String: HostTensor] {
        let (b, s) = (Self.config.batch, Self.config.size)
        var rng = TestRNG(seed: 11)
        var inputs: [String: HostTensor] = [
            "x": HostTensor(.f32([b, 3, s, s]), (0..<(b * 3 * s * s)).map { _ in rng.uniform() }),
            "lr": HostTensor(scalar: 1e-3), "bc1": HostTensor(scalar: 10), "bc2": HostTensor(scalar: 1000),
            "weight_decay": HostTensor(scalar: 0.01), "l2": HostTensor(scalar: 0.001),
            // Small enough that clipping is active, so its path is compared too.
            "clip_norm": HostTensor(scalar: 0.05),
        ]
        if entry == "finetune_step" {
            inputs["labels"] = HostTensor(TensorType(.i32, [b, s, s]), (0..<(b * s * s)).map { _ in
                let r = rng.next() % 5
                return r == 4 ? 255 : Double(r % 3)
            })
        } else {
            inputs["seed"] = HostTensor(TensorType(.i64, []), [1234])
            // Two different noise levels in one batch (as with γ ~ U[0,1]).
            inputs["noise_a"] = HostTensor(.f32([b]), [0.97662, 0.8, 0.5])
            inputs["noise_b"] = HostTensor(.f32([b]), [0.21494, 0.6, 0.86603])
            inputs["target_noise"] = HostTensor(scalar: 1)
            inputs["target_image"] = HostTensor(scalar: 0)
        }
        return inputs
    }

    func checkStep(_ entry: String, convAlgorithm: SelectConvAlgorithm.Mode = .auto, momentsInEpilogue: Bool = false,
                   isa: String = "native", convCosts: ConvCostTable? = nil) throws {
        defer { _ = ddp_set_isa("native") }
        let c = try compiled(.c, convAlgorithm: convAlgorithm, momentsInEpilogue: momentsInEpilogue, isa: isa, convCosts: convCosts)
        let llvm = try compiled(.llvm, convAlgorithm: convAlgorithm, momentsInEpilogue: momentsInEpilogue, isa: isa, convCosts: convCosts)
        let function = try XCTUnwrap(Parser.parse(try c.artifact.finalIR).function(named: entry))
        var arguments = inputs(for: entry)
        for arg in function.args where arg.role != .input { arguments[arg.name] = try c.get(arg.name) }
        let oracle = try Interpreter.run(function, arguments: arguments, precision: .f64)

        let ioInputs = inputs(for: entry)
        let lossC = try XCTUnwrap(c.run(entry, inputs: ioInputs)["loss"]).scalar
        let lossLLVM = try XCTUnwrap(llvm.run(entry, inputs: ioInputs)["loss"]).scalar
        let lossRef = try XCTUnwrap(oracle.outputs["loss"]).scalar
        XCTAssertEqual(lossC, lossRef, accuracy: 1e-4 * abs(lossRef), "\(entry) loss: C vs f64 interpreter")
        XCTAssertEqual(lossLLVM, lossC, accuracy: 1e-6 * abs(lossC), "\(entry) loss: LLVM vs C")

        XCTAssertFalse(oracle.updates.isEmpty)
        var checkedMoments = 0
        for (name, expected) in oracle.updates {
            let gotC = try c.get(name).data, gotLLVM = try llvm.get(name).data
            let scale = expected.data.map(abs).max() ?? 0
            // f32 through ~40 layers and back against f64: relative to the tensor's scale.
            let tolerance = name.hasPrefix("opt.m.") || name.hasPrefix("opt.v.") || name.contains("running")
                ? (atol: 2e-3 * scale + 1e-9, rtol: 2e-3)
                // Adam's first step moves each weight by ≈ lr·sign(g): tiny gradients may flip sign in f32.
                : (atol: 2.1e-3, rtol: 0.0)
            XCTAssertLessThanOrEqual(closeness(gotC, expected.data, atol: tolerance.atol, rtol: tolerance.rtol), 1,
                                     "\(entry): \(name) C vs f64 interpreter")
            XCTAssertLessThanOrEqual(closeness(gotLLVM, gotC, atol: 1e-6 * scale + 1e-12, rtol: 1e-5), 1,
                                     "\(entry): \(name) LLVM vs C")
            if name.hasPrefix("opt.m.") { checkedMoments += 1 }
        }
        XCTAssertGreaterThan(checkedMoments, 10, "gradients of many weights were compared")
    }

    func testPretrainStepAgrees() throws { try checkStep("pretrain_step") }
    func testFinetuneStepAgrees() throws { try checkStep("finetune_step") }

    func nodes(_ executor: Executor, algorithm: String) throws -> Int {
        try executor.artifact.finalIR.components(separatedBy: "algorithm=\"\(algorithm)\"").count - 1
    }

    func testTheDefaultCompileUsesEveryAlgorithm() throws {
        let executor = try compiled(.c)
        // 32×32 layers (192 tiles of 4×4 at batch 3), 16×16 ones (192 of 2×2), and im2col below.
        XCTAssertGreaterThan(try nodes(executor, algorithm: "winograd4"), 5)
        XCTAssertGreaterThan(try nodes(executor, algorithm: "winograd2"), 5)
        XCTAssertTrue(try executor.artifact.finalIR.contains("{pad=[1,1]} : f32[3,64,2,2]"), "the smallest layers stay on im2col")
        XCTAssertTrue(try executor.artifact.finalIR.contains("batch_moments("), "a batch norm's moments in one pass")
        XCTAssertTrue(try executor.artifact.finalIR.contains("prologue=max(add(mul(in0, in1), in2), 0.0)"),
                      "a decoder block's second convolution applies the first one's batch norm and ReLU (checked by the steps' tests)")
        XCTAssertTrue(try executor.artifact.finalIR.contains("fused_conv2d_grad_weight("), "and so does its weight gradient")
        XCTAssertTrue(try executor.artifact.finalIR.contains("gt(add(mul("), "and the input gradient's ReLU gate")
    }

    /// Only the DDeP step: fine-tuning trains the encoder's batch norms, and
    /// at this size layer4's are over three 1×1 images, whose three-value
    /// variance magnifies Winograd's 1e-5 rounding past this test's
    /// tolerance (auto leaves those 3-tile layers to im2col).
    func testTheDDePStepWithWinogradWhereverItAppliesAgrees() throws {
        XCTAssertGreaterThan(try nodes(try compiled(.c, convAlgorithm: .winograd), algorithm: "winograd4"), 20)
        try checkStep("pretrain_step", convAlgorithm: .winograd)
    }

    /// With a cost table (`ddepc tune`'s; made up here: the three algorithms
    /// in turn over the step's convolutions, against the rule on many), the
    /// DDeP step computes what the interpreter does. (Only the DDeP step, as
    /// with F(4×4) wherever it applies: see there.)
    func testTheDDePStepWithMeasuredChoicesAgrees() throws {
        var options = CompileOptions()
        (options.batch, options.size, options.classes) = (Self.config.batch, Self.config.size, Self.config.classes)
        let convolutions = try ConvTuner.convolutions(of: try buildModule(UNet.small, config: Self.config), options: options)
        let algorithms = ConvCostTable.algorithms
        let table = ConvCostTable(isa: "any", threads: 1, cpu: "made up", measurements: convolutions.enumerated().map { i, convolution in
            ConvCostTable.Measurement(convolution: convolution, seconds: Dictionary(uniqueKeysWithValues: algorithms.indices.map {
                (algorithms[$0], $0 == i % algorithms.count ? 1.0 : 2.0)
            }))
        })
        let finalIR = try compiled(.c, convCosts: table).artifact.finalIR
        let ruled = try compiled(.c).artifact.finalIR
        XCTAssertNotEqual(finalIR, ruled, "the table chose otherwise than the rule")
        for name in ConvOps.Algorithm.winograd.keys {
            XCTAssertGreaterThan(finalIR.components(separatedBy: "algorithm=\"\(name)\"").count - 1, 3, name)
        }
        try checkStep("pretrain_step", convCosts: table)
    }

    /// With --moments-in-epilogue: every training batch norm's moments are
    /// gathered by the convolution before it (im2col and Winograd alike),
    /// and the fine-tuning step, whose batch norms are all trained, agrees.
    func testTheFinetuneStepWithMomentsInEpiloguesAgrees() throws {
        let executor = try compiled(.c, momentsInEpilogue: true)
        let finalIR = try executor.artifact.finalIR
        XCTAssertGreaterThan(finalIR.components(separatedBy: "{in_epilogue=true}").count - 1, 20)
        XCTAssertTrue(finalIR.contains("{moments=true, pad=[1,1]} : f32[3,64,2,2]"), "an im2col convolution gathers them")
        let lines = finalIR.split(separator: "\n")
        XCTAssertTrue(lines.contains { $0.contains("algorithm=\"winograd4\"") && $0.contains("moments=true") }, "and a Winograd one")
        XCTAssertTrue(lines.contains { $0.contains("input_gather=") && $0.contains("moments=true") }, "and one that gathers its input")
        try checkStep("finetune_step", momentsInEpilogue: true)
    }

    /// Compiled and run with the kernels' AVX2 path (DDEPC_ISA=avx2): on an
    /// AVX-512 CPU the generated code leaves AVX-512 alone too (the C
    /// compiler is told so, and LLVM's target machine), as on an AVX2-only
    /// machine, where there is nothing to leave; the fine-tuning step agrees
    /// just the same.
    func testTheAVX2PathAgrees() throws {
        defer { _ = ddp_set_isa("native") }
        let c = try compiled(.c, isa: "avx2"), llvm = try compiled(.llvm, isa: "avx2")
        if String(cString: ddp_cpu_isa()) == "avx512" {
            XCTAssertTrue(c.artifact.manifest.compileFlags.contains("-mno-avx512f"), "\(c.artifact.manifest.compileFlags)")
            XCTAssertTrue(llvm.artifact.manifest.compileFlags.contains("-avx512f"), "\(llvm.artifact.manifest.compileFlags)")
        } else {
            XCTAssertFalse((c.artifact.manifest.compileFlags + llvm.artifact.manifest.compileFlags).contains { $0.contains("avx512") },
                           "an AVX2-only CPU has no AVX-512 to leave alone")
        }
        let native = try compiled(.c)
        XCTAssertFalse(native.artifact.manifest.compileFlags.contains { $0.contains("avx512") },
                       "the native path keeps what the CPU has")
        try checkStep("finetune_step", isa: "avx2")
    }
}
