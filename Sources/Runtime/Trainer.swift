import ABI
import Foundation
import IR

public enum TrainMode: String, CaseIterable, Sendable, Codable {
    /// Decoder denoising pretraining: encoder frozen.
    case ddep
    /// Denoising pretraining of the whole model.
    case dep
    /// Supervised fine-tuning with cross-entropy.
    case finetune
    /// Supervised encoder pretraining: image classification with a pooled
    /// linear head (Fashion-MNIST or one folder per class).
    case classify

    /// The compiled entry point that runs one step of this mode.
    public var entry: String {
        switch self {
        case .ddep: return "pretrain_step"
        case .dep: return "pretrain_dep_step"
        case .finetune: return "finetune_step"
        case .classify: return "classify_step"
        }
    }

    /// Whether the mode trains by denoising unlabeled images.
    public var isDenoising: Bool { self == .ddep || self == .dep }
}

public enum NoiseKind: String, CaseIterable, Sendable, Codable {
    /// x̃ = √γ·x + √(1−γ)·ε
    case scaled
    /// x̃ = x + σ·ε
    case simple
}

/// How γ (scaled noise) is chosen.
public enum GammaSchedule: String, CaseIterable, Sendable, Codable {
    /// One γ for every image (from --gamma or --sigma).
    case fixed
    /// γ ~ U[0, 1] per image (the paper's ablation); needs per-image noise scales in the step.
    case uniform
}

public enum LRSchedule: String, CaseIterable, Sendable, Codable { case constant, cosine }

/// The compiled update is Adam with decoupled weight decay; plain Adam adds
/// the decay to the gradient instead (L2), which the step must support.
public enum OptimizerKind: String, CaseIterable, Sendable, Codable { case adamw, adam }

public struct TrainOptions {
    public var mode: TrainMode = .ddep
    /// Unlabeled images for denoising pretraining (PNG/JPEG, recursive).
    public var images: URL?
    /// A labeled data set for fine-tuning.
    public var data: URL?
    /// Its layout (nil: detected).
    public var layout: DatasetLayout?
    public var split = "train"
    /// Train on this fraction of the labeled set (chosen from the seed).
    public var labelFraction: LabelFraction?
    public var steps = 30
    /// Train for this many passes over the data instead of `steps`.
    public var epochs: Double?
    public var seed: UInt64 = 1
    public var runDirectory = URL(fileURLWithPath: "run")
    public var optimizer: OptimizerKind = .adamw
    public var learningRate = 1e-3
    public var warmupSteps = 0
    public var schedule: LRSchedule = .cosine
    /// The learning rate cosine decay ends at.
    public var minLearningRate = 0.0
    public var weightDecay = 0.0
    /// Scale gradients down to this global L2 norm (needs a step compiled with clipping).
    public var clipGradNorm: Double?
    /// Must equal the artifact's compiled batch when given.
    public var batchSize: Int?
    public var noise: NoiseKind = .scaled
    public var sigma = 0.22
    /// Overrides σ for scaled noise when given.
    public var gamma: Double?
    public var gammaSchedule: GammaSchedule = .fixed
    public var target: DenoiseTargetKind = .eps
    /// Augmentation: resize the short side first, random scale range, flips.
    public var resizeShortSide: Int?
    public var scaleRange: ClosedRange<Double>?
    public var flip = true
    public var onBadFile: BadFilePolicy = .fail
    /// Threads that decode and augment the examples of a batch.
    public var loaderThreads = 2
    /// Batches prepared ahead of the step.
    public var prefetchDepth = 4
    /// Initial weights (a checkpoint or imported weights) instead of the seed.
    public var initFrom: URL?
    /// Continue the run in `runDirectory` from its last checkpoint.
    public var resume = false
    public var checkpointEvery = 0
    /// Checkpoints kept (the newest).
    public var keepCheckpoints = 3
    /// Plain progress lines every this many steps (and the first and last).
    public var logEvery = 10
    /// Draw a progress bar (on a terminal) instead of plain lines.
    public var interactive = false
    /// The processes of a data-parallel run; rank 0 alone writes the run directory.
    public var processes = Processes.single
    /// Messages (resuming, initialization, warnings).
    public var log: (String) -> Void = { FileHandle.standardOutput.write(Data(($0 + "\n").utf8)) }
    /// Progress output (lines or the bar, with their own line ends).
    public var progressOutput: (String) -> Void = { text in
        FileHandle.standardOutput.write(Data(text.utf8))
    }
    public init() {}

    /// The γ of scaled noise: `--gamma`, else 1/(1+σ²).
    public var fixedGamma: Double { gamma ?? 1 / (1 + sigma * sigma) }

    /// The scalars that make x̃ = a·x + b·ε.
    public var noiseCoefficients: (a: Double, b: Double) {
        switch noise {
        case .simple: return (1, sigma)
        case .scaled: return (fixedGamma.squareRoot(), (1 - fixedGamma).squareRoot())
        }
    }

    /// Linear warm-up over `warmupSteps`, then constant or cosine decay to `minLearningRate` at `steps`.
    public func learningRate(at step: Int) -> Double {
        if step < warmupSteps { return learningRate * Double(step + 1) / Double(warmupSteps) }
        switch schedule {
        case .constant: return learningRate
        case .cosine:
            let progress = min(1, Double(step - warmupSteps) / Double(max(steps - warmupSteps, 1)))
            return minLearningRate + (learningRate - minLearningRate) * 0.5 * (1 + cos(.pi * progress))
        }
    }
}

