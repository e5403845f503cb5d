import ArgumentParser
import Foundation
import Runtime

extension TrainMode: ExpressibleByArgument {}
extension NoiseKind: ExpressibleByArgument {}
extension LRSchedule: ExpressibleByArgument {}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run training steps of a compiled artifact (DDeP / DeP denoising pretraining).")

    @Argument(help: "Artifact directory (NAME.ddepc).") var artifact: String
    @Option(help: "ddep (decoder only, encoder frozen), dep (whole model) or finetune.") var mode: TrainMode = .ddep
    @Option(help: "Folder of PNG images (searched recursively).") var images: String?
    @Option(help: "Number of steps.") var steps = 30
    @Option(help: "Seed for weights, data order and noise.") var seed: UInt64 = 1
    @Option(help: "Run directory (config.json, metrics.jsonl, last.safetensors).") var out = "run"
    @Option(help: "Peak learning rate.") var lr = 1e-3
    @Option(help: "Linear warm-up steps.") var warmup = 0
    @Option(help: "Learning-rate schedule: constant or cosine.") var schedule: LRSchedule = .cosine
    @Option(name: .customLong("weight-decay"), help: "Decoupled (AdamW) weight decay.") var weightDecay = 0.0
    @Option(help: "Noise: scaled (√γ·x + √(1−γ)·ε) or simple (x + σ·ε).") var noise: NoiseKind = .scaled
    @Option(help: "Noise level σ (scaled noise uses γ = 1/(1+σ²)).") var sigma = 0.22
    @Option(help: "γ for scaled noise (overrides --sigma).") var gamma: Double?
    @Option(help: "Initialize from a safetensors checkpoint instead of the seed.") var `init`: String?
    @Flag(help: "Continue the run in --out from its last checkpoint.") var resume = false
    @Option(name: .customLong("checkpoint-every"), help: "Also write last.safetensors every N steps (0: only at the end).")
    var checkpointEvery = 0

    func validate() throws {
        guard steps > 0 else { throw ValidationError("--steps must be positive") }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be a positive number") }
        guard sigma >= 0 else { throw ValidationError("--sigma must be non-negative") }
        if let gamma, !(0...1).contains(gamma) { throw ValidationError("--gamma must be in [0, 1]") }
        if resume && `init` != nil { throw ValidationError("--resume continues a run's own checkpoint; do not combine it with --init") }
    }

    func run() throws {
        try reportingErrors {
            var options = TrainOptions()
            options.mode = mode
            options.images = images.map { URL(fileURLWithPath: $0) }
            options.steps = steps
            options.seed = seed
            options.runDirectory = URL(fileURLWithPath: out)
            options.learningRate = lr
            options.warmupSteps = warmup
            options.schedule = schedule
            options.weightDecay = weightDecay
            options.noise = noise
            options.sigma = sigma
            options.gamma = gamma
            options.initFrom = `init`.map { URL(fileURLWithPath: $0) }
            options.resume = resume
            options.checkpointEvery = checkpointEvery
            let trainer = try Trainer(artifact: try Artifact(directory: URL(fileURLWithPath: artifact)), options: options)
            let summary = try trainer.run()
            let first = summary.losses.first ?? .nan, last = summary.losses.last ?? .nan
            print(String(format: "done: loss %.5f → %.5f, %.3f s/step; checkpoint %@", first, last, summary.secondsPerStep,
                         summary.checkpoint.path))
        }
    }
}
