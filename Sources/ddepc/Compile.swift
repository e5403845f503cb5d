import ArgumentParser
import Driver
import Foundation
import IR
import ModelZoo
import Passes
import Runtime

extension Backend: ExpressibleByArgument {}
extension SelectConvAlgorithm.Mode: ExpressibleByArgument {}

/// The models ddepc knows by name.
enum Zoo {
    static let models: [String: SegmentationModel] = [
        "unet-small": UNet.small,
        "unet-r18": UNet(encoder: .resnet18),
        "unet-r34": UNet(encoder: .resnet34),
        "unet-r50": UNet(encoder: .resnet50),
        "unet-vgg16": UNet.vgg16,
        "unet-vgg16-tiny": UNet.vgg16Tiny,
        "transunet": TransUNet.r50ViTB16,
        "transunet-ddep-1x": TransUNet(.r50ViTB16, decoder: .ddep1x),
        "transunet-ddep-2x": TransUNet(.r50ViTB16, decoder: .ddep2x),
        "transunet-ddep-3x": TransUNet(.r50ViTB16, decoder: .ddep3x),
        "transunet-small": TransUNet.small,
        "transunet-tiny": TransUNet.tiny,
    ]
}

struct ModelShapeOptions: ParsableArguments {
    @Option(help: "Batch size the steps are compiled for.") var batch = 4
    @Option(help: "Square input size in pixels.") var size = 64
    @Option(help: "Number of segmentation classes (fine-tuning head).") var classes = 2
    @Option(name: .customLong("image-classes"), help: "Number of image classes of the encoder's classification head (--mode classify).")
    var imageClasses = 10

    func validate() throws {
        guard batch > 0, size > 0, classes > 0, imageClasses > 0 else {
            throw ValidationError("--batch, --size, --classes and --image-classes must be positive")
        }
    }
}