/// Everything that determines a run's numbers, as written to
/// `RUN/config.json` and into every checkpoint's metadata. A resumed run
/// must have the same configuration (except the number of steps).
public struct RunConfig: Codable, Equatable, Sendable {
    public var ddepcVersion = ABI.ddepcVersion
    public var artifact: String
    public var irHash: String
    public var mode: TrainMode
    /// The global batch: processes × the artifact's batch.
    public var batch: Int
    /// Processes of a data-parallel run (nil: one). A run may resume with
    /// another count (and an artifact compiled for another batch) when the
    /// global batch stays the same.
    public var processes: Int?
    public var size: Int
    public var classes: Int
    public var seed: UInt64
    public var steps: Int
    public var epochs: Double?
    public var images: String?
    public var data: String?
    public var layout: DatasetLayout?
    public var split: String?
    public var labelFraction: String?
    public var examples: Int
    public var optimizer: OptimizerKind
    public var lr: Double
    public var warmup: Int
    public var schedule: LRSchedule
    public var minLR: Double
    public var weightDecay: Double
    public var clipGradNorm: Double?
    public var noise: NoiseKind?
    public var sigma: Double?
    public var gamma: Double?
    public var gammaSchedule: GammaSchedule?
    public var target: DenoiseTargetKind?
    public var augmentation: Augmentation
    public var onBadFile: BadFilePolicy
    public var initFrom: String?

    /// JSON with sorted keys (pretty for config.json, compact for metadata).
    public func json(pretty: Bool) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        return try encoder.encode(self)
    }

    /// The settings that differ from `other`, ignoring the step count.
    func differences(from other: RunConfig) throws -> [String] {
        let resplit = (processes ?? 1) != (other.processes ?? 1)
        func flat(_ config: RunConfig) throws -> [String: String] {
            var copy = config
            copy.steps = 0
            copy.epochs = nil
            copy.processes = nil
            // The same global batch split over another number of processes
            // takes an artifact compiled for that share of it.
            if resplit { (copy.artifact, copy.irHash) = ("", "") }
            let object = try JSONSerialization.jsonObject(with: try copy.json(pretty: false)) as? [String: Any] ?? [:]
            // Canonical JSON per setting (a nested object's description would depend on hashing order).
            return try object.mapValues { value in
                String(decoding: try JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .fragmentsAllowed]), as: UTF8.self)
            }
        }
        let a = try flat(self), b = try flat(other)
        return Set(a.keys).union(b.keys).sorted().compactMap { key in
            a[key] == b[key] ? nil : "\(key): \(b[key] ?? "unset") → \(a[key] ?? "unset")"
        }
    }
}

public struct TrainSummary {
    public var losses: [Double]
    public var checkpoint: URL
    public var secondsPerStep: Double
    /// Steps whose batch was not ready when the previous step ended.
    public var dataWaits: Int
    /// Files skipped with `--on-bad-file skip`.
    public var skippedFiles: [String]
}

/// Runs training steps of a compiled artifact and keeps the run directory:
/// `config.json`, `metrics.jsonl` (one line per step), `label_subset.txt`
/// (fine-tuning), `checkpoints/step-N.safetensors` (the last K) and
/// `last.safetensors` (a link to the newest).
///
/// Every random draw is keyed by the seed and the step (data order, crops,
/// flips, scales, noise, γ), so a run resumed from any checkpoint computes
/// exactly what the uninterrupted run computes: the seed and the step are
/// the whole random state.
public final class Trainer {
    public let artifact: Artifact
    public private(set) var options: TrainOptions
    let module: LoadedModule
    let store: ParameterStore
    let entry: BufferLayout.Entry
    let checkpoints: CheckpointDirectory

    public init(artifact: Artifact, options: TrainOptions) throws {
        self.artifact = artifact
        self.options = options
        module = try artifact.load()
        store = ParameterStore(layout: artifact.manifest.layout)
        checkpoints = CheckpointDirectory(run: options.runDirectory)
        guard let entry = artifact.manifest.layout.entry(options.mode.entry) else {
            throw RuntimeError("the artifact has no \(options.mode.entry) entry point for --mode \(options.mode.rawValue); recompile it with this ddepc")
        }
        self.entry = entry
        if options.processes.count > 1 && artifact.manifest.dataParallel != true {
            throw RuntimeError("\(artifact.directory.path) was compiled for one process: its steps do not exchange gradients, so the \(options.processes.count) processes would train \(options.processes.count) different models. Recompile it with `ddepc compile ... --data-parallel`")
        }
        try MemoryBudget.require(entry, of: artifact)
        try checkSupported()
    }

    var metricsURL: URL { options.runDirectory.appendingPathComponent("metrics.jsonl") }
    var configURL: URL { options.runDirectory.appendingPathComponent("config.json") }
    var subsetURL: URL { options.runDirectory.appendingPathComponent("label_subset.txt") }

    func input(_ name: String) -> BufferLayout.Slot? { entry.inputs.first { $0.name == name } }

