import Foundation
import Runtime
import XCTest

/// Hostile input and misuse: output paths that hold the user's files,
/// damaged or non-finite checkpoints, sizes beyond any memory, file-system
/// errors. Each is refused with what, where and what to do, and nothing the
/// user had is changed.
final class MisuseCLITests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static let work = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-misuse-\(UUID().uuidString)")
    static var artifact: String { work.appendingPathComponent("small.ddepc").path }
    static let images = "Examples/data/images"
    nonisolated(unsafe) static var setUpError: String?

    /// One small artifact (batch 2, 32×32, 3 classes) for all tests.
    override class func setUp() {
        do {
            try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
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

    func write(_ text: String, to name: String) throws {
        let url = URL(fileURLWithPath: path(name))
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: true, encoding: .utf8)
    }

    func read(_ name: String) throws -> String { try String(contentsOfFile: path(name), encoding: .utf8) }

    /// Rewrites one tensor (or the metadata) of a checkpoint into a new file.
    func mutatedCheckpoint(_ source: String, to name: String, metadata: [String: String] = [:],
                           tensor: String? = nil, value: Float = 0) throws -> String {
        var file = try SafetensorsFile(contentsOf: URL(fileURLWithPath: source))
        for (key, text) in metadata { file.metadata[key] = text }
        if let tensor {
            let shape = try file.tensor(tensor).shape
            try file.set(tensor, values: [Float](repeating: value, count: shape.reduce(1, *)), shape: shape)
        }
        try file.write(to: URL(fileURLWithPath: path(name)))
        return path(name)
    }

    /// `compile -o` replaces only an artifact ddepc wrote; a folder that just
    /// has a manifest.json (a web app, a browser extension), or an artifact
    /// the user added files to, is refused before any work and left as it was.
    func testCompileReplacesOnlyItsOwnArtifacts() throws {
        try write(#"{"name": "my browser extension", "version": "1.0"}"#, to: "myext/manifest.json")
        try write("console.log('years of work')", to: "myext/src/app.js")
        let refused = try ddepc(["compile", "unet-small", "-o", path("myext"), "--batch", "2", "--size", "32"])
        XCTAssertEqual(refused.status, 1, refused.all)
        XCTAssertTrue(refused.stderr.contains("\(path("myext")) exists and is not a ddepc artifact (its manifest.json is not a ddepc manifest)"),
                      refused.stderr)
        XCTAssertTrue(refused.stderr.contains("Choose another -o path"), refused.stderr)
        XCTAssertEqual(try read("myext/src/app.js"), "console.log('years of work')")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path("myext")).sorted(), ["manifest.json", "src"])

        // A real artifact is replaced in place, unless the user keeps files in it.
        let artifact = path("again.ddepc")
        for _ in 0..<2 {
            let compiled = try ddepc(["compile", "unet-small", "-o", artifact, "--batch", "1", "--size", "32"])
            XCTAssertEqual(compiled.status, 0, compiled.all)
        }
        try write("my notes", to: "again.ddepc/notes.txt")
        let kept = try ddepc(["compile", "unet-small", "-o", artifact, "--batch", "1", "--size", "32"])
        XCTAssertEqual(kept.status, 1, kept.all)
        XCTAssertTrue(kept.stderr.contains("also holds files ddepc did not write (notes.txt)"), kept.stderr)
        XCTAssertEqual(try read("again.ddepc/notes.txt"), "my notes")
    }

    /// `train --out` writes only into a new or empty folder or over a run of
    /// its own that has no checkpoint yet; the user's config.json and
    /// metrics.jsonl, and a run whose checkpoints are damaged, are kept.
    func testTrainNeverOverwritesFilesItDidNotWrite() throws {
        try write(#"{"my_project_setting": true}"#, to: "proj/config.json")
        try write("keep me\n", to: "proj/metrics.jsonl")
        let train = ["train", Self.artifact, "--images", Self.images, "--steps", "2"]
        let refused = try ddepc(train + ["--out", path("proj")])
        XCTAssertEqual(refused.status, 1, refused.all)
        XCTAssertTrue(refused.stderr.contains("\(path("proj")) is not empty; choose a new --out"), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("nothing was overwritten"), refused.stderr)
        XCTAssertEqual(try read("proj/config.json"), #"{"my_project_setting": true}"#)
        XCTAssertEqual(try read("proj/metrics.jsonl"), "keep me\n")

        // A run whose checkpoints are all damaged is still a run: not restarted over.
        XCTAssertEqual(try ddepc(train + ["--out", path("damaged"), "--checkpoint-every", "1"]).status, 0)
        let checkpoints = CheckpointDirectory(run: URL(fileURLWithPath: path("damaged")))
        for (_, url) in checkpoints.checkpoints() { try Data("damaged".utf8).write(to: url) }
        let metrics = try read("damaged/metrics.jsonl")
        let again = try ddepc(train + ["--out", path("damaged")])
        XCTAssertEqual(again.status, 1, again.all)
        XCTAssertTrue(again.stderr.contains("already holds a run's checkpoints; continue it with --resume"), again.stderr)
        XCTAssertEqual(try read("damaged/metrics.jsonl"), metrics)

        // A run of ours stopped before its first checkpoint starts over.
        try FileManager.default.createDirectory(atPath: path("fresh"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: path("damaged/config.json"), toPath: path("fresh/config.json"))
        let restarted = try ddepc(train + ["--out", path("fresh")])
        XCTAssertEqual(restarted.status, 0, restarted.all)

        // --out naming a file, or below one: the path and the reason, not a Foundation error dump.
        try write("a file", to: "afile")
        let file = try ddepc(train + ["--out", path("afile")])
        XCTAssertEqual(file.status, 1)
        XCTAssertTrue(file.stderr.contains("\(path("afile")) is a file, not a folder"), file.stderr)
        let below = try ddepc(train + ["--out", path("afile/run")])
        XCTAssertEqual(below.status, 1)
        XCTAssertTrue(below.stderr.contains("\(path("afile/run")): could not create the run folder: Not a directory"), below.stderr)
        XCTAssertFalse(below.stderr.contains("NSCocoaErrorDomain"), below.stderr)
        XCTAssertEqual(try read("afile"), "a file")
    }

    /// Non-finite weights are refused wherever a checkpoint is loaded, naming
    /// the tensor; a gradient norm that turns non-finite while the loss stays
    /// finite stops the run like a non-finite loss.
    func testNonFiniteWeightsAreRefusedAndANonFiniteGradientStops() throws {
        let train = ["train", Self.artifact, "--mode", "dep", "--images", Self.images, "--steps", "2"]
        XCTAssertEqual(try ddepc(train + ["--out", path("good"), "--checkpoint-every", "1"]).status, 0)
        let good = path("good/checkpoints/step-00000002.safetensors")
        let tensor = "dec.blocks.0.conv1.0.weight"
        let nan = try mutatedCheckpoint(good, to: "nan.safetensors", tensor: tensor, value: .nan)
        let expected = "\(nan): tensor \"\(tensor)\" holds nan"
        for arguments in [train + ["--init", nan, "--out", path("nan-init")],
                          ["eval", nan, "--artifact", Self.artifact, "--data", path("no-data")]] {
            let result = try ddepc(arguments)
            XCTAssertEqual(result.status, 1, "\(arguments): \(result.all)")
            XCTAssertTrue(result.stderr.contains(expected), "\(arguments): \(result.stderr)")
        }
        _ = try mutatedCheckpoint(good, to: "good/checkpoints/step-00000003.safetensors", metadata: ["step": "3"],
                                  tensor: "opt.m.\(tensor)", value: .infinity)
        // A checkpoint whose artifact is recorded as "" does not mean the current folder.
        let anonymous = try mutatedCheckpoint(good, to: "anonymous.safetensors", metadata: ["artifact": ""])
        let unnamed = try ddepc(["eval", anonymous, "--data", path("no-data")])
        XCTAssertEqual(unnamed.status, 1, unnamed.all)
        XCTAssertTrue(unnamed.stderr.contains("does not name the artifact it was trained with; pass --artifact"), unnamed.stderr)

        let resumed = try ddepc(train + ["--steps", "4", "--out", path("good"), "--resume"])
        XCTAssertEqual(resumed.status, 1, resumed.all)
        XCTAssertTrue(resumed.stderr.contains("tensor \"opt.m.\(tensor)\" holds inf"), resumed.stderr)

        // A batch-norm scale of 3e38 is finite, but the activations after it
        // overflow: the gradient is NaN while ReLU keeps the loss finite.
        let huge = try mutatedCheckpoint(good, to: "huge.safetensors", tensor: "dec.blocks.0.conv1.1.weight", value: 3e38)
        let stopped = try ddepc(train + ["--init", huge, "--out", path("huge")])
        XCTAssertEqual(stopped.status, 1, stopped.all)
        XCTAssertTrue(stopped.stderr.contains("the gradient norm became"), stopped.stderr)
        XCTAssertTrue(stopped.stderr.contains("at step 1; stopping (no checkpoint was written yet"), stopped.stderr)
        XCTAssertTrue(CheckpointDirectory(run: URL(fileURLWithPath: path("huge"))).checkpoints().isEmpty)
    }

    /// A checkpoint whose step metadata is negative or disagrees with its
    /// name is reported as damaged on --resume (the step indexes the data).
    func testResumeRefusesACheckpointWithADamagedStep() throws {
        let train = ["train", Self.artifact, "--images", Self.images, "--steps", "4", "--checkpoint-every", "2"]
        XCTAssertEqual(try ddepc(train + ["--out", path("steps")]).status, 0)
        let newest = path("steps/checkpoints/step-00000004.safetensors")
        for (step, says) in [("-5", "step -5 but its name says step 4"), ("1000000", "step 1000000 but its name says step 4")] {
            _ = try mutatedCheckpoint(newest, to: "steps/checkpoints/step-00000004.safetensors", metadata: ["step": step])
            let resumed = try ddepc(train + ["--steps", "6", "--out", path("steps"), "--resume"])
            XCTAssertEqual(resumed.status, 1, resumed.all)
            XCTAssertTrue(resumed.stderr.contains("\(newest) is damaged: its metadata says \(says)"), resumed.stderr)
        }
    }

    /// Sizes far beyond any machine's memory are refused with how much was
    /// needed and what to change, before anything is allocated or written.
    func testSizesBeyondMemoryAreRefusedWithTheAmountNeeded() throws {
        let big = path("big.ddepc")
        let compiled = try ddepc(["compile", "unet-small", "-o", big, "--batch", "100000000", "--size", "32"])
        XCTAssertEqual(compiled.status, 0, compiled.all)
        XCTAssertTrue(compiled.stderr.contains("warning: @pretrain_step needs "), compiled.stderr)
        XCTAssertTrue(compiled.stderr.contains("it cannot run here. A smaller --batch or --size fits."), compiled.stderr)

        let trained = try ddepc(["train", big, "--images", Self.images, "--steps", "1", "--out", path("big-run")])
        XCTAssertEqual(trained.status, 1, trained.all)
        XCTAssertTrue(trained.stderr.contains("@pretrain_step of big.ddepc (batch 100000000, 32×32) needs "), trained.stderr)
        XCTAssertTrue(trained.stderr.contains("TB of memory, more than this machine has"), trained.stderr)
        XCTAssertTrue(trained.stderr.contains("smaller --batch"), trained.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("big-run")), "nothing written")

        let scenes = try ddepc(["make-scenes", "-o", path("huge-scenes"), "--count", "1", "--size", "100000000"])
        XCTAssertEqual(scenes.status, 1, scenes.all)
        XCTAssertTrue(scenes.stderr.contains("a 100000000×100000000 scene needs 80.0 PB of memory"), scenes.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("huge-scenes")))

        XCTAssertEqual(try ddepc(["train", Self.artifact, "--images", Self.images, "--steps", "1", "--out", path("small-run")]).status, 0)
        try SceneFixtures.writeGeneric(at: URL(fileURLWithPath: path("val")), count: 1, classes: 3, width: 40, height: 32, seed: 1)
        let evaluated = try ddepc(["eval", path("small-run"), "--data", path("val"), "--resize", "1000000000"])
        XCTAssertEqual(evaluated.status, 1, evaluated.all)
        XCTAssertTrue(evaluated.stderr.contains("running a 40×32 image at 1250000000×1000000000 needs "), evaluated.stderr)
        XCTAssertTrue(evaluated.stderr.contains("use a smaller --resize or --scales"), evaluated.stderr)
    }

    /// A model file that records its process id and folder, then never returns.
    func writeEndlessModelFile(_ name: String, started: String) throws -> String {
        try write("""
            import Foundation
            import ModelZoo
            let folder = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
            try! "\\(getpid()) \\(folder)".write(toFile: "\(started)", atomically: true, encoding: .utf8)
            while true {}
            ModelFile.main(UNet.small)

            """, to: name)
        return path(name)
    }

    /// (process id, temporary folder) the endless model file recorded.
    func startedModel(_ started: String) throws -> (pid: pid_t, folder: String) {
        let words = try String(contentsOfFile: started, encoding: .utf8).split(separator: " ")
        return (pid_t(words[0])!, String(words[1]))
    }

    /// Running, as opposed to gone or a zombie waiting to be reaped.
    func isRunning(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let end = stat.range(of: ") ", options: .backwards) else { return false }
        return stat[end.upperBound...].first != "Z"
    }

    /// A model file that never finishes is stopped after --model-timeout with
    /// its process group, and its temporary folder is removed.
    func testEndlessModelFileIsStoppedAfterTheTimeout() throws {
        let started = path("endless-started")
        let model = try writeEndlessModelFile("endless.swift", started: started)
        let result = try ddepc(["compile", model, "-o", path("endless.ddepc"), "--batch", "1", "--size", "32", "--model-timeout", "1"])
        XCTAssertEqual(result.status, 1, result.all)
        XCTAssertTrue(result.stderr.contains("\(model) did not finish building the model within 1 s and was stopped"), result.stderr)
        XCTAssertTrue(result.stderr.contains("--model-timeout SECONDS"), result.stderr)
        let (pid, folder) = try startedModel(started)
        XCTAssertFalse(isRunning(pid), "the model process was killed")
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder), "its temporary folder was removed")
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("endless.ddepc")))
    }

    /// SIGTERM of ddepc while a model file runs ends the model process too
    /// and removes its temporary folder.
    func testTerminatingCompileEndsTheModelFileProcess() throws {
        let started = path("terminated-started")
        let model = try writeEndlessModelFile("terminated.swift", started: started)
        let compile = Process()
        compile.executableURL = DdepcCommand.binary
        compile.arguments = ["compile", model, "-o", path("terminated.ddepc"), "--batch", "1", "--size", "32"]
        compile.currentDirectoryURL = Self.repository
        compile.standardOutput = FileHandle.nullDevice
        compile.standardError = FileHandle.nullDevice
        try compile.run()
        let deadline = Date().addingTimeInterval(120)
        while compile.isRunning, Date() < deadline, !FileManager.default.fileExists(atPath: started) { usleep(10_000) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: started), "the model file started")
        compile.terminate()
        compile.waitUntilExit()
        XCTAssertEqual(compile.terminationReason, .uncaughtSignal)
        XCTAssertEqual(compile.terminationStatus, SIGTERM)
        let (pid, folder) = try startedModel(started)
        // The kill is sent before ddepc exits; reaping the orphan may take a moment.
        let reaped = Date().addingTimeInterval(10)
        while isRunning(pid), Date() < reaped { usleep(10_000) }
        XCTAssertFalse(isRunning(pid), "the model process was killed with ddepc")
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder), "its temporary folder was removed")
    }

    /// Negative option values reach the option's own check instead of
    /// "Missing value"; contradictory or degenerate noise options are named.
    func testNegativeAndContradictoryOptionValuesAreExplained() throws {
        let train = ["train", Self.artifact, "--images", Self.images, "--out", path("options")]
        let cases: [([String], String)] = [
            (train + ["--steps", "-1"], "--steps must be positive"),
            (train + ["--gamma", "-0.5"], "--gamma must be in [0, 1]"),
            (train + ["--lr", "-1e-3"], "--lr must be a positive number"),
            (train + ["--batch-size", "-2"], "--batch-size must be positive"),
            (["compile", "unet-small", "--batch", "-1"], "--batch, --size, --classes and --image-classes must be positive"),
            (["compile", "unet-small", "--memory-budget", "0"], "--memory-budget must be a positive number of megabytes"),
            (["compile", "unet-small", "--memory-budget", "nan"], "--memory-budget must be a positive number of megabytes"),
            (["eval", path("none"), "--data", path("none"), "--scales", "-1"], "--scales expects positive numbers"),
            (["eval", path("none"), "--data", path("none"), "--limit", "-3"], "--limit must be positive"),
            (["eval", path("none"), "--data", path("none"), "--scales", "0.5,,1"], "--scales expects positive numbers"),
            (train + ["--sigma", "0.2", "--gamma", "0.9"], "give --sigma or --gamma, not both"),
            (train + ["--sigma", "inf"], "--sigma must be a finite, non-negative number"),
            (train + ["--noise", "simple", "--gamma", "0.5"], "--noise simple takes --sigma"),
        ]
        for (arguments, expected) in cases {
            let result = try ddepc(arguments)
            XCTAssertNotEqual(result.status, 0, "\(arguments)")
            XCTAssertTrue(result.stderr.contains(expected), "\(arguments): \(result.stderr)")
            XCTAssertFalse(result.stderr.contains("Missing value"), "\(arguments): \(result.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("options")))

        let clean = try ddepc(["train", Self.artifact, "--images", Self.images, "--steps", "1", "--gamma", "1", "--out", path("clean")])
        XCTAssertEqual(clean.status, 0, clean.all)
        XCTAssertTrue(clean.stderr.contains("note: the noise level is 0"), clean.stderr)
    }

    /// Fine-tuning on masks that are all 255 (unlabeled) would train on
    /// nothing with a loss of 0; it stops and says so.
    func testFinetuneOnMasksWithoutLabelsStops() throws {
        let root = URL(fileURLWithPath: path("unlabeled"))
        try SceneFixtures.writeGeneric(at: root, count: 3, classes: 3, width: 32, height: 32, seed: 7)
        for i in 0..<3 {
            let blank = LabelMap(width: 32, height: 32, labels: [UInt8](repeating: LabelMap.ignoreLabel, count: 32 * 32))
            try blank.image.writePNG(to: root.appendingPathComponent("masks/scene\(i).png"))
        }
        let result = try ddepc(["train", Self.artifact, "--mode", "finetune", "--data", root.path, "--steps", "3", "--out", path("no-labels")])
        XCTAssertEqual(result.status, 1, result.all)
        XCTAssertTrue(result.stderr.contains("no labeled pixels in the training set: every mask value of the 3 images of \(root.path)"),
                      result.stderr)
    }

    /// A copy of the shared artifact with its manifest edited by `edit`.
    func tamperedArtifact(_ name: String, edit: (inout [String: Any]) -> Void) throws -> String {
        let copy = path(name)
        try FileManager.default.copyItem(atPath: Self.artifact, toPath: copy)
        let url = URL(fileURLWithPath: copy + "/manifest.json")
        var manifest = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        edit(&manifest)
        try JSONSerialization.data(withJSONObject: manifest).write(to: url)
        return copy
    }

    /// The manifest's layout, shapes and library are checked against what
    /// the artifact's IR and compile produced: an edited size or offset, or a
    /// truncated or swapped module.so, is refused instead of running code
    /// that writes outside its buffers.
    func testTamperedManifestOrLibraryIsRefused() throws {
        let train = { (artifact: String) in ["train", artifact, "--images", Self.images, "--steps", "1", "--out", self.path("tamper-run")] }
        let resized = try tamperedArtifact("resized.ddepc") { $0["size"] = 64 }
        let result = try ddepc(train(resized))
        XCTAssertEqual(result.status, 1, result.all)
        XCTAssertTrue(result.stderr.contains("\(resized)/manifest.json does not match its final.ddir (batch 2, size 64, 3 classes vs batch 2, size 32, 3 classes in the IR)"),
                      result.stderr)

        let arena = try tamperedArtifact("arena.ddepc") { manifest in
            var layout = manifest["layout"] as! [String: Any]
            var entries = layout["entries"] as! [[String: Any]]
            entries[0]["arenaBytes"] = 1024
            layout["entries"] = entries
            manifest["layout"] = layout
        }
        let small = try ddepc(["inspect", arena])
        XCTAssertEqual(small.status, 1, small.all)
        XCTAssertTrue(small.stderr.contains("does not match its final.ddir (the buffer layout or the optimizer's constants differ)"), small.stderr)

        let betas = try tamperedArtifact("betas.ddepc") { manifest in
            var optimizer = manifest["optimizer"] as! [String: Any]
            optimizer["beta2"] = 0.99
            manifest["optimizer"] = optimizer
        }
        let edited = try ddepc(train(betas))
        XCTAssertEqual(edited.status, 1, edited.all)
        XCTAssertTrue(edited.stderr.contains("the buffer layout or the optimizer's constants differ"), edited.stderr)

        let truncated = try tamperedArtifact("truncated.ddepc") { _ in }
        let library = URL(fileURLWithPath: truncated + "/module.so")
        try Data(try Data(contentsOf: library).prefix(5000)).write(to: library)
        let cut = try ddepc(train(truncated))
        XCTAssertEqual(cut.status, 1, cut.all)
        XCTAssertTrue(cut.stderr.contains("\(library.path) does not match the manifest's module hash"), cut.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("tamper-run/checkpoints")))

        let keyless = try tamperedArtifact("keyless.ddepc") { $0["backend"] = nil }
        let missing = try ddepc(["inspect", keyless])
        XCTAssertEqual(missing.status, 1, missing.all)
        XCTAssertTrue(missing.stderr.contains("manifest.json is damaged (it lacks \"backend\")"), missing.stderr)
        XCTAssertFalse(missing.stderr.contains("DecodingError"), missing.stderr)
    }

    /// A hand-written .ddir is checked as written, and its errors name the
    /// file's own lines: wrong declared types, duplicate ids, bytes that are
    /// not UTF-8, a file without functions.
    func testHandWrittenIRErrorsNameTheirOwnLine() throws {
        let header = "func @infer(%0: f32[1,3,8,8] input \"x\") {\n  %1 = relu(%0) : f32[1,3,8,8] loc(\"ModelZoo/UNet.swift\":62)\n"
        let cases: [(String, String, String)] = [
            ("typed.ddir", header + "  %2 = exp(%1) : f32[1,3,4,8]\n  return %2 as \"logits\"\n}\n",
             "typed.ddir:3: error: in @infer: exp(f32[1,3,8,8]) produces f32[1,3,8,8] but the node is typed f32[1,3,4,8]"),
            ("twice.ddir", header + "  %1 = exp(%0) : f32[1,3,8,8]\n  return %1 as \"logits\"\n}\n",
             "twice.ddir:3: error: in @infer: value %1 is defined twice"),
            ("empty.ddir", "// nothing here\n", "empty.ddir holds no functions"),
            ("silent.ddir", header + "}\n", "silent.ddir: @infer returns and updates nothing"),
        ]
        for (name, text, expected) in cases {
            try write(text, to: name)
            let result = try ddepc(["compile", path(name), "-o", path(name + ".ddepc")])
            XCTAssertEqual(result.status, 1, "\(name): \(result.all)")
            XCTAssertTrue(result.stderr.contains(expected), "\(name): \(result.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: path(name + ".ddepc")))
        }
        var bytes = Data((header + "  ").utf8)
        bytes.append(0xFF)
        bytes.append(Data(" return %1 as \"logits\"\n}\n".utf8))
        try bytes.write(to: URL(fileURLWithPath: path("binary.ddir")))
        let binary = try ddepc(["compile", path("binary.ddir"), "-o", path("binary.ddepc")])
        XCTAssertEqual(binary.status, 1, binary.all)
        XCTAssertTrue(binary.stderr.contains("\(path("binary.ddir")):3:3: invalid UTF-8 byte 0xff"), binary.stderr)
    }

    /// A model file that never hands its model over, or a folder named like
    /// a model file, is explained instead of a missing temporary file.
    func testModelFileWithoutMainOrAFolderIsExplained() throws {
        try write("import ModelZoo\nlet unet = UNet.small\n", to: "no-main.swift")
        let silent = try ddepc(["compile", path("no-main.swift"), "-o", path("no-main.ddepc")])
        XCTAssertEqual(silent.status, 1, silent.all)
        XCTAssertTrue(silent.stderr.contains("\(path("no-main.swift")) ran but did not call ModelFile.main(model)"), silent.stderr)
        XCTAssertFalse(silent.stderr.contains("NSCocoaErrorDomain"), silent.stderr)

        try FileManager.default.createDirectory(atPath: path("folder.swift"), withIntermediateDirectories: true)
        let folder = try ddepc(["compile", path("folder.swift"), "-o", path("folder.ddepc")])
        XCTAssertEqual(folder.status, 1, folder.all)
        XCTAssertTrue(folder.stderr.contains("\(path("folder.swift")) is a folder, not a model file"), folder.stderr)
    }

    /// Temporary files of writes a kill interrupted are removed when the run
    /// continues; a killed compile's staging folder is removed, and the
    /// artifact it had moved aside put back, by the next compile.
    func testLeftoversOfInterruptedWritesAreRemoved() throws {
        let train = ["train", Self.artifact, "--images", Self.images, "--steps", "2", "--checkpoint-every", "1"]
        XCTAssertEqual(try ddepc(train + ["--out", path("leftovers")]).status, 0)
        let uuid = UUID().uuidString
        let leftovers = ["leftovers/checkpoints/.step-00000003.safetensors.tmp-\(uuid)", "leftovers/.metrics.jsonl.tmp-\(uuid)"]
        for name in leftovers { try write("partial", to: name) }
        try write("mine", to: "leftovers/checkpoints/.notes.tmp-mine")
        let resumed = try ddepc(train + ["--steps", "3", "--out", path("leftovers"), "--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.all)
        for name in leftovers { XCTAssertFalse(FileManager.default.fileExists(atPath: path(name)), name) }
        XCTAssertEqual(try read("leftovers/checkpoints/.notes.tmp-mine"), "mine", "a name ddepc does not make is kept")

        let staging = ".staged.ddepc.tmp-\(uuid)"
        try write("partial", to: staging + "/module.c")
        let compiled = try ddepc(["compile", "unet-small", "-o", path("staged.ddepc"), "--batch", "1", "--size", "32"])
        XCTAssertEqual(compiled.status, 0, compiled.all)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path(staging)))

        // Killed between moving the old artifact aside and moving the new one
        // in: the next compile puts the old one back, even if it fails itself.
        let aside = path(".staged.ddepc.old-\(UUID().uuidString)")
        try FileManager.default.moveItem(atPath: path("staged.ddepc"), toPath: aside)
        try write("func @broken(", to: "broken.ddir")
        let failed = try ddepc(["compile", path("broken.ddir"), "-o", path("staged.ddepc")])
        XCTAssertEqual(failed.status, 1, failed.all)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("staged.ddepc/manifest.json")), "the old artifact is back")
        XCTAssertFalse(FileManager.default.fileExists(atPath: aside))
    }

    /// A dangling link named like an image is an unreadable file, reported
    /// by name (or skipped with --on-bad-file skip), not silently left out.
    func testDanglingImageLinkIsReportedByName() throws {
        let folder = path("linked-photos")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.repository.path + "/" + Self.images + "/apple.png", toPath: folder + "/apple.png")
        try FileManager.default.createSymbolicLink(atPath: folder + "/gone.png", withDestinationPath: path("no-such-file.png"))
        let train = ["train", Self.artifact, "--images", folder, "--steps", "2"]
        let failed = try ddepc(train + ["--out", path("linked-fail")])
        XCTAssertEqual(failed.status, 1, failed.all)
        XCTAssertTrue(failed.stderr.contains(folder + "/gone.png: no such file"), failed.stderr)
        let skipped = try ddepc(train + ["--out", path("linked-skip"), "--on-bad-file", "skip"])
        XCTAssertEqual(skipped.status, 0, skipped.all)
        XCTAssertTrue(skipped.stderr.contains("warning: skipping " + folder + "/gone.png"), skipped.stderr)
    }

    /// A metrics log that cannot grow (a file size limit, a full disk) is
    /// named with the reason, not reported as a bare Foundation error.
    func testMetricsWriteFailureNamesTheFile() throws {
        let run = path("limited")
        XCTAssertEqual(try ddepc(["train", Self.artifact, "--images", Self.images, "--steps", "1", "--out", run]).status, 0)
        // 2 KiB: the log holds a dozen lines; SIGXFSZ ignored, so write() fails with EFBIG.
        let command = "trap '' XFSZ; ulimit -f 2; exec \"$0\" \"$@\""
        let limited = try DdepcCommand.run(["-c", command, DdepcCommand.binary.path, "train", Self.artifact, "--images", Self.images,
                                            "--steps", "200", "--out", run, "--resume"],
                                           in: Self.repository, executable: URL(fileURLWithPath: "/bin/sh"))
        XCTAssertEqual(limited.status, 1, limited.all)
        XCTAssertTrue(limited.stderr.contains("\(run)/metrics.jsonl: could not append step "), limited.stderr)
        XCTAssertTrue(limited.stderr.contains("File too large"), limited.stderr)
        XCTAssertFalse(limited.stderr.contains("NSCocoaErrorDomain"), limited.stderr)
    }
}
