import Codegen
import Foundation
import IR

public enum TrainMode: String, CaseIterable, Sendable {
    /// Decoder denoising pretraining: encoder frozen.
    case ddep
    /// Denoising pretraining of the whole model.
    case dep
    /// Supervised fine-tuning with cross-entropy.
    case finetune

    /// The compiled entry point that runs one step of this mode.
    public var entry: String {
        switch self {
        case .ddep: return "pretrain_step"
        case .dep: return "pretrain_dep_step"
        case .finetune: return "finetune_step"
        }
    }
}

public enum NoiseKind: String, CaseIterable, Sendable {
    /// x̃ = √γ·x + √(1−γ)·ε
    case scaled
    /// x̃ = x + σ·ε
    case simple
}

public enum LRSchedule: String, CaseIterable, Sendable { case constant, cosine }

public struct TrainOptions {
    public var mode: TrainMode = .ddep
    public var images: URL?
    public var steps = 30
    public var seed: UInt64 = 1
    public var runDirectory = URL(fileURLWithPath: "run")
    public var learningRate = 1e-3
    public var warmupSteps = 0
    public var schedule: LRSchedule = .cosine
    public var weightDecay = 0.0
    public var noise: NoiseKind = .scaled
    public var sigma = 0.22
    /// Overrides σ for scaled noise when given.
    public var gamma: Double?
    /// Initial weights (a checkpoint or imported weights) instead of the seed.
    public var initFrom: URL?
    /// Continue the run in `runDirectory` from its last checkpoint.
    public var resume = false
    public var checkpointEvery = 0
    public var log: (String) -> Void = { print($0) }
    public init() {}

    /// The scalars that make x̃ = a·x + b·ε.
    public var noiseCoefficients: (a: Double, b: Double) {
        switch noise {
        case .simple: return (1, sigma)
        case .scaled:
            let g = gamma ?? 1 / (1 + sigma * sigma)
            return (g.squareRoot(), (1 - g).squareRoot())
        }
    }

    public func learningRate(at step: Int) -> Double {
        if step < warmupSteps { return learningRate * Double(step + 1) / Double(warmupSteps) }
        switch schedule {
        case .constant: return learningRate
        case .cosine:
            let progress = Double(step - warmupSteps) / Double(max(steps - warmupSteps, 1))
            return learningRate * 0.5 * (1 + cos(.pi * progress))
        }
    }
}

public struct TrainSummary {
    public var losses: [Double]
    public var checkpoint: URL
    public var secondsPerStep: Double
}

/// Runs training steps of a compiled artifact and keeps the run directory:
/// `config.json`, `metrics.jsonl`, `last.safetensors`.
public final class Trainer {
    public let artifact: Artifact
    public let options: TrainOptions
    let module: LoadedModule
    let store: ParameterStore
    let entry: BufferLayout.Entry

    public init(artifact: Artifact, options: TrainOptions) throws {
        self.artifact = artifact
        self.options = options
        module = try artifact.load()
        store = ParameterStore(layout: artifact.manifest.layout)
        guard let entry = artifact.manifest.layout.entry(options.mode.entry) else {
            throw RuntimeError("the artifact has no \(options.mode.entry) entry point for --mode \(options.mode.rawValue); recompile it with this ddepc")
        }
        self.entry = entry
    }

    var checkpointURL: URL { options.runDirectory.appendingPathComponent("last.safetensors") }
    var metricsURL: URL { options.runDirectory.appendingPathComponent("metrics.jsonl") }