    /// Refuses options the compiled step cannot carry out, saying what would.
    func checkSupported() throws {
        let manifest = artifact.manifest
        let step = entry.name
        // The trainer fills every input the step signature names.
        if let unknown = entry.inputs.first(where: { !StepSignature.inputs.contains($0.name) }) {
            throw RuntimeError("\(step) takes an input \"\(unknown.name)\" that `ddepc train --mode \(options.mode.rawValue)` does not provide; is the artifact from another ddepc version?")
        }
        guard entry.outputs.contains(where: { $0.name == StepSignature.loss }) else {
            throw RuntimeError("\(step) has no loss output; recompile the artifact with this ddepc")
        }
        guard manifest.optimizer != nil || input(StepSignature.biasCorrection1) == nil else {
            throw RuntimeError("\(step) updates its weights with Adam, but the manifest does not say with which constants; recompile the artifact with this ddepc")
        }
        if let batchSize = options.batchSize, batchSize != manifest.batch {
            let each = options.processes.count > 1 ? " (the batch of each of the \(options.processes.count) processes; the global batch is \(options.processes.count) × that)" : ""
            throw RuntimeError("--batch-size \(batchSize): the artifact's steps are compiled for batch \(manifest.batch)\(each); recompile it with `ddepc compile ... --batch \(batchSize)` (or drop --batch-size)")
        }
        if options.optimizer == .adam && options.weightDecay != 0 && input(StepSignature.l2) == nil {
            throw RuntimeError("--optimizer adam with --weight-decay adds the decay to the gradient (L2), but \(step) only has decoupled (AdamW) weight decay; use --optimizer adamw, or --weight-decay 0")
        }
        if options.clipGradNorm != nil && input(StepSignature.clipNorm) == nil {
            throw RuntimeError("--clip-grad-norm needs a step compiled with gradient-norm clipping (an input clip_norm); \(step) of this artifact has none, so gradients cannot be clipped. Recompile the artifact with `ddepc compile --gradient-clipping` (its steps then hold every gradient until the update), or drop --clip-grad-norm")
        }
        if options.mode.isDenoising {
            guard input(StepSignature.targetNoise) != nil, input(StepSignature.targetImage) != nil else {
                throw RuntimeError("\(step) of this artifact cannot choose its denoising target (no target_noise/target_image inputs); recompile it with this ddepc")
            }
            if options.gammaSchedule == .uniform {
                guard options.noise == .scaled else {
                    throw RuntimeError("--gamma-schedule uniform draws γ of scaled noise; use it with --noise scaled")
                }
                guard let a = input(StepSignature.noiseA), a.shape.reduce(1, *) == manifest.batch, manifest.batch > 1 || a.shape == [1] else {
                    throw RuntimeError("--gamma-schedule uniform needs one γ per image, but \(step) of this artifact takes one noise scale for the whole batch (noise_a/noise_b are f32[]); use --gamma-schedule fixed until the compiler provides per-image noise scales")
                }
            }
        }
    }

