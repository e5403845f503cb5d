import Foundation
import Runtime
import XCTest

/// `ddepc train` beyond the denoising basics: fine-tuning from a pretraining
/// checkpoint on a label fraction, NaN stops, bad files, options the
/// compiled step cannot honour, kill -9 + resume of a fine-tuning run; and
/// what comes after: `eval`, `predict`, `report`.
final class TrainingCLITests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static let work = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-train-\(UUID().uuidString)")
    static var artifact: String { work.appendingPathComponent("seg.ddepc").path }
    static var labeled: String { work.appendingPathComponent("labeled").path }
    nonisolated(unsafe) static var setUpError: String?

    /// One small artifact (3 classes, batch 2, 32×32) and one labeled set for all tests.
    override class func setUp() {
        do {
            try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
            try SceneFixtures.writeGeneric(at: URL(fileURLWithPath: labeled), count: 12, classes: 3, width: 40, height: 36, seed: 100)
            let compiled = try DdepcCommand.run(["compile", "unet-small", "-o", artifact, "--batch", "2", "--size", "32", "--classes", "3"],
                                                in: repository)
            if compiled.status != 0 { setUpError = "compile failed: \(compiled.stderr)" }
        } catch {
            setUpError = "\(error)"
        }
    }

    override class func tearDown() {
        try? FileManager.default.removeItem(at: work)
    }

    override func setUpWithError() throws {
        if let error = Self.setUpError { throw SharedSetUpFailed(description: error) }
    }

    func path(_ name: String) -> String { Self.work.appendingPathComponent(name).path }

    @discardableResult
    func ddepc(_ arguments: [String]) throws -> DdepcCommand.Result {
        try DdepcCommand.run(arguments, in: Self.repository)
    }

    func losses(_ run: String) throws -> [Double] {
        let text = try String(contentsOfFile: path(run) + "/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return (object["loss"] as! NSNumber).doubleValue
        }
    }

    /// DDeP pretraining, then fine-tuning from its checkpoint on half the
    /// labels: the decoder is taken over, the head starts fresh, the chosen
    /// images are recorded (the same for the same seed), and the loss falls.
    func testFinetuneFromAPretrainingCheckpointOnALabelFraction() throws {
        let pretrain = try ddepc(["train", Self.artifact, "--mode", "ddep", "--images", "Examples/data/images", "--steps", "6",
                                  "--out", path("pre")])
        XCTAssertEqual(pretrain.status, 0, pretrain.all)

        let finetune = ["train", Self.artifact, "--mode", "finetune", "--data", Self.labeled, "--label-fraction", "1/2",
                        "--init", path("pre"), "--steps", "40", "--lr", "0.01", "--warmup", "3", "--seed", "4"]
        let tuned = try ddepc(finetune + ["--out", path("tune")])
        XCTAssertEqual(tuned.status, 0, tuned.all)
        XCTAssertTrue(tuned.stdout.contains("fine-tuning on 6 of 12 labeled images"), tuned.stdout)
        XCTAssertTrue(tuned.stdout.contains("from the seed: head.seg"), tuned.stdout)
        XCTAssertTrue(tuned.stdout.contains("dec "), tuned.stdout)
        let subset = try String(contentsOfFile: path("tune/label_subset.txt"), encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(subset.count, 6)
        XCTAssertTrue(subset.allSatisfy { $0.hasPrefix("images/scene") }, "\(subset)")
        let config = try String(contentsOfFile: path("tune/config.json"), encoding: .utf8)
        XCTAssertTrue(config.contains("\"labelFraction\" : \"1\\/2\""), config)

        let curve = try losses("tune")
        XCTAssertEqual(curve.count, 40)
        let first = curve.prefix(5).reduce(0, +) / 5, last = curve.suffix(5).reduce(0, +) / 5
        XCTAssertLessThan(last, 0.7 * first, "the cross-entropy falls: \(curve)")

        // With a vanishing learning rate one step leaves the weights as they
        // started: encoder and decoder from the pretraining checkpoint, the
        // head fresh from this run's seed (not the pretraining run's).
        let frozen = try ddepc(finetune + ["--out", path("tune-start"), "--steps", "1", "--lr", "1e-20", "--warmup", "0"])
        XCTAssertEqual(frozen.status, 0, frozen.all)
        let pre = try SafetensorsFile(contentsOf: URL(fileURLWithPath: path("pre/last.safetensors")))
        let start = try SafetensorsFile(contentsOf: URL(fileURLWithPath: path("tune-start/last.safetensors")))
        let weights = start.names.filter { $0.hasSuffix(".weight") && !$0.hasPrefix("opt.") }
        XCTAssertTrue(weights.contains { $0.hasPrefix("dec.") } && weights.contains { $0.hasPrefix("enc.") })
        for name in weights where name.hasPrefix("enc.") || name.hasPrefix("dec.") {
            XCTAssertEqual(try start.floats(name), try pre.floats(name), name)
        }
        XCTAssertNotEqual(try start.floats("head.seg.weight"), try pre.floats("head.seg.weight"))

        // The same seed chooses the same images; another seed other ones.
        let again = try ddepc(finetune + ["--out", path("tune-again"), "--steps", "1"])
        XCTAssertEqual(again.status, 0, again.all)
        XCTAssertEqual(try String(contentsOfFile: path("tune-again/label_subset.txt"), encoding: .utf8).split(separator: "\n"), subset)
        let other = try ddepc(finetune + ["--out", path("tune-other"), "--steps", "1", "--seed", "5"])
        XCTAssertEqual(other.status, 0, other.all)
        XCTAssertNotEqual(try String(contentsOfFile: path("tune-other/label_subset.txt"), encoding: .utf8).split(separator: "\n"), subset)
    }

    /// A diverging run stops at the first non-finite loss, naming the step
    /// and the last good checkpoint, which stays loadable.
    func testNonFiniteLossStopsWithTheStepAndTheLastGoodCheckpoint() throws {
        let result = try ddepc(["train", Self.artifact, "--mode", "finetune", "--data", Self.labeled, "--lr", "1e30",
                                "--schedule", "constant", "--steps", "20", "--checkpoint-every", "1", "--out", path("nan")])
        XCTAssertEqual(result.status, 1, result.all)
        let message = result.stderr
        let match = try XCTUnwrap(message.range(of: #"at step (\d+)"#, options: .regularExpression), message)
        let step = Int(message[match].dropFirst(8))!
        XCTAssertGreaterThan(step, 1, message)
        let good = CheckpointDirectory(run: URL(fileURLWithPath: path("nan"))).url(step: step - 1).path
        XCTAssertTrue(message.contains("the last good checkpoint is \(good) (step \(step - 1))"), message)
        let file = try SafetensorsFile(contentsOf: URL(fileURLWithPath: good))
        XCTAssertEqual(file.metadata["step"], "\(step - 1)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: CheckpointDirectory(run: URL(fileURLWithPath: path("nan"))).url(step: step).path))
    }

    func testBadFilesFailWithTheirPathOrAreSkipped() throws {
        let folder = path("photos")
        try FileManager.default.createDirectory(atPath: folder + "/nested", withIntermediateDirectories: true)
        for name in ["a.png", "b.png", "nested/c.png"] {
            try FileManager.default.copyItem(atPath: Self.repository.path + "/Examples/data/images/apple.png", toPath: folder + "/" + name)
        }
        try Data([0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]).write(to: URL(fileURLWithPath: folder + "/nested/broken.jpg"))
        let common = ["train", Self.artifact, "--mode", "dep", "--images", folder, "--steps", "4"]
        let failed = try ddepc(common + ["--out", path("bad-fail")])
        XCTAssertEqual(failed.status, 1)
        XCTAssertTrue(failed.stderr.contains(folder + "/nested/broken.jpg: corrupt JPEG data"), failed.stderr)
        let skipped = try ddepc(common + ["--out", path("bad-skip"), "--on-bad-file", "skip"])
        XCTAssertEqual(skipped.status, 0, skipped.all)
        XCTAssertEqual(skipped.stderr.components(separatedBy: "warning: skipping \(folder)/nested/broken.jpg").count, 2, skipped.stderr)
        XCTAssertTrue(skipped.stdout.contains("skipped 1 unreadable file"), skipped.stdout)
    }

    /// The paper's knobs and the optimizer's run on one compiled step; options
    /// that cannot be honoured are refused with what to do, never ignored.
    func testTrainingOptionsAreHonouredOrRefused() throws {
        let images = ["--images", "Examples/data/images", "--steps", "2"]
        let honoured: [[String]] = [
            ["--gamma-schedule", "uniform"], ["--target", "x"],
            ["--optimizer", "adam", "--weight-decay", "0.01"], ["--noise", "simple", "--sigma", "0.3"],
        ]
        for (index, options) in honoured.enumerated() {
            let run = path("honoured-\(index)")
            let result = try ddepc(["train", Self.artifact] + options + images + ["--out", run])
            XCTAssertEqual(result.status, 0, "\(options): \(result.all)")
            let metrics = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)
            XCTAssertEqual(metrics.split(separator: "\n").count, 2, "\(options)")
            XCTAssertTrue(metrics.contains("\"grad_norm\":"), "the global gradient norm is logged: \(metrics)")
        }

        let cases: [([String], String)] = [
            (["--batch-size", "8"] + images, "compiled for batch 2"),
            (["--mode", "finetune", "--data", Self.labeled, "--label-fraction", "1/0"], "--label-fraction"),
            (["--mode", "finetune", "--images", "Examples/data/images"], "use --data DIR"),
            (["--steps", "5", "--epochs", "1"] + ["--images", "Examples/data/images"], "not both"),
            (["--gamma-schedule", "uniform", "--noise", "simple"] + images, "use it with --noise scaled"),
            // Clipping is compiled in or not (below).
            (["--clip-grad-norm", "0.5"] + images, "ddepc compile --gradient-clipping"),
        ]
        for (arguments, expected) in cases {
            let result = try ddepc(["train", Self.artifact] + arguments + ["--out", path("refused")])
            XCTAssertNotEqual(result.status, 0, "\(arguments)")
            XCTAssertTrue(result.stderr.contains(expected), "\(arguments): \(result.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("refused") + "/checkpoints"))

        // Steps compiled with clipping clip.
        let clipping = path("clipping.ddepc")
        let compiled = try ddepc(["compile", "unet-small", "-o", clipping, "--batch", "2", "--size", "32", "--classes", "3", "--gradient-clipping"])
        XCTAssertEqual(compiled.status, 0, compiled.all)
        let clipped = try ddepc(["train", clipping, "--clip-grad-norm", "0.5"] + images + ["--out", path("clipped")])
        XCTAssertEqual(clipped.status, 0, clipped.all)

        // A labeled set whose class count differs from the artifact's head.
        let four = path("four-classes")
        try SceneFixtures.writeGeneric(at: URL(fileURLWithPath: four), count: 2, classes: 4, width: 32, height: 32, seed: 1)
        let mismatch = try ddepc(["train", Self.artifact, "--mode", "finetune", "--data", four, "--out", path("mismatch")])
        XCTAssertEqual(mismatch.status, 1)
        XCTAssertTrue(mismatch.stderr.contains("--classes 4"), mismatch.stderr)

        // Starting over in a run directory that holds checkpoints would lose them.
        XCTAssertEqual(try ddepc(["train", Self.artifact] + images + ["--out", path("once")]).status, 0)
        let again = try ddepc(["train", Self.artifact] + images + ["--out", path("once")])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.contains("continue it with --resume"), again.stderr)
        let changed = try ddepc(["train", Self.artifact] + images + ["--out", path("once"), "--resume", "--lr", "0.5"])
        XCTAssertEqual(changed.status, 1)
        XCTAssertTrue(changed.stderr.contains("lr: 0.001 → 0.5"), changed.stderr)
    }

    /// A fine-tuning run (augmentation with random scales, a label fraction,
    /// epochs) killed with SIGKILL and resumed ends bit-identical to one that
    /// was never interrupted.
    func testKilledFinetuneRunResumesBitForBit() throws {
        XCTAssertEqual(try ddepc(["train", Self.artifact, "--images", "Examples/data/images", "--steps", "1", "--out", path("ft-pre")]).status, 0)
        let common = ["train", Self.artifact, "--mode", "finetune", "--data", Self.labeled, "--label-fraction", "75%",
                      "--scale-range", "0.8,1.25", "--epochs", "40", "--seed", "2", "--checkpoint-every", "7", "--weight-decay", "0.01"]
        // The resumed run does not repeat --init: its checkpoint holds the weights.
        let straight = try ddepc(common + ["--init", path("ft-pre"), "--out", path("ft-straight")])
        XCTAssertEqual(straight.status, 0, straight.all)

        let (killed, logged) = try DdepcCommand.killMidRun(common + ["--init", path("ft-pre"), "--out", path("ft-killed")],
                                                           in: Self.repository, metrics: path("ft-killed") + "/metrics.jsonl",
                                                           afterSteps: 100)
        XCTAssertTrue(killed, "killed before it finished (at \(logged) steps)")

        let resumed = try ddepc(common + ["--out", path("ft-killed"), "--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.all)
        XCTAssertTrue(resumed.stdout.contains("resuming"), resumed.stdout)
        let a = try Data(contentsOf: URL(fileURLWithPath: path("ft-straight") + "/last.safetensors"))
        let b = try Data(contentsOf: URL(fileURLWithPath: path("ft-killed") + "/last.safetensors"))
        XCTAssertEqual(a, b, "the resumed run ends with the same checkpoint bytes")
        XCTAssertEqual(try losses("ft-killed"), try losses("ft-straight"))
    }

    /// Fine-tune, then evaluate on wide images (run as square tiles) with
    /// and without flips and scales, predict coloured masks, and report.
    func testEvaluatePredictAndReportAFinetunedModel() throws {
        let tuned = try ddepc(["train", Self.artifact, "--mode", "finetune", "--data", Self.labeled, "--steps", "80", "--lr", "0.01",
                               "--warmup", "5", "--out", path("model")])
        XCTAssertEqual(tuned.status, 0, tuned.all)
        let val = path("val")
        try SceneFixtures.writeGeneric(at: URL(fileURLWithPath: val), count: 3, classes: 3, width: 64, height: 32, seed: 900)

        let plain = try ddepc(["eval", path("model"), "--data", val])
        XCTAssertEqual(plain.status, 0, plain.all)
        XCTAssertTrue(plain.stdout.contains("confusion matrix (rows: ground truth, columns: prediction)"), plain.stdout)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("model/eval.json")))) as? [String: Any])
        let matrix = try XCTUnwrap(json["confusion_matrix"] as? [[Int]])
        XCTAssertEqual(matrix.flatMap { $0 }.reduce(0, +), 3 * 64 * 32, "every pixel of the three images counted once")
        let miou = try XCTUnwrap((json["mIoU"] as? NSNumber)?.doubleValue)
        XCTAssertGreaterThan(miou, 0.5, "the colours are easy to learn: \(plain.stdout)")
        XCTAssertEqual(json["tile"] as? String, "32")

        let tta = try ddepc(["eval", path("model/last.safetensors"), "--data", val, "--flip", "--scales", "0.75,1.0,1.25",
                             "--json", path("tta.json")])
        XCTAssertEqual(tta.status, 0, tta.all)
        let ttaJSON = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("tta.json")))) as? [String: Any])
        XCTAssertEqual(ttaJSON["flip"] as? String, "true")
        XCTAssertEqual(ttaJSON["scales"] as? String, "0.75,1.0,1.25")
        XCTAssertGreaterThan((ttaJSON["mIoU"] as? NSNumber)?.doubleValue ?? 0, 0.5)

        // A pretraining checkpoint evaluates, with a note that its head is untrained.
        let pre = try ddepc(["train", Self.artifact, "--images", "Examples/data/images", "--steps", "1", "--out", path("pre-eval")])
        XCTAssertEqual(pre.status, 0, pre.all)
        let untrained = try ddepc(["eval", path("pre-eval"), "--data", val, "--artifact", Self.artifact, "--limit", "1"])
        XCTAssertEqual(untrained.status, 0, untrained.all)
        XCTAssertTrue(untrained.stderr.contains("never trained"), untrained.stderr)
        try SceneFixtures.writeGeneric(at: URL(fileURLWithPath: path("four-eval")), count: 1, classes: 4, width: 32, height: 32, seed: 1)
        let wrong = try ddepc(["eval", path("model"), "--data", path("four-eval")])
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.stderr.contains("lists 4 classes but the model has 3"), wrong.stderr)

        // predict: a file and a folder; masks at the images' sizes.
        let predicted = try ddepc(["predict", path("model"), val + "/images/scene0.png", "Examples/data/images", "-o", path("predictions")])
        XCTAssertEqual(predicted.status, 0, predicted.all)
        let mask = try Image.load(URL(fileURLWithPath: path("predictions/scene0_mask.png")))
        XCTAssertEqual([mask.width, mask.height, mask.channels], [64, 32, 3])
        let labels = try LabelMap.load(URL(fileURLWithPath: path("predictions/scene0_labels.png")))
        XCTAssertTrue(labels.labels.allSatisfy { $0 < 3 })
        let apple = try Image.load(URL(fileURLWithPath: "Examples/data/images/apple.png", relativeTo: Self.repository))
        let overlay = try Image.load(URL(fileURLWithPath: path("predictions/apple_overlay.png")))
        XCTAssertEqual([overlay.width, overlay.height], [apple.width, apple.height])

        let report = try ddepc(["report", path("model")])
        XCTAssertEqual(report.status, 0, report.all)
        XCTAssertTrue(report.stdout.contains("steps 80 of 80 (finished)"), report.stdout)
        XCTAssertTrue(report.stdout.contains("eval: mIoU"), report.stdout)
        XCTAssertTrue(try String(contentsOfFile: path("model/loss.svg"), encoding: .utf8).contains("<polyline"))
    }
}