    public func run() throws -> TrainSummary {
        let fm = FileManager.default
        guard options.mode != .finetune else {
            throw RuntimeError("--mode finetune needs a labeled data set, which `ddepc train` does not read yet; use --mode ddep or dep")
        }
        guard let imagesURL = options.images else { throw RuntimeError("--mode \(options.mode.rawValue) needs --images DIR") }
        let images = try ImageFolder(directory: imagesURL)
        try fm.createDirectory(at: options.runDirectory, withIntermediateDirectories: true)

        var step = 0
        var dataRNG = SplitMix64(seed: options.seed)
        store.initialize(seed: options.seed)
        if options.resume {
            guard fm.fileExists(atPath: checkpointURL.path) else {
                throw RuntimeError("--resume: \(checkpointURL.path) does not exist; start the run without --resume")
            }
            let file = try SafetensorsFile(contentsOf: checkpointURL)
            try store.load(file, from: checkpointURL.path)
            guard let saved = file.metadata["step"].flatMap(Int.init), let rngState = file.metadata["data_rng"].flatMap({ UInt64($0) }) else {
                throw RuntimeError("\(checkpointURL.path) has no step/data_rng metadata; it is not a ddepc training checkpoint")
            }
            step = saved
            dataRNG.state = rngState
            try truncateMetrics(after: step)
            options.log("resuming \(options.runDirectory.path) at step \(step)")
        } else {
            if let initURL = options.initFrom {
                let report = try store.load(try SafetensorsFile(contentsOf: initURL), from: initURL.path, allowMissing: { _ in true })
                options.log("initialized \(report.loaded.count) tensors from \(initURL.path) (\(report.missing.count) from the seed)")
            }
            try? fm.removeItem(at: metricsURL)
            try writeConfig()
        }

        let io = AlignedBuffer(byteCount: entry.ioBytes)
        let arena = AlignedBuffer(byteCount: entry.arenaBytes)
        let manifest = artifact.manifest
        let batch = manifest.batch, size = manifest.size
        let (noiseA, noiseB) = options.noiseCoefficients
        var losses: [Double] = []
        let metrics = try openMetrics()
        defer { try? metrics.close() }
        let start = Date()
        var stepsRun = 0
        while step < options.steps {
            let stepStart = Date()
            let indices = (0..<batch).map { _ in Int(dataRNG.next() % UInt64(images.count)) }
            let x = try images.batch(indices: indices, size: size, rng: &dataRNG)
            try setInput("x", x, io)
            try setScalar("seed", Int64(bitPattern: noiseSeed(step: step)), io)
            // One fixed γ for every image of the batch; the target is the noise.
            try setInput("noise_a", [Float](repeating: Float(noiseA), count: batch), io)
            try setInput("noise_b", [Float](repeating: Float(noiseB), count: batch), io)
            try setScalar("target_noise", Float(1), io)
            try setScalar("target_image", Float(0), io)
            let lr = options.learningRate(at: step)
            let t = Double(step + 1)
            try setScalar("lr", Float(lr), io)
            try setScalar("bc1", Float(1 / (1 - pow(0.9, t))), io)
            try setScalar("bc2", Float(1 / (1 - pow(0.999, t))), io)
            try setScalar("weight_decay", Float(options.weightDecay), io)
            try module.call(entry.name, params: store.params.pointer, state: store.state.pointer, io: io.pointer, arena: arena.pointer)
            let loss = Double(try output("loss", io))
            step += 1
            stepsRun += 1
            guard loss.isFinite else {
                let last = fm.fileExists(atPath: checkpointURL.path) ? "the last good checkpoint is \(checkpointURL.path)" : "no checkpoint was written yet"
                throw RuntimeError("the loss became \(loss) at step \(step); stopping (\(last)). Try a lower --lr.")
            }
            losses.append(loss)
            let seconds = Date().timeIntervalSince(stepStart)
            let line = String(format: "{\"step\":%d,\"loss\":%.9g,\"lr\":%.6g,\"images_per_s\":%.3f,\"seconds\":%.4f}\n",
                              step, loss, lr, Double(batch) / seconds, seconds)
            try metrics.write(contentsOf: Data(line.utf8))
            options.log(String(format: "step %4d/%d  loss %.5f  lr %.2e  %.1f img/s", step, options.steps, loss, lr, Double(batch) / seconds))
            if options.checkpointEvery > 0, step % options.checkpointEvery == 0 {
                try saveCheckpoint(step: step, dataRNG: dataRNG)
            }
        }
        try saveCheckpoint(step: step, dataRNG: dataRNG)
        return TrainSummary(losses: losses, checkpoint: checkpointURL,
                            secondsPerStep: Date().timeIntervalSince(start) / Double(max(stepsRun, 1)))
    }