    public func run() throws -> TrainSummary {
        let fm = FileManager.default
        let manifest = artifact.manifest
        let batch = manifest.batch, size = manifest.size
        let processes = options.processes
        let leader = processes.isLeader
        let globalBatch = batch * processes.count
        if !options.resume && leader { try requireFreshRunDirectory() }

        // The data.
        let source: any ExampleSource
        var dataset: LabeledDataset?
        switch options.mode {
        case .ddep, .dep:
            guard let imagesURL = options.images else { throw RuntimeError("--mode \(options.mode.rawValue) needs --images DIR") }
            source = try ImageCollection(directory: imagesURL)
        case .finetune:
            guard let dataURL = options.data else {
                throw RuntimeError("--mode finetune needs a labeled data set: --data DIR (generic images/ + masks/, Cityscapes, ADE20K or Pascal Context)")
            }
            var labeled = try LabeledDataset(root: dataURL, layout: options.layout, split: options.split, classes: manifest.classes,
                                             onBadFile: options.onBadFile)
            for message in labeled.skipped { FileHandle.standardError.write(Data("warning: skipping \(message)\n".utf8)) }
            if labeled.classes != manifest.classes {
                throw RuntimeError("\(dataURL.path) has \(labeled.classes) classes but the artifact's segmentation head has \(manifest.classes); recompile it with `ddepc compile ... --classes \(labeled.classes)`")
            }
            let total = labeled.count
            if let fraction = options.labelFraction { labeled = labeled.subset(fraction, seed: options.seed) }
            options.log("fine-tuning on \(labeled.count) of \(total) labeled images (\(labeled.layout.rawValue), split \(labeled.split), \(labeled.classes) classes)")
            dataset = labeled
            source = labeled
        case .classify:
            guard let dataURL = options.data else {
                throw RuntimeError("--mode classify needs --data DIR: the Fashion-MNIST idx files or one folder of images per class")
            }
            let classified = try ClassifiedImages(directory: dataURL)
            let headClasses = manifest.layout.param("head.cls.weight")?.shape.first
            guard headClasses == classified.classNames.count else {
                throw RuntimeError("\(dataURL.path) has \(classified.classNames.count) classes but the artifact's classification head has \(headClasses.map(String.init) ?? "none"); recompile it with `ddepc compile ... --image-classes \(classified.classNames.count)`")
            }
            options.log("classifying \(classified.count) images of \(classified.classNames.count) classes from \(dataURL.path)")
            source = classified
        }
        let augmentation = Augmentation(cropSize: size, resizeShortSide: options.resizeShortSide, scaleRange: options.scaleRange,
                                        flip: options.flip)
        let maker = BatchMaker(source: source, batchSize: batch, augmentation: augmentation, seed: options.seed,
                               withLabels: options.mode == .finetune || options.mode == .classify, onBadFile: options.onBadFile,
                               threads: options.loaderThreads, processes: processes, warn: { message in
                                   FileHandle.standardError.write(Data((message + "\n").utf8))
                               })
        if let epochs = options.epochs { options.steps = maker.steps(forEpochs: epochs) }
        var config = runConfig(examples: source.count, augmentation: augmentation)

        // The starting point: rank 0's, sent to the others (only rank 0 reads
        // the run directory and --init, so they need not share a file system).
        if leader {
            do {
                try fm.createDirectory(at: options.runDirectory, withIntermediateDirectories: true)
            } catch {
                throw FileProblem.error(error, path: options.runDirectory.path, action: "create the run folder")
            }
            checkpoints.removeLeftoverTemporaryFiles()
        }
        var step = 0
        store.initialize(seed: options.seed)
        if !leader {
            // Rank 0 reads and writes the run directory; the others wait for its starting point below.
        } else if options.resume {
            step = try resume(config: &config, dataset: dataset)
        } else {
            if let initURL = options.initFrom { try initialize(from: initURL) } else if options.mode == .ddep {
                options.log("note: no --init: the frozen encoder keeps its random initialization (DDeP starts from a pretrained encoder)")
            }
            if let dataset {
                try writeAtomically(Data(dataset.samples.map { $0.name + "\n" }.joined().utf8), to: subsetURL)
            }
            try? fm.removeItem(at: metricsURL)
            try writeAtomically(try config.json(pretty: true), to: configURL)
        }
        let configText = String(decoding: try config.json(pretty: false), as: UTF8.self)
        if processes.count > 1 {
            step = try processes.broadcast(step)
            try processes.broadcast(store.params.pointer, bytes: store.params.byteCount)
            try processes.broadcast(store.state.pointer, bytes: store.state.byteCount)
        }

        let totalSteps = options.steps
        guard step < totalSteps else {
            options.log("the run already reached step \(step) of \(totalSteps); nothing to do")
            return TrainSummary(losses: [], checkpoint: checkpoints.lastLink, secondsPerStep: 0, dataWaits: 0, skippedFiles: [])
        }
        let io = AlignedBuffer(byteCount: entry.ioBytes)
        let arena = AlignedBuffer(byteCount: entry.arenaBytes)
        let metrics = leader ? try openMetrics() : nil
        defer { try? metrics?.close() }
        let progress = ProgressReporter(totalSteps: totalSteps, batch: globalBatch, interactive: options.interactive,
                                        every: options.logEvery, write: options.progressOutput)
        let prefetcher = Prefetcher(steps: step..<totalSteps, depth: options.prefetchDepth) { try maker.batch(step: $0) }
        defer { prefetcher.cancel() }

        var losses: [Double] = []
        // Fine-tuning on masks without a labeled pixel gives loss 0 and learns nothing.
        var labelsChecked = options.mode != .finetune
        var lastCheckpoint: (url: URL, step: Int)? = leader ? checkpoints.checkpoints().last.map { ($0.url, $0.step) } : nil
        setStopMessage(lastCheckpoint, resumedAt: step)
        let start = Date()
        let firstStep = step
        while step < totalSteps {
            let stepStart = Date()
            let inputs = try prefetcher.next()
            precondition(inputs.step == step, "the loader delivered step \(inputs.step) for step \(step)")
            let waited = Date().timeIntervalSince(stepStart)
            for (name, values) in inputs.floats { try setFloats(name, values, io) }
            if !labelsChecked, let labels = inputs.ints[StepSignature.labels] {
                if !labels.contains(where: { $0 != Int32(LabelMap.ignoreLabel) }), let dataset { try requireLabeledPixels(dataset) }
                labelsChecked = true
            }
            for (name, values) in inputs.ints {
                // classify_step takes one label per image, carried here as a constant mask.
                let perImage = options.mode == .classify && name == StepSignature.labels
                try setInts(name, perImage ? ClassifiedImages.imageLabels(fromPixels: values, batch: batch) : values, io)
            }
            let lr = options.learningRate(at: step)
            try setStepScalars(step: step, lr: lr, io: io)
            let communicationBefore = processes.communicationSeconds
            try module.call(entry.name, params: store.params.pointer, state: store.state.pointer, io: io.pointer, arena: arena.pointer)
            let loss = Double(try output(StepSignature.loss, io))
            let gradNorm = entry.outputs.contains { $0.name == StepSignature.gradNorm } ? Double(try output(StepSignature.gradNorm, io)) : nil
            step += 1
            // A non-finite gradient poisons the weights even while the loss
            // stays finite (ReLU maps NaN to 0), so both stop the run.
            let diverged = !loss.isFinite ? "the loss became \(loss)"
                : gradNorm.map { !$0.isFinite } == true ? "the gradient norm became \(gradNorm!) (the loss was \(String(format: "%.6g", loss)))" : nil
            if let diverged {
                progress.interrupt()
                let last = lastCheckpoint.map { "the last good checkpoint is \($0.url.path) (step \($0.step))" }
                    ?? "no checkpoint was written yet (use --checkpoint-every N to keep some)"
                throw RuntimeError("\(diverged) at step \(step); stopping (\(last)). Try a lower --lr, a longer --warmup or --clip-grad-norm.")
            }
            losses.append(loss)
            let seconds = Date().timeIntervalSince(stepStart)
            var line = String(format: "{\"step\":%d,\"epoch\":%.4f,\"loss\":%.9g,\"lr\":%.6g,\"images_per_s\":%.3f,\"seconds\":%.4f,\"data_wait_s\":%.4f",
                              step, Double(step * globalBatch) / Double(source.count), loss, lr, Double(globalBatch) / seconds, seconds, waited)
            if let gradNorm { line += String(format: ",\"grad_norm\":%.6g", gradNorm) }
            if processes.count > 1 {
                line += String(format: ",\"processes\":%d,\"comm_s\":%.5f", processes.count, processes.communicationSeconds - communicationBefore)
            }
            if let metrics {
                do {
                    try metrics.write(contentsOf: Data((line + "}\n").utf8))
                } catch {
                    progress.interrupt()
                    throw FileProblem.error(error, path: metricsURL.path, action: "append step \(step) to the metrics log")
                }
                progress.update(step: step, loss: loss, lr: lr, seconds: seconds, first: step == firstStep + 1)
            }
            if (options.checkpointEvery > 0 && step % options.checkpointEvery == 0) || step == totalSteps {
                try requireIdenticalWeights(step: step)
                if leader {
                    lastCheckpoint = (try saveCheckpoint(step: step, config: configText), step)
                }
                setStopMessage(lastCheckpoint, resumedAt: step)
            }
        }
        let waits = max(0, prefetcher.waits - 1)  // the first batch is always awaited
        let skipped = maker.skippedFiles
        if !skipped.isEmpty { options.log("skipped \(skipped.count) unreadable file(s) (--on-bad-file skip)") }
        return TrainSummary(losses: losses, checkpoint: lastCheckpoint?.url ?? checkpoints.lastLink,
                            secondsPerStep: Date().timeIntervalSince(start) / Double(max(losses.count, 1)),
                            dataWaits: waits, skippedFiles: skipped)
    }

