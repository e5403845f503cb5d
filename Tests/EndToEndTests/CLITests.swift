import ABI
import Foundation
import IR
import Runtime
import XCTest

/// The `ddepc` command line, run as a user runs it: model file → IR →
/// passes → C and LLVM code → library → training steps whose loss falls →
/// checkpoint → resume; and the errors a user sees for bad input.
final class CLITests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static let work = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-cli-\(UUID().uuidString)")

    override class func setUp() {
        try? FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    }

    override class func tearDown() {
        try? FileManager.default.removeItem(at: work)
    }

    /// Runs the ddepc built beside this test bundle, from the repository root.
    @discardableResult
    func ddepc(_ arguments: [String]) throws -> DdepcCommand.Result {
        try DdepcCommand.run(arguments, in: Self.repository)
    }

    func path(_ name: String) -> String { Self.work.appendingPathComponent(name).path }

    func losses(_ run: String) throws -> [Double] {
        let text = try String(contentsOfFile: path(run) + "/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return (object["loss"] as! NSNumber).doubleValue
        }
    }

    /// The main flow on both backends: the loss falls clearly and
    /// the two backends give the same loss curve.
    func testCompileAndTrainDDePOnBundledImagesWithBothBackends() throws {
        var curves: [String: [Double]] = [:]
        for backend in ["c", "llvm"] {
            let artifact = path("unet-\(backend).ddepc")
            let compile = try ddepc(["compile", "Examples/unet.swift", "-o", artifact, "--backend", backend, "--batch", "4", "--size", "64"])
            XCTAssertEqual(compile.status, 0, compile.stderr)
            for file in ["manifest.json", "module.so", "final.ddir", backend == "c" ? "module.c" : "module.ll"] {
                XCTAssertTrue(FileManager.default.fileExists(atPath: artifact + "/" + file), "\(backend): \(file)")
            }
            let run = "run-\(backend)"
            let train = try ddepc(["train", artifact, "--mode", "ddep", "--images", "Examples/data/images",
                                   "--steps", "30", "--seed", "1", "--out", path(run)])
            XCTAssertEqual(train.status, 0, train.stderr)
            XCTAssertTrue(train.stdout.contains("step   30/30"), train.stdout)
            XCTAssertTrue(FileManager.default.fileExists(atPath: path(run) + "/last.safetensors"))
            curves[backend] = try losses(run)
        }
        let c = try XCTUnwrap(curves["c"]), llvm = try XCTUnwrap(curves["llvm"])
        XCTAssertEqual(c.count, 30)
        let first = c.prefix(5).reduce(0, +) / 5, last = c.suffix(5).reduce(0, +) / 5
        XCTAssertLessThan(last, 0.8 * first, "the denoising loss falls clearly: \(c)")
        for (a, b) in zip(c, llvm) {
            XCTAssertEqual(a, b, accuracy: 1e-3 * abs(a), "C and LLVM loss curves agree: \(c) vs \(llvm)")
        }
    }

    /// A run killed with SIGKILL mid-training and resumed from its last
    /// checkpoint ends with exactly the bytes of an uninterrupted run.
    func testKilledRunResumesBitForBit() throws {
        let artifact = path("resume.ddepc")
        XCTAssertEqual(try ddepc(["compile", "unet-small", "-o", artifact, "--batch", "4", "--size", "64"]).status, 0)
        let common = ["train", artifact, "--mode", "ddep", "--images", "Examples/data/images", "--seed", "3",
                      "--steps", "80", "--checkpoint-every", "10"]
        XCTAssertEqual(try ddepc(common + ["--out", path("straight")]).status, 0)

        // Start the same run and kill it once it is well past a checkpoint.
        let (wasKilled, logged) = try DdepcCommand.killMidRun(common + ["--out", path("killed")], in: Self.repository,
                                                              metrics: path("killed") + "/metrics.jsonl", afterSteps: 25)
        XCTAssertTrue(wasKilled, "the run was killed before it finished (at \(logged) steps)")

        let resumed = try ddepc(common + ["--out", path("killed"), "--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("resuming"), resumed.stdout)
        let straight = try Data(contentsOf: URL(fileURLWithPath: path("straight") + "/last.safetensors"))
        let killed = try Data(contentsOf: URL(fileURLWithPath: path("killed") + "/last.safetensors"))
        XCTAssertEqual(straight, killed, "the resumed run ends with the same checkpoint bytes")
        XCTAssertEqual(try losses("killed"), try losses("straight"), "and the same logged losses, one per step")
    }

    func testIRDumps() throws {
        let artifact = path("dump.ddepc")
        let compiled = try ddepc(["compile", "unet-small", "-o", artifact, "--batch", "1", "--size", "32",
                                  "--print-ir-after=all", "--ir-dump-dir", path("dumps"), "--time-passes", "--moments-in-epilogue"])
        XCTAssertEqual(compiled.status, 0, compiled.stderr)
        for pass in ["infer-shapes", "autodiff", "optimizer", "fold-constants", "cse", "dce", "batch-norm-from-moments", "one-pass-moments",
                     "fuse-elementwise", "fuse-reductions", "fuse-norm-activation", "fuse-conv-epilogue", "fuse-concat", "matmul-layout", "select-conv-algorithm",
                     "prepare-weights", "schedule-updates", "rematerialize", "fuse-conv-prologue", "split-conv-grad-input", "fuse-conv-gather", "group-loops", "fuse-conv-moments", "plan-memory"] {
            XCTAssertTrue(compiled.stdout.contains("// ----- IR after \(pass) -----"), pass)
        }
        XCTAssertTrue(compiled.stdout.contains("=== pass timing ==="))
        let dumps = try FileManager.default.contentsOfDirectory(atPath: path("dumps")).sorted()
        XCTAssertEqual(dumps.first, "00-input.ddir")
        XCTAssertEqual(dumps.count, 26, "\(dumps)")
        for dump in dumps { _ = try Parser.parse(try String(contentsOfFile: path("dumps") + "/" + dump, encoding: .utf8)) }

        let dumped = try ddepc(["dump-ir", artifact])
        XCTAssertEqual(dumped.status, 0)
        XCTAssertEqual(dumped.stdout, try String(contentsOfFile: artifact + "/final.ddir", encoding: .utf8))
        XCTAssertTrue(dumped.stdout.contains("fused_elementwise"))
        XCTAssertTrue(dumped.stdout.contains("fused_conv2d("), "inference convolutions carry their norm and ReLU")
        XCTAssertTrue(dumped.stdout.contains("batch_moments(") && dumped.stdout.contains("{in_epilogue=true}"),
                      "with --moments-in-epilogue, training convolutions gather the next batch norm's moments")
        XCTAssertTrue(dumped.stdout.contains("conv2d_grad_weight"))

        // The final IR compiles again, to the same IR and the same layout,
        // batch and size (they come from the IR, not the option defaults).
        try dumped.stdout.write(toFile: path("final.ddir"), atomically: true, encoding: .utf8)
        let again = try ddepc(["compile", path("final.ddir"), "-o", path("again.ddepc")])
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertEqual(try String(contentsOfFile: path("again.ddepc/final.ddir"), encoding: .utf8), dumped.stdout)
        let manifests = try [artifact, path("again.ddepc")].map { directory in
            var manifest = try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: directory + "/manifest.json")))
            manifest.source = ""
            manifest.moduleHash = nil  // the library's bytes are the C compiler's business
            return manifest
        }
        XCTAssertEqual(manifests[0], manifests[1])
    }

    /// `--memory-budget`: below what the training steps need, they recompute
    /// convolutions and matmuls, their arenas shrink, they train to the same
    /// losses, and each step the budget cannot hold is named; a module
    /// compiled already is refused.
    /// (A budget a step is within changes nothing: RematerializeTests.)
    func testMemoryBudgetShrinksTrainingArenasOrSaysWhyNot() throws {
        func arenas(_ output: String) -> [String: Int] {
            var arenas: [String: Int] = [:]
            for line in output.split(separator: "\n") where line.contains("_step: arena ") {
                let words = line.split(separator: " ")
                arenas[String(words[0].dropFirst().dropLast())] = Int(words[2])
            }
            return arenas
        }
        let plain = try ddepc(["compile", "unet-small", "--size", "32", "-o", path("plain.ddepc")])
        let tight = try ddepc(["compile", "unet-small", "--size", "32", "-o", path("tight.ddepc"), "--memory-budget", "0.001"])
        for result in [plain, tight] { XCTAssertEqual(result.status, 0, result.all) }
        let (before, after) = (arenas(plain.all), arenas(tight.all))
        XCTAssertEqual(Set(before.keys), ["pretrain_step", "pretrain_dep_step", "finetune_step", "classify_step"])
        for (step, bytes) in before {
            XCTAssertLessThan(after[step] ?? .max, bytes, step)
            XCTAssertTrue(tight.stderr.contains("warning: @\(step)'s arena is "), tight.stderr)
        }
        XCTAssertTrue(tight.stderr.contains("above --memory-budget 1.0 KB"), tight.stderr)
        XCTAssertTrue(tight.stderr.contains("At its peak it holds "), "the warning says what the budget could not free: \(tight.stderr)")
        XCTAssertFalse(plain.stderr.contains("warning"), plain.stderr)
        // Recomputed values are the same kernels on the same inputs: the
        // training runs agree to the bit.
        let curves = try ["plain", "tight"].map { name in
            let run = try ddepc(["train", path(name + ".ddepc"), "--mode", "ddep", "--images", "Examples/data/images",
                                 "--steps", "3", "--seed", "5", "--out", path(name + "-run")])
            XCTAssertEqual(run.status, 0, run.all)
            return try losses(name + "-run")
        }
        XCTAssertEqual(curves[0].count, 3)
        XCTAssertEqual(curves[1], curves[0])

        let again = try ddepc(["compile", path("tight.ddepc") + "/final.ddir", "-o", path("budgeted-again.ddepc"), "--memory-budget", "1"])
        XCTAssertEqual(again.status, 1, again.all)
        XCTAssertTrue(again.stderr.contains("--memory-budget: the module's training steps (@pretrain_step"), again.stderr)
        XCTAssertTrue(again.stderr.contains("compile the model itself"), again.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("budgeted-again.ddepc")))
    }

    /// libLLVM is loaded when the LLVM backend first runs, not at start-up:
    /// training, evaluation and the C backend do not carry its pages (41 MB
    /// resident, which the dynamic linker touches to relocate it). The glibc
    /// loader lists what a program loads at start-up when asked to trace.
    func testLLVMIsNotLoadedAtStartUp() throws {
        let traced = try DdepcCommand.run(["--help"], in: Self.repository, environment: ["LD_TRACE_LOADED_OBJECTS": "1"])
        XCTAssertEqual(traced.status, 0, traced.all)
        XCTAssertTrue(traced.stdout.contains("libopenblas"), "the trace lists the libraries: \(traced.all)")
        XCTAssertFalse(traced.stdout.contains("libLLVM"), traced.stdout)
    }

    func testBadModelFileReportsFileAndLine() throws {
        let bad = path("broken.swift")
        try "import ModelZoo\n\nlet model = UNet(encoder: .resnet18\nModelFile.main(model)\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let result = try ddepc(["compile", bad, "-o", path("broken.ddepc")])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("broken.swift:4:"), result.stderr)
        XCTAssertTrue(result.stderr.contains("error:"), result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("broken.ddepc")))
    }

    func testShapeMismatchReportsOpShapesAndLine() throws {
        let file = path("mismatch.swift")
        try """
        import ModelZoo

        struct Broken: SegmentationModel {
            func encode(_ x: Tensor, scope: Scope) -> [Tensor] { [x] }
            func decode(_ features: [Tensor], scope: Scope) -> Tensor {
                let conv = Conv2d(scope["conv"], 5, 8, kernel: 3, padding: 1)
                return conv(features[0])
            }
        }
        ModelFile.main(Broken())

        """.write(toFile: file, atomically: true, encoding: .utf8)
        let result = try ddepc(["compile", file, "-o", path("mismatch.ddepc"), "--batch", "1", "--size", "32"])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("mismatch.swift:7: error: conv2d(f32[1,3,32,32], f32[8,5,3,3])"), result.stderr)
    }

    func testTamperedArtifactIsRefused() throws {
        let artifact = path("tamper.ddepc")
        XCTAssertEqual(try ddepc(["compile", "unet-small", "-o", artifact, "--batch", "1", "--size", "32"]).status, 0)
        try ("// edited\n" + String(contentsOfFile: artifact + "/final.ddir", encoding: .utf8))
            .write(toFile: artifact + "/final.ddir", atomically: true, encoding: .utf8)
        let result = try ddepc(["train", artifact, "--images", "Examples/data/images", "--steps", "1", "--out", path("tamper-run")])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("does not match the manifest's IR hash"), result.stderr)

        let manifest = artifact + "/manifest.json"
        let text = try String(contentsOfFile: manifest, encoding: .utf8)
        try text.replacingOccurrences(of: "\"ddepcVersion\" : \"", with: "\"ddepcVersion\" : \"9.").write(toFile: manifest, atomically: true, encoding: .utf8)
        let versioned = try ddepc(["dump-ir", artifact])
        XCTAssertEqual(versioned.status, 1)
        XCTAssertTrue(versioned.stderr.contains("was built by ddepc 9."), versioned.stderr)
    }

    func testBadArgumentsAndMissingData() throws {
        let unknownPass = try ddepc(["compile", "unet-small", "--print-ir-after=nonsense"])
        XCTAssertNotEqual(unknownPass.status, 0)
        XCTAssertTrue(unknownPass.stderr.contains("unknown pass 'nonsense'"), unknownPass.stderr)

        let unknownModel = try ddepc(["compile", "no-such-model"])
        XCTAssertEqual(unknownModel.status, 1)
        XCTAssertTrue(unknownModel.stderr.contains("is not a .swift model file"), unknownModel.stderr)

        let notArtifact = try ddepc(["train", Self.work.path, "--images", "Examples/data/images"])
        XCTAssertEqual(notArtifact.status, 1)
        XCTAssertTrue(notArtifact.stderr.contains("is not a ddepc artifact"), notArtifact.stderr)

        let artifact = path("data.ddepc")
        XCTAssertEqual(try ddepc(["compile", "unet-small", "-o", artifact, "--batch", "1", "--size", "32"]).status, 0)
        let missing = try ddepc(["train", artifact, "--images", path("no-images"), "--steps", "1", "--out", path("r")])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("no-images"), missing.stderr)
    }

    func testImportWeightsConvertsTimmNamesAndRefusesMisfits() throws {
        let timm = Self.repository.appendingPathComponent("Tests/Fixtures/transunet-tiny-timm.safetensors").path
        let ok = try ddepc(["import-weights", "--format", "timm-r50-vit-b16", timm, "-o", path("imported.safetensors"),
                            "--model", "transunet-tiny", "--size", "48"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("resized the 4×4 grid to 6×6"), ok.stdout)
        XCTAssertTrue(ok.stdout.contains("ignored (not part of the encoder): cls_token, head.bias, head.weight"), ok.stdout)

        // The full-size TransUNet needs far more than the tiny file has: refused, nothing written.
        let misfit = try ddepc(["import-weights", "--format", "timm-r50-vit-b16", timm, "-o", path("misfit.safetensors")])
        XCTAssertEqual(misfit.status, 1)
        XCTAssertTrue(misfit.stderr.contains("nothing was written") && misfit.stderr.contains("mis-shaped"), misfit.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("misfit.safetensors")))

        let truncated = path("truncated.safetensors")
        try Data(try Data(contentsOf: URL(fileURLWithPath: timm)).prefix(3000)).write(to: URL(fileURLWithPath: truncated))
        let damaged = try ddepc(["import-weights", "--format", "timm-r50-vit-b16", truncated, "-o", path("out.safetensors"),
                                 "--model", "transunet-tiny", "--size", "32"])
        XCTAssertEqual(damaged.status, 1)
        XCTAssertTrue(damaged.stderr.hasPrefix("error: ") && damaged.stderr.contains("truncated"), damaged.stderr)
    }

    /// `--format hed-vgg16` on the fixture's HED-named tiny encoder: the
    /// tiny VGG U-Net takes it; the default model (the full-width
    /// unet-vgg16) refuses it and nothing is written.
    func testImportWeightsConvertsHEDNamesAndRefusesMisfits() throws {
        let hed = Self.repository.appendingPathComponent("Tests/Fixtures/unet-vgg16-tiny-hed.safetensors").path
        let ok = try ddepc(["import-weights", "--format", "hed-vgg16", hed, "-o", path("hed-enc.safetensors"), "--model", "unet-vgg16-tiny"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("26 tensors") && ok.stdout.contains("for unet-vgg16-tiny"), ok.stdout)
        XCTAssertTrue(ok.stdout.contains("ignored (not part of the encoder): dsn1/vars/0"), ok.stdout)
        XCTAssertEqual(try SafetensorsFile(contentsOf: URL(fileURLWithPath: path("hed-enc.safetensors"))).names.count, 26)

        let misfit = try ddepc(["import-weights", "--format", "hed-vgg16", hed, "-o", path("hed-misfit.safetensors")])
        XCTAssertEqual(misfit.status, 1)
        XCTAssertTrue(misfit.stderr.contains("nothing was written") && misfit.stderr.contains("enc.features.28.weight"), misfit.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("hed-misfit.safetensors")))
    }

    func testInspectShowsTrainableAndFrozenWeightsPerEntryPoint() throws {
        let artifact = path("tiny-transunet.ddepc")
        let compiled = try ddepc(["compile", "transunet-tiny", "-o", artifact, "--batch", "1", "--size", "32", "--classes", "3"])
        XCTAssertEqual(compiled.status, 0, compiled.stderr)
        let inspect = try ddepc(["inspect", artifact])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        let lines = inspect.stdout.split(separator: "\n").map(String.init)
        let columns = { (name: String) in lines.first { $0.hasPrefix(name + " ") }?.split(separator: " ").map(String.init) ?? [] }
        // name, shape (4 words), count, infer, pretrain_step, pretrain_dep_step, finetune_step, classify_step, denoise
        XCTAssertEqual(columns("enc.root.conv.weight").suffix(7), ["2352", "read", "frozen", "train", "train", "train", "read"], inspect.stdout)
        XCTAssertEqual(columns("head.denoise.bias").suffix(7), ["3", "-", "train", "train", "-", "-", "read"], inspect.stdout)
        let encoder = lines.filter { $0.hasPrefix("enc.") }.compactMap { line in
            let words = line.split(separator: " ")
            return Int(words[words.count - 7])
        }
        let total = lines.filter { $0.hasPrefix("enc.") || $0.hasPrefix("dec.") || $0.hasPrefix("head.") }
        XCTAssertFalse(encoder.isEmpty)
        XCTAssertTrue(lines.contains { $0.hasPrefix("total: ") && $0.contains("parameters in \(total.count) tensors") }, inspect.stdout)
        XCTAssertTrue(lines.contains { $0.hasPrefix("entry pretrain_step: trains ") && $0.contains("frozen \(encoder.reduce(0, +))") },
                      inspect.stdout)
    }
}