    /// The noise seed of a step: depends only on the run seed and the step, so
    /// a resumed run draws the same noise. Kept below 2^52 (exact in the IR's
    /// f64 interpreter).
    func noiseSeed(step: Int) -> UInt64 {
        var rng = SplitMix64(seed: options.seed &* 0x9E37_79B9 &+ UInt64(step))
        return rng.next() & ((1 << 52) - 1)
    }

    func slot(_ name: String) throws -> BufferLayout.Slot {
        guard let slot = entry.inputs.first(where: { $0.name == name }) ?? entry.outputs.first(where: { $0.name == name }) else {
            throw RuntimeError("entry point \(entry.name) has no input or output named \(name)")
        }
        return slot
    }

    func setInput(_ name: String, _ values: [Float], _ io: AlignedBuffer) throws {
        let s = try slot(name)
        precondition(values.count == s.shape.reduce(1, *), "input \(name): \(values.count) values for \(s.shape)")
        let target = io.floats(at: s.offset, count: values.count)
        for i in values.indices { target[i] = values[i] }
    }

    func setScalar<T>(_ name: String, _ value: T, _ io: AlignedBuffer) throws {
        guard let s = entry.inputs.first(where: { $0.name == name }) else { return }  // not every step uses every scalar
        (io.pointer + s.offset).storeBytes(of: value, as: T.self)
    }

    func output(_ name: String, _ io: AlignedBuffer) throws -> Float {
        io.floats(at: try slot(name).offset, count: 1)[0]
    }

    func saveCheckpoint(step: Int, dataRNG: SplitMix64) throws {
        let metadata = ["step": "\(step)", "data_rng": "\(dataRNG.state)", "seed": "\(options.seed)",
                        "mode": options.mode.rawValue, "ir_hash": artifact.manifest.irHash, "ddepc_version": ddepcVersion]
        try store.export(metadata: metadata).write(to: checkpointURL)
    }

    func writeConfig() throws {
        let config: [String: String] = [
            "artifact": artifact.directory.path, "mode": options.mode.rawValue, "images": options.images?.path ?? "",
            "steps": "\(options.steps)", "seed": "\(options.seed)", "lr": "\(options.learningRate)",
            "schedule": options.schedule.rawValue, "warmup": "\(options.warmupSteps)", "weight_decay": "\(options.weightDecay)",
            "noise": options.noise.rawValue, "sigma": "\(options.sigma)", "gamma": options.gamma.map { "\($0)" } ?? "",
            "batch": "\(artifact.manifest.batch)", "size": "\(artifact.manifest.size)", "ir_hash": artifact.manifest.irHash,
        ]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeAtomically(try encoder.encode(config), to: options.runDirectory.appendingPathComponent("config.json"))
    }

    func openMetrics() throws -> FileHandle {
        if !FileManager.default.fileExists(atPath: metricsURL.path) {
            FileManager.default.createFile(atPath: metricsURL.path, contents: nil)
        }
        let handle = try FileHandle(forWritingTo: metricsURL)
        try handle.seekToEnd()
        return handle
    }

    /// On resume, drop metric lines logged after the checkpoint's step.
    func truncateMetrics(after step: Int) throws {
        guard let text = try? String(contentsOf: metricsURL, encoding: .utf8) else { return }
        let kept = text.split(separator: "\n").filter { line in
            guard let range = line.range(of: "\"step\":"), let end = line[range.upperBound...].firstIndex(of: ",") else { return false }
            return Int(line[range.upperBound..<end]).map { $0 <= step } ?? false
        }
        try writeAtomically(Data((kept.map { $0 + "\n" }.joined()).utf8), to: metricsURL)
    }
}