    func runConfig(examples: Int, augmentation: Augmentation) -> RunConfig {
        let manifest = artifact.manifest
        let denoising = options.mode.isDenoising
        return RunConfig(artifact: artifact.directory.standardizedFileURL.path, irHash: manifest.irHash, mode: options.mode,
                         batch: manifest.batch * options.processes.count, processes: options.processes.count > 1 ? options.processes.count : nil,
                         size: manifest.size, classes: manifest.classes, seed: options.seed,
                         steps: options.steps, epochs: options.epochs,
                         images: denoising ? options.images?.standardizedFileURL.path : nil,
                         data: denoising ? nil : options.data?.standardizedFileURL.path,
                         layout: denoising ? nil : options.layout, split: denoising ? nil : options.split,
                         labelFraction: denoising ? nil : options.labelFraction?.text, examples: examples,
                         optimizer: options.optimizer, lr: options.learningRate, warmup: options.warmupSteps,
                         schedule: options.schedule, minLR: options.minLearningRate, weightDecay: options.weightDecay,
                         clipGradNorm: options.clipGradNorm,
                         noise: denoising ? options.noise : nil, sigma: denoising && options.gamma == nil ? options.sigma : nil,
                         gamma: denoising ? options.fixedGamma : nil, gammaSchedule: denoising ? options.gammaSchedule : nil,
                         target: denoising ? options.target : nil, augmentation: augmentation, onBadFile: options.onBadFile,
                         initFrom: options.initFrom?.standardizedFileURL.path)
    }