struct Compile: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compile a model file (.swift), a zoo model name, or a .ddir file into an artifact directory.",
        discussion: "Zoo models: \(Zoo.models.keys.sorted().joined(separator: ", ")).")

    @ArgumentParser.Argument(help: "MODEL.swift, a zoo name, or GRAPH.ddir") var model: String
    @Option(name: .shortAndLong, help: "Artifact directory to write (NAME.ddepc).") var output: String?
    @Option(help: "Code generator: c or llvm.") var backend: Backend = .c
    @OptionGroup var shape: ModelShapeOptions
    @Option(name: .customLong("print-ir-after"), help: "Print the IR after the named pass (or 'all'); repeatable.")
    var printIRAfter: [String] = []
    @Flag(name: .customLong("print-ir-after-change"), help: "With --print-ir-after, print only when the pass changed the IR.")
    var printIRAfterChange = false
    @Option(name: .customLong("ir-dump-dir"), help: "Write one numbered .ddir file per pass into this directory.")
    var irDumpDir: String?
    @Flag(name: .customLong("time-passes"), help: "Print how long each pass took.") var timePasses = false
    @Flag(name: .customLong("data-parallel"), help: "Steps for `mpirun -np N ddepc train`: gradients and batch-norm statistics averaged across the processes inside the step (a single process runs them as usual).")
    var dataParallel = false
    @Option(name: .customLong("conv-algorithm"), help: "How 3×3 stride-1 convolutions are computed: auto (Winograd F(4×4,3×3) or F(2×2,3×3) where it is faster: as --conv-costs measured it, else by tile counts; F(4×4) rounds to about 1e-5 of the output's magnitude), direct (im2col + GEMM everywhere), winograd (F(4×4,3×3) wherever it applies), as-written (what a .ddir file's nodes name; im2col where they name nothing).")
    var convAlgorithm: SelectConvAlgorithm.Mode = .auto
    @Option(name: .customLong("conv-costs"), help: "A cost table `ddepc tune` measured on this machine: with --conv-algorithm auto, each convolution it has gets the algorithm that was fastest here.")
    var convCosts: String?
    @Option(name: .customLong("memory-budget"), help: "Megabytes of live arena (activations, gradients, scratch) each training step should fit in. Above it, convolutions and matmuls are computed again in the backward pass instead of held (a transformer block's projections, the narrower 3×3 convolutions): less memory for more time. `ddepc inspect` prints each step's arena.")
    var memoryBudget: Double?
    @Flag(name: .customLong("moments-in-epilogue"), help: "Convolutions that feed a training batch norm gather its mean and variance as they store their output, instead of a pass over it (batch_moments). Off by default: on Zen 5 (AVX-512) the sums in double cost the convolution about what the pass costs.")
    var momentsInEpilogue = false
    @Flag(name: .customLong("gradient-clipping"), help: "Training steps that can clip the global gradient norm (`ddepc train --clip-grad-norm`). They hold every gradient until the backward pass ends; without clipping each weight is updated as soon as its gradient is complete.")
    var gradientClipping = false
    @Flag(name: .customLong("no-verify"), help: "Do not run the verifier after every pass.") var noVerify = false
    @Option(name: .customLong("model-timeout"), help: "Seconds a model file (.swift) may take to build its model before it is stopped.")
    var modelTimeout = ModelFileEvaluator.defaultTimeout

    func validate() throws {
        guard modelTimeout > 0, modelTimeout.isFinite else { throw ValidationError("--model-timeout must be a positive number of seconds") }
        if let memoryBudget, !(memoryBudget > 0 && memoryBudget.isFinite) {
            throw ValidationError("--memory-budget must be a positive number of megabytes, got \(memoryBudget)")
        }
        let known = Set(PassManager.knownPassNames + ["all"])
        for name in printIRAfter where !known.contains(name) {
            throw ValidationError("unknown pass '\(name)' for --print-ir-after; passes: \(PassManager.knownPassNames.joined(separator: ", ")), or all")
        }
    }

    func run() throws {
        try reportingErrors {
            // Before anything can fail: an artifact a killed compile moved aside is put back.
            CompileDriver.recoverInterruptedInstall(of: URL(fileURLWithPath: output ?? defaultOutput))
            let module = try loadModel()
            var options = CompileOptions()
            options.backend = backend
            options.batch = shape.batch
            options.size = shape.size
            options.classes = shape.classes
            // A .ddir fixes its own shapes; the manifest must describe them, not the defaults.
            if model.hasSuffix(".ddir"), let own = ModelShape(of: module) {
                (options.batch, options.size, options.classes) = (own.batch, own.size, own.classes)
            }
            options.source = model
            options.dataParallel = dataParallel
            options.convAlgorithm = convAlgorithm
            var costsWarning: String?
            if let convCosts {
                let url = URL(fileURLWithPath: convCosts)
                let table = try ConvCostFile.read(url)
                options.convCosts = table
                costsWarning = ConvCostFile.mismatch(of: table, at: url)
            }
            options.memoryBudget = memoryBudget.map { Int(min($0 * 1e6, 1e18)) } // beyond any machine: no limit, and no overflow
            options.momentsInEpilogue = momentsInEpilogue
            options.optimizer?.clipping = gradientClipping
            options.passOptions.printAfter = Set(printIRAfter)
            options.passOptions.printAfterChange = printIRAfterChange
            options.passOptions.dumpDirectory = irDumpDir.map { URL(fileURLWithPath: $0) }
            options.passOptions.timePasses = timePasses
            options.passOptions.verifyEachPass = !noVerify
            let out = URL(fileURLWithPath: output ?? defaultOutput)
            let report = try CompileDriver.compile(module, to: out, options: options)
            var text = "compiled \(out.path) (\(backend.rawValue) backend): "
            text += report.nodeCounts.keys.sorted().map { "\($0) \(report.nodeCounts[$0]!) nodes" }.joined(separator: ", ")
            text += String(format: "\n  passes %.2f s, code generation and C/LLVM compile %.2f s", report.passSeconds, report.codegenSeconds)
            for memory in report.memory { text += "\n  \(memory)" }
            for warning in report.warnings + [costsWarning].compactMap({ $0 }) { text += "\nwarning: \(warning)" }
            // IR printing goes to stdout; the summary to stderr keeps `--print-ir-after` output clean.
            FileHandle.standardError.write(Data((text + "\n").utf8))
        }
    }

    var defaultOutput: String {
        let base = URL(fileURLWithPath: model).deletingPathExtension().lastPathComponent
        return base + ".ddepc"
    }

    func loadModel() throws -> Module {
        try loadModule(model, shape: shape, modelTimeout: modelTimeout, verify: !noVerify)
    }
}

