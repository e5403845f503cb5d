import ArgumentParser
import Foundation
import Runtime

extension TrainMode: ExpressibleByArgument {}
extension DenoiseTargetKind: ExpressibleByArgument {}
extension NoiseKind: ExpressibleByArgument {}
extension LRSchedule: ExpressibleByArgument {}
extension OptimizerKind: ExpressibleByArgument {}
extension GammaSchedule: ExpressibleByArgument {}
extension DatasetLayout: ExpressibleByArgument {}
extension BadFilePolicy: ExpressibleByArgument {}

extension LabelFraction: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

/// Options that pick and read a labeled data set (train and eval).
struct LabeledDataOptions: ParsableArguments {
    @Option(help: "Data set layout (default: detected): generic (images/ + masks/), cityscapes, ade20k, pascal-context.")
    var layout: DatasetLayout?
    @Option(help: "Split (default: train for `train`, val for `eval`); ADE20K's training/validation are train/val; generic sets use DIR/SPLIT/ if it exists.")
    var split: String?
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a compiled artifact: denoising pretraining (ddep, dep) or fine-tuning (finetune).",
        discussion: """
        ddep pretrains the decoder by denoising with the encoder frozen (take the encoder from --init); dep \
        trains everything by denoising; finetune trains everything with cross-entropy (ignore label 255) on \
        a labeled set, starting from a pretraining checkpoint (--init): the decoder keeps its pretrained \
        weights and the segmentation head starts fresh.

        The run directory gets config.json, metrics.jsonl, checkpoints/step-N.safetensors (the last --keep) \
        and last.safetensors (a link to the newest); fine-tuning also writes label_subset.txt. --resume with \
        the same options continues a run exactly, even after kill -9.
        """)

    @Argument(help: "Artifact directory (NAME.ddepc).") var artifact: String
    @Option(help: "ddep (decoder only, encoder frozen), dep (whole model), finetune (segmentation) or classify (encoder, image labels).") var mode: TrainMode = .ddep

    // Data.
    @Option(help: "Unlabeled images for ddep/dep: a folder of PNG/JPEG files, searched recursively.") var images: String?
    @Option(help: "Labeled data set for finetune (generic, Cityscapes, ADE20K or Pascal Context layout).") var data: String?
    @OptionGroup var labeled: LabeledDataOptions
    @Option(name: .customLong("label-fraction"), help: "Fine-tune on this fraction of the labeled images (1/30, 5%, 0.25), chosen from --seed.")
    var labelFraction: LabelFraction?
    @Option(name: .customLong("on-bad-file"), help: "A corrupt or unreadable file: fail (stop and name it) or skip (warn once, use the next file).")
    var onBadFile: BadFilePolicy = .fail
    @Option(name: .customLong("loader-threads"), help: "Threads decoding and augmenting images in the background.") var loaderThreads = 2

    // Augmentation.
    @Option(help: "Resize images so their short side has this many pixels before cropping.") var resize: Int?
    @Option(name: .customLong("scale-range"), help: "Random scale factor range MIN,MAX applied before cropping (e.g. 0.5,2.0).")
    var scaleRange: String?
    @Flag(name: .customLong("no-flip"), help: "No random horizontal flips.") var noFlip = false

    // Length, seed, run directory.
    @Option(help: "Number of steps (default 30 unless --epochs is given).") var steps: Int?
    @Option(help: "Train for this many passes over the data instead of --steps.") var epochs: Double?
    @Option(help: "Seed for weights, data order, augmentation, label subset and noise.") var seed: UInt64 = 1
    @Option(help: "Run directory.") var out = "run"
    @Option(help: "Initialize from a checkpoint, a run directory (its newest checkpoint) or imported weights (safetensors, by name); the optimizer starts fresh.")
    var `init`: String?
    @Flag(help: "Continue the run in --out from its newest checkpoint (pass the options it was started with).") var resume = false
    @Option(name: .customLong("checkpoint-every"), help: "Also write a checkpoint every N steps (0: only at the end).")
    var checkpointEvery = 0
    @Option(help: "Keep the newest K checkpoints.") var keep = 3
    @Option(name: .customLong("log-every"), help: "Print a progress line every N steps when not on a terminal.") var logEvery = 10

    // Optimizer.
    @Option(help: "adamw (decoupled weight decay) or adam (weight decay added to the gradient).") var optimizer: OptimizerKind = .adamw
    @Option(help: "Peak learning rate.") var lr = 1e-3
    @Option(help: "Linear warm-up steps.") var warmup = 0
    @Option(help: "Learning-rate schedule after warm-up: constant or cosine.") var schedule: LRSchedule = .cosine
    @Option(name: .customLong("min-lr"), help: "Learning rate at the end of the cosine decay.") var minLR = 0.0
    @Option(name: .customLong("weight-decay"), help: "Weight decay.") var weightDecay = 0.0
    @Option(name: .customLong("clip-grad-norm"), help: "Clip the global gradient norm (over every trained weight) to this value.")
    var clipGradNorm: Double?
    @Option(name: .customLong("batch-size"), help: "Batch size; must equal the batch the artifact was compiled for (ddepc compile --batch).")
    var batchSize: Int?

    // Denoising.
    @Option(help: "Noise: scaled (√γ·x + √(1−γ)·ε) or simple (x + σ·ε).") var noise: NoiseKind = .scaled
    @Option(help: "Noise level σ (scaled noise uses γ = 1/(1+σ²)); default 0.22.") var sigma: Double?
    @Option(help: "γ for scaled noise, instead of --sigma.") var gamma: Double?
    @Option(name: .customLong("gamma-schedule"), help: "fixed γ, or uniform: γ ~ U[0,1] per image.") var gammaSchedule: GammaSchedule = .fixed
    @Option(help: "What the denoiser predicts: eps (the noise) or x (the clean image).")
    var target: DenoiseTargetKind = .eps

    func parsedScaleRange() throws -> ClosedRange<Double>? {
        guard let scaleRange else { return nil }
        let parts = scaleRange.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard parts.count == 2, let lo = parts[0], let hi = parts[1], lo > 0, lo <= hi, hi.isFinite else {
            throw ValidationError("--scale-range expects MIN,MAX with 0 < MIN ≤ MAX, e.g. 0.5,2.0 (got '\(scaleRange)')")
        }
        return lo...hi
    }

    func validate() throws {
        if steps != nil && epochs != nil { throw ValidationError("give --steps or --epochs, not both") }
        if let steps, steps <= 0 { throw ValidationError("--steps must be positive") }
        if let epochs, !(epochs > 0 && epochs.isFinite) { throw ValidationError("--epochs must be positive") }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be a positive number") }
        guard minLR >= 0, minLR <= lr else { throw ValidationError("--min-lr must be between 0 and --lr") }
        guard warmup >= 0 else { throw ValidationError("--warmup must not be negative") }
        guard weightDecay >= 0, weightDecay.isFinite else { throw ValidationError("--weight-decay must not be negative") }
        if let clipGradNorm, !(clipGradNorm > 0 && clipGradNorm.isFinite) { throw ValidationError("--clip-grad-norm must be positive") }
        if let batchSize, batchSize <= 0 { throw ValidationError("--batch-size must be positive") }
        if let sigma, !(sigma >= 0 && sigma.isFinite) { throw ValidationError("--sigma must be a finite, non-negative number") }
        if let gamma, !(0...1).contains(gamma) { throw ValidationError("--gamma must be in [0, 1]") }
        if sigma != nil && gamma != nil { throw ValidationError("give --sigma or --gamma, not both (γ = 1/(1+σ²))") }
        if gamma != nil && noise == .simple { throw ValidationError("--gamma sets scaled noise; --noise simple takes --sigma") }
        if gammaSchedule == .uniform && (sigma != nil || gamma != nil) {
            throw ValidationError("--gamma-schedule uniform draws γ for every image; drop --sigma/--gamma (or use --gamma-schedule fixed)")
        }
        guard keep >= 1 else { throw ValidationError("--keep must be at least 1") }
        guard checkpointEvery >= 0, logEvery >= 1, loaderThreads >= 1 else {
            throw ValidationError("--checkpoint-every must be ≥ 0, --log-every and --loader-threads ≥ 1")
        }
        if let resize, resize <= 0 { throw ValidationError("--resize must be positive") }
        _ = try parsedScaleRange()
        if resume && `init` != nil { throw ValidationError("--resume continues a run's own checkpoint; do not combine it with --init") }
        switch mode {
        case .ddep, .dep:
            if data != nil { throw ValidationError("--mode \(mode.rawValue) pretrains on unlabeled images: use --images DIR (not --data)") }
            if labelFraction != nil { throw ValidationError("--label-fraction applies to --mode finetune") }
        case .finetune:
            if images != nil { throw ValidationError("--mode finetune trains on a labeled set: use --data DIR (not --images)") }
            if data == nil { throw ValidationError("--mode finetune needs --data DIR (a labeled data set)") }
        case .classify:
            if images != nil { throw ValidationError("--mode classify trains on labeled images: use --data DIR (Fashion-MNIST idx files or one folder per class)") }
            if data == nil { throw ValidationError("--mode classify needs --data DIR (Fashion-MNIST idx files or one folder per class)") }
            if labelFraction != nil { throw ValidationError("--label-fraction applies to --mode finetune") }
        }
    }

    /// Noise settings that leave nothing to learn deserve a word.
    func noiseNote(_ options: TrainOptions) -> String? {
        let (a, b) = options.noiseCoefficients
        if b == 0 { return "note: the noise level is 0 (--sigma 0 or --gamma 1): the input is the clean image, so there is nothing to denoise" }
        if a == 0 { return "note: --gamma 0 is pure noise: the input holds nothing of the image" }
        return nil
    }

    func run() throws {
        // Under `mpirun -np N` every process runs this; rank 0 alone writes
        // the run directory and prints progress. An error in any process ends
        // the whole job (MPI_Abort) instead of leaving the others waiting.
        var processes = Processes.single
        try reportingErrors { processes = try Processes.start() }
        do {
            try train(processes)
        } catch {
            guard processes.count > 1 else { throw error }
            if !(error is ExitCode) {
                FileHandle.standardError.write(Data("error: \(processes.prefix)\(error)\n".utf8))
            }
            processes.abort(code: 1)
        }
        processes.finish()
    }

    func train(_ processes: Processes) throws {
        try reportingErrors(process: processes.prefix) {
            var options = TrainOptions()
            options.processes = processes
            if !processes.isLeader {
                options.log = { _ in }
                options.progressOutput = { _ in }
            }
            options.mode = mode
            options.images = images.map { URL(fileURLWithPath: $0) }
            options.data = data.map { URL(fileURLWithPath: $0) }
            options.layout = labeled.layout
            options.split = labeled.split ?? "train"
            options.labelFraction = labelFraction
            options.onBadFile = onBadFile
            options.loaderThreads = loaderThreads
            options.resizeShortSide = resize
            options.scaleRange = try parsedScaleRange()
            options.flip = !noFlip
            options.steps = steps ?? 30
            options.epochs = epochs
            options.seed = seed
            options.runDirectory = URL(fileURLWithPath: out)
            options.initFrom = `init`.map { URL(fileURLWithPath: $0) }
            options.resume = resume
            options.checkpointEvery = checkpointEvery
            options.keepCheckpoints = keep
            options.logEvery = logEvery
            // mpirun hands rank 0 a terminal even when its own output is a file: plain lines there.
            options.interactive = ProgressReporter.standardOutputIsTerminal && processes.count == 1
            options.optimizer = optimizer
            options.learningRate = lr
            options.warmupSteps = warmup
            options.schedule = schedule
            options.minLearningRate = minLR
            options.weightDecay = weightDecay
            options.clipGradNorm = clipGradNorm
            options.batchSize = batchSize
            options.noise = noise
            options.sigma = sigma ?? options.sigma
            options.gamma = gamma
            if mode.isDenoising, gammaSchedule == .fixed, let note = noiseNote(options) { FileHandle.standardError.write(Data((note + "\n").utf8)) }
            options.gammaSchedule = gammaSchedule
            options.target = target
            let trainer = try Trainer(artifact: try Artifact(directory: URL(fileURLWithPath: artifact)), options: options)
            if processes.count == 1, trainer.artifact.manifest.dataParallel == true {
                options.log("note: one process (no mpirun): the data-parallel steps train on batch \(trainer.artifact.manifest.batch) alone; `mpirun -np N ddepc train ...` trains on N × \(trainer.artifact.manifest.batch)")
            }
            let summary = try trainer.run()
            guard !summary.losses.isEmpty, processes.isLeader else { return }
            let first = summary.losses.first!, last = summary.losses.last!
            var text = String(format: "done: loss %.5f → %.5f, %.3f s/step; checkpoint %@", first, last, summary.secondsPerStep,
                              summary.checkpoint.path)
            if summary.dataWaits > 0 { text += "\n  the step waited for data \(summary.dataWaits) time(s); more --loader-threads may help" }
            print(text)
        }
    }
}