    /// Loads the newest valid checkpoint; returns its step. The run keeps
    /// its recorded initial weights (`--init` is not repeated on resume).
    func resume(config: inout RunConfig, dataset: LabeledDataset?) throws -> Int {
        let run = options.runDirectory.path
        var resplit = false
        if let saved = try? Data(contentsOf: configURL) {
            guard let previous = try? JSONDecoder().decode(RunConfig.self, from: saved) else {
                throw RuntimeError("\(configURL.path) is not a configuration this ddepc wrote; cannot resume \(run)")
            }
            config.initFrom = previous.initFrom
            resplit = (previous.processes ?? 1) != (config.processes ?? 1)
            if resplit && previous.batch != config.batch {
                let (before, now) = (previous.processes ?? 1, config.processes ?? 1)
                throw RuntimeError("--resume: \(run) was trained with a global batch of \(previous.batch) (\(before) process(es) × batch \(previous.batch / before)); \(now) process(es) × batch \(artifact.manifest.batch) make \(config.batch), so the run would not continue exactly. Keep the global batch: with \(now) process(es) use an artifact compiled with --batch \(previous.batch % now == 0 ? "\(previous.batch / now)" : "B where \(now) × B = \(previous.batch) (none: choose another process count)")")
            }
            let changed = try config.differences(from: previous)
            if !changed.isEmpty {
                throw RuntimeError("--resume: the options differ from the ones \(run) was started with, so the run would not continue exactly:\n  \(changed.joined(separator: "\n  "))\nPass the original options (see \(configURL.path)).")
            }
            if resplit {
                options.log("note: the run was trained by \(previous.processes ?? 1) process(es) and continues on \(config.processes ?? 1), with the same global batch of \(config.batch) (\(artifact.directory.path))")
            }
            if previous.steps != config.steps {
                options.log("note: the run was started for \(previous.steps) steps and now runs to \(config.steps)")
                try writeAtomically(try config.json(pretty: true), to: configURL)
            }
        }
        guard let (url, file) = checkpoints.latestValid(skipped: { url, error in
            self.options.log("warning: \(url.path) is damaged (\(error)); trying an older checkpoint")
        }) else {
            throw RuntimeError("--resume: \(run) has no checkpoint to resume from; start the run without --resume")
        }
        guard let step = file.metadata["step"].flatMap(Int.init) else {
            throw RuntimeError("\(url.path) has no step in its metadata; it is not a ddepc training checkpoint")
        }
        // The step indexes the data order; a damaged value must not reach it.
        let named = checkpoints.checkpoints().first { $0.url == url }?.step
        guard step >= 0, named == nil || named == step else {
            throw RuntimeError("\(url.path) is damaged: its metadata says step \(step)\(named.map { " but its name says step \($0)" } ?? ", which is negative"). Move it out of \(checkpoints.directory.path) to resume from the checkpoint before it.")
        }
        if let hash = file.metadata["ir_hash"], hash != artifact.manifest.irHash, !resplit {
            throw RuntimeError("\(url.path) was written by an artifact with IR hash \(hash), not \(artifact.directory.path) (\(artifact.manifest.irHash)); resume with the artifact the run started with")
        }
        try store.load(file, from: url.path)
        if let dataset {
            let recorded = (try? String(contentsOf: subsetURL, encoding: .utf8))?.split(separator: "\n").map(String.init)
            if let recorded, recorded != dataset.samples.map(\.name) {
                throw RuntimeError("\(subsetURL.path) does not match the labeled images chosen now; the data set changed since the run started, so it cannot continue exactly")
            }
        }
        try truncateMetrics(after: step)
        options.log("resuming \(run) at step \(step) from \(url.path)")
        return step
    }

    /// Initial weights from a checkpoint or imported weights, by name: never
    /// the optimizer moments (training starts with a fresh optimizer), and the
    /// segmentation head only when continuing a fine-tuning checkpoint (a
    /// pretraining checkpoint's head is replaced by a fresh n-class head).
    func initialize(from given: URL) throws {
        let url = try resolveCheckpoint(given.path)
        let file = try SafetensorsFileReader(contentsOf: url)
        let keepHead = options.mode == .finetune && file.metadata["mode"] == TrainMode.finetune.rawValue
        func skipped(_ name: String) -> Bool {
            name.hasPrefix(StepSignature.optimizerStatePrefix) || (!keepHead && name.hasPrefix("head.seg."))
        }
        let report = try store.load(file, from: url.path, including: { !skipped($0) }, allowMissing: { _ in true })
        let byScope = Dictionary(grouping: report.loaded) { name in
            name.hasPrefix("head.") ? name.split(separator: ".").prefix(2).joined(separator: ".") : String(name.prefix { $0 != "." })
        }
        let loaded = byScope.keys.sorted().map { "\($0) \(byScope[$0]!.count)" }.joined(separator: ", ")
        let fresh = Set(report.missing.filter { !$0.hasPrefix(StepSignature.optimizerStatePrefix) }.map { name in
            name.hasPrefix("head.") ? name.split(separator: ".").prefix(2).joined(separator: ".") : String(name.prefix { $0 != "." })
        }).sorted()
        options.log("initialized \(report.loaded.count) tensors from \(url.path) (\(loaded.isEmpty ? "none" : loaded))"
            + (fresh.isEmpty ? "" : "; from the seed: \(fresh.joined(separator: ", "))"))
        if report.loaded.isEmpty {
            throw RuntimeError("\(url.path) has no tensor this model uses (by name and shape); is it a checkpoint of this model?")
        }
        if options.mode == .ddep && byScope["enc"] == nil {
            options.log("warning: \(url.path) has no encoder weights (enc.*); the frozen encoder keeps its random initialization")
        }
        if options.mode == .finetune && byScope["dec"] == nil {
            options.log("warning: \(url.path) has no decoder weights (dec.*); fine-tuning starts with a random decoder")
        }
    }

    /// Throws unless some mask of `dataset` has a labeled pixel (a value other
    /// than 255). Called when a batch had none: crops can miss the labels, so
    /// the masks themselves decide; the first labeled one ends the search.
    func requireLabeledPixels(_ dataset: LabeledDataset) throws {
        for index in 0..<dataset.count {
            guard let mask = try? dataset.load(at: index).mask else { continue }
            if mask.labels.contains(where: { $0 != LabelMap.ignoreLabel }) { return }
        }
        let root = options.data?.path ?? "the labeled set"
        throw RuntimeError("no labeled pixels in the training set: every mask value of the \(dataset.count) images of \(root) (split \(dataset.split)) is 255 (unlabeled), so fine-tuning would learn nothing. Check the masks, or the data set --layout and its class mapping.")
    }

    /// The noise seed of a step: depends only on the run seed and the step, so
    /// a resumed run draws the same noise. Kept below 2^52 (exact in the IR's
    /// f64 interpreter) for one process and rank 0; the other ranks' seeds
    /// are any 64-bit value, which only compiled steps see.
    ///
    /// The noise of a step covers the global batch: a data-parallel process
    /// draws its own images' part of that stream (rank r of N starts r·B
    /// images in), so N processes draw exactly the noise one process with
    /// batch N·B draws, and no two processes draw the same.
    func noiseSeed(step: Int) -> UInt64 {
        var rng = SplitMix64(seed: options.seed &* 0x9E37_79B9 &+ UInt64(step))
        let seed = rng.next() & ((1 << 52) - 1)
        let imageElements = (input(StepSignature.image)?.shape.dropFirst().reduce(1, *)) ?? 0
        let offset = options.processes.rank * artifact.manifest.batch * imageElements
        return RandomOps.seed(seed, advancedBy: UInt64(offset))
    }

    /// The per-step scalars: noise (denoising), optimizer, clipping.
    func setStepScalars(step: Int, lr: Double, io: AlignedBuffer) throws {
        if options.mode.isDenoising {
            try setScalar(StepSignature.seed, Int64(bitPattern: noiseSeed(step: step)), io)
            var a = [Float](), b = [Float]()
            let perImage = input(StepSignature.noiseA).map { $0.shape.reduce(1, *) } ?? 1
            for i in 0..<perImage {
                switch options.gammaSchedule {
                case .fixed:
                    let (ca, cb) = options.noiseCoefficients
                    a.append(Float(ca))
                    b.append(Float(cb))
                case .uniform:
                    let image = options.processes.rank * perImage + i  // in the global batch
                    var rng = SplitMix64(seed: options.seed, keys: RandomStream.gamma.rawValue, UInt64(step), UInt64(image))
                    let gamma = Double(rng.next() >> 11) * 0x1p-53
                    a.append(Float(gamma.squareRoot()))
                    b.append(Float((1 - gamma).squareRoot()))
                }
            }
            if input(StepSignature.noiseA) != nil { try setFloats(StepSignature.noiseA, a, io) }
            if input(StepSignature.noiseB) != nil { try setFloats(StepSignature.noiseB, b, io) }
            // The head predicts target_noise·ε + target_image·x.
            try setScalar(StepSignature.targetNoise, Float(options.target == .eps ? 1 : 0), io)
            try setScalar(StepSignature.targetImage, Float(options.target == .x ? 1 : 0), io)
        }
        try setScalar(StepSignature.learningRate, Float(lr), io)
        if let adam = artifact.manifest.optimizer {
            let (bc1, bc2) = adam.biasCorrections(step: step + 1)
            try setScalar(StepSignature.biasCorrection1, Float(bc1), io)
            try setScalar(StepSignature.biasCorrection2, Float(bc2), io)
        }
        let decoupled = options.optimizer == .adamw
        try setScalar(StepSignature.weightDecay, Float(decoupled ? options.weightDecay : 0), io)
        try setScalar(StepSignature.l2, Float(decoupled ? 0 : options.weightDecay), io)
        try setScalar(StepSignature.clipNorm, Float(options.clipGradNorm ?? 0), io)
    }

    func slot(_ name: String) throws -> BufferLayout.Slot {
        guard let slot = entry.inputs.first(where: { $0.name == name }) ?? entry.outputs.first(where: { $0.name == name }) else {
            throw RuntimeError("entry point \(entry.name) has no input or output named \(name)")
        }
        return slot
    }

    func setFloats(_ name: String, _ values: [Float], _ io: AlignedBuffer) throws {
        let s = try slot(name)
        guard s.dtype == DType.f32.rawValue, values.count == s.shape.reduce(1, *) else {
            throw RuntimeError("\(entry.name) input \(name) is \(s.dtype)\(s.shape); the trainer made \(values.count) f32 values (a ddepc bug)")
        }
        let target = io.floats(at: s.offset, count: values.count)
        values.withUnsafeBufferPointer { target.baseAddress!.update(from: $0.baseAddress!, count: values.count) }
    }

    func setInts(_ name: String, _ values: [Int32], _ io: AlignedBuffer) throws {
        let s = try slot(name)
        guard s.dtype == DType.i32.rawValue, values.count == s.shape.reduce(1, *) else {
            throw RuntimeError("\(entry.name) input \(name) is \(s.dtype)\(s.shape); the trainer made \(values.count) i32 values (a ddepc bug)")
        }
        let target = (io.pointer + s.offset).assumingMemoryBound(to: Int32.self)
        values.withUnsafeBufferPointer { target.update(from: $0.baseAddress!, count: values.count) }
    }

    func setScalar<T>(_ name: String, _ value: T, _ io: AlignedBuffer) throws {
        guard let s = entry.inputs.first(where: { $0.name == name }) else { return }  // not every step uses every scalar
        (io.pointer + s.offset).storeBytes(of: value, as: T.self)
    }

    func output(_ name: String, _ io: AlignedBuffer) throws -> Float {
        io.floats(at: try slot(name).offset, count: 1)[0]
    }

    /// Every process must hold the same weights (the same start, the same
    /// averaged gradients): checked at each checkpoint by a checksum of the
    /// parameters and state, compared across the processes.
    func requireIdenticalWeights(step: Int) throws {
        let processes = options.processes
        guard processes.count > 1 else { return }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for buffer in [store.params, store.state] {
            let words = buffer.pointer.bindMemory(to: UInt64.self, capacity: buffer.byteCount / 8)
            for i in 0..<(buffer.byteCount / 8) { hash = (hash ^ words[i]) &* 0x100_0000_01b3 }
        }
        guard try processes.allEqual(hash) else {
            throw RuntimeError("the processes' weights differ at step \(step) (checksum \(String(hash, radix: 16)) here): their gradient exchange did not keep them identical, so no checkpoint was written. Report this with the mpirun command line")
        }
    }

    /// What ranks 0 and 1 say when mpirun stops them because another
    /// process of the job died (mpirun's own message names that rank): the
    /// last checkpoint. Rank 1 speaks for a rank 0 that died; it knows the
    /// checkpoint rank 0 was to write after the last check of the weights.
    func setStopMessage(_ last: (url: URL, step: Int)?, resumedAt step: Int) {
        let processes = options.processes
        guard processes.rank <= 1 else { return }
        let resume = "continue with the same command and --resume (any number of processes with the same global batch)"
        let where_: String
        if processes.isLeader {
            where_ = last.map { "the last checkpoint is \($0.url.path) (step \($0.step)); \(resume)" }
                ?? "no checkpoint was written yet (--checkpoint-every N keeps some)"
        } else if step > 0 {
            where_ = "the last checkpoint is \(checkpoints.url(step: step).path) (step \(step)) unless rank 0 stopped while writing it; \(resume), which takes the newest complete one"
        } else {
            where_ = "no checkpoint was written yet (--checkpoint-every N keeps some)"
        }
        processes.setStopMessage("ddepc (\(processes.prefix.dropLast(2))): stopped because mpirun ended the job (a process of it failed; mpirun's message names the rank); \(where_)")
    }

    /// Parameters, optimizer state, step, the random state (seed + step:
    /// every draw is keyed by them) and the configuration.
    func saveCheckpoint(step: Int, config: String) throws -> URL {
        let metadata = ["step": "\(step)", "seed": "\(options.seed)", "rng": "splitmix64 keyed by (seed, stream, step); seed \(options.seed), step \(step)",
                        "mode": options.mode.rawValue, "ir_hash": artifact.manifest.irHash, "ddepc_version": ddepcVersion,
                        "artifact": artifact.directory.standardizedFileURL.path, "config": config]
        return try store.withExport(metadata: metadata) { try checkpoints.write($0, step: step, keep: options.keepCheckpoints) }
    }

    func openMetrics() throws -> FileHandle {
        if !FileManager.default.fileExists(atPath: metricsURL.path) {
            _ = FileManager.default.createFile(atPath: metricsURL.path, contents: nil)
        }
        do {
            let handle = try FileHandle(forWritingTo: metricsURL)
            try handle.seekToEnd()
            return handle
        } catch {
            throw FileProblem.error(error, path: metricsURL.path, action: "open the metrics log")
        }
    }

    /// The files a run writes at its top level (checkpoints/ holds its own).
    static let runFiles: Set<String> = ["config.json", "metrics.jsonl", "label_subset.txt", "checkpoints", "last.safetensors",
                                        "eval.json", "loss.svg"]

    /// A new run writes only into a new or empty --out, or over a run of ours
    /// that never reached a checkpoint (starting over replaces only its own
    /// config and log). The user's files, and a run's checkpoints (even
    /// damaged ones, which --resume can skip), are never overwritten.
    func requireFreshRunDirectory() throws {
        let run = options.runDirectory
        let fm = FileManager.default
        let hasLink = (try? fm.destinationOfSymbolicLink(atPath: checkpoints.lastLink.path)) != nil
            || fm.fileExists(atPath: checkpoints.lastLink.path)
        if !checkpoints.checkpoints().isEmpty || hasLink {
            throw RuntimeError("\(run.path) already holds a run's checkpoints; continue it with --resume, or choose another --out (nothing was overwritten)")
        }
        try OutputFolder.requireNewOrEmpty(run, advice: "choose a new --out for the run, or continue a run there with --resume") { directory in
            let contents = (try? fm.contentsOfDirectory(atPath: directory.path)) ?? []
            guard contents.allSatisfy({ Self.runFiles.contains($0) || CheckpointDirectory.isTemporaryName($0) }),
                  let saved = try? Data(contentsOf: configURL) else { return false }
            return (try? JSONDecoder().decode(RunConfig.self, from: saved)) != nil
        }
    }

    /// On resume, drop metric lines logged after the checkpoint's step (and a
    /// line cut short by a kill).
    func truncateMetrics(after step: Int) throws {
        guard let text = try? String(contentsOf: metricsURL, encoding: .utf8) else { return }
        let kept = text.split(separator: "\n").filter { line in
            guard line.hasSuffix("}"), let range = line.range(of: "\"step\":"),
                  let end = line[range.upperBound...].firstIndex(of: ",") else { return false }
            return Int(line[range.upperBound..<end]).map { $0 <= step } ?? false
        }
        try writeAtomically(Data((kept.map { $0 + "\n" }.joined()).utf8), to: metricsURL)
    }
}
