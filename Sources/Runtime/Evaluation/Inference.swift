import ABI
import Foundation
import IR

/// An inference entry point of an artifact with a checkpoint's weights:
/// `infer`, where `logits(x)` maps a batch [B,3,S,S] to logits
/// [B,classes,S,S], or `denoise`, where `output(x, "prediction")` gives the
/// denoising head's [B,3,S,S].
public final class InferenceSession {
    public let artifact: Artifact
    public let checkpoint: URL
    /// Remarks worth showing the user (a different artifact, a pretraining checkpoint).
    public private(set) var notes: [String] = []
    let module: LoadedModule
    let store: ParameterStore
    let entry: BufferLayout.Entry
    let io: AlignedBuffer
    let arena: AlignedBuffer

    public var batch: Int { artifact.manifest.batch }
    public var size: Int { artifact.manifest.size }
    public var classes: Int { artifact.manifest.classes }
    /// The checkpoint's metadata (`mode`, `step`, `config`, ...).
    public let metadata: [String: String]

    /// Loads `checkpoint` into `artifact`, or into the artifact the
    /// checkpoint's metadata names when `artifact` is nil. Weights are
    /// matched by name and shape, so an artifact compiled from the same
    /// model with other entry points or batch also works (with a note).
    public init(checkpoint: URL, artifact artifactURL: URL?, entry entryName: String = "infer") throws {
        let file = try SafetensorsFileReader(contentsOf: checkpoint)
        metadata = file.metadata
        let recorded = file.metadata["artifact"].flatMap { $0.isEmpty ? nil : URL(fileURLWithPath: $0) }
        guard let directory = artifactURL ?? recorded else {
            throw RuntimeError("\(checkpoint.path) does not name the artifact it was trained with; pass --artifact NAME.ddepc")
        }
        if artifactURL == nil && !FileManager.default.fileExists(atPath: directory.path) {
            throw RuntimeError("\(checkpoint.path) was trained with \(directory.path), which does not exist any more; pass --artifact NAME.ddepc (the same model, compiled again)")
        }
        artifact = try Artifact(directory: directory)
        self.checkpoint = checkpoint
        guard let entry = artifact.manifest.layout.entry(entryName) else {
            throw RuntimeError("\(directory.path) has no \(entryName) entry point; compile the model again with it (`ddepc compile` builds every entry point unless told otherwise), and pass the new artifact with --artifact")
        }
        self.entry = entry
        try MemoryBudget.require(entry, of: artifact)
        module = try artifact.load()
        store = ParameterStore(layout: artifact.manifest.layout)
        store.initialize(seed: 0)
        if let hash = file.metadata["ir_hash"], hash != artifact.manifest.irHash {
            notes.append("\(checkpoint.lastPathComponent) was trained with another artifact (IR hash \(hash)); its weights are matched to \(directory.lastPathComponent) by name and shape")
        }
        if entryName == "infer", let mode = file.metadata["mode"], mode != TrainMode.finetune.rawValue {
            notes.append("\(checkpoint.lastPathComponent) is a \(mode) pretraining checkpoint: its segmentation head was never trained")
        }
        try store.load(file, from: checkpoint.path, allowMissing: { $0.hasPrefix(StepSignature.optimizerStatePrefix) })
        try module.prepareWeights(for: entry.name, params: store.params.pointer, state: store.state.pointer) // the weights stay as loaded
        io = AlignedBuffer(byteCount: entry.ioBytes)
        arena = AlignedBuffer(byteCount: entry.arenaBytes)
    }

    /// Logits [B,classes,S,S] of images [B,3,S,S] (values in [-1, 1]).
    public func logits(_ x: [Float]) throws -> [Float] { try output(x, StepSignature.logits) }

    /// The entry point's output `name` for images [B,3,S,S] (values in [-1, 1]).
    public func output(_ x: [Float], _ name: String) throws -> [Float] {
        guard let input = entry.inputs.first(where: { $0.name == StepSignature.image }), let output = entry.outputs.first(where: { $0.name == name }) else {
            throw RuntimeError("the \(entry.name) entry point has no x input or \(name) output; recompile the artifact")
        }
        precondition(x.count == input.shape.reduce(1, *), "\(entry.name): \(x.count) values for \(input.shape)")
        let target = io.floats(at: input.offset, count: x.count)
        x.withUnsafeBufferPointer { target.baseAddress!.update(from: $0.baseAddress!, count: x.count) }
        try module.call(entry.name, params: store.params.pointer, state: store.state.pointer, io: io.pointer, arena: arena.pointer)
        return Array(io.floats(at: output.offset, count: output.shape.reduce(1, *)))
    }
}

/// Test-time settings: how an image of any size becomes S×S inputs.
public struct InferenceOptions: Equatable, Sendable {
    /// Also run the mirrored image and average.
    public var flip = false
    /// Scale factors (of the image after `resizeShortSide`); results averaged.
    public var scales: [Double] = [1]
    /// Resize the image so its short side has this many pixels first (nil: as it is).
    public var resizeShortSide: Int?
    /// Tile stride (nil: the tile size, i.e. tiles that only overlap at the last row and column).
    public var stride: Int?

    public init(flip: Bool = false, scales: [Double] = [1], resizeShortSide: Int? = nil, stride: Int? = nil) {
        self.flip = flip
        self.scales = scales
        self.resizeShortSide = resizeShortSide
        self.stride = stride
    }
}

/// Segments images of any size with a model that runs at one fixed size S
/// and batch B, on the host:
///
/// 1. For each scale s: resize the image bilinearly so it is `s` times its
///    (optionally `resizeShortSide`-resized) size.
/// 2. Cover it with S×S tiles (stride `stride`, the last tile of a row or
///    column aligned with the edge; an image smaller than S is padded with
///    0, mid grey); run the tiles B at a time and average the logits where
///    tiles overlap. A 1024×2048 Cityscapes image at S = 1024 is two halves.
/// 3. With `flip`, do the same for the mirrored image and mirror its logits back.
/// 4. Resize each pass's logits bilinearly to the original size, softmax,
///    and average the probabilities over passes (scales × flips); the
///    prediction is the most probable class.
public final class SegmentationPredictor {
    public let batch: Int
    public let size: Int
    public let classes: Int
    public let options: InferenceOptions
    let run: ([Float]) throws -> [Float]

    /// `run` maps [batch,3,size,size] inputs to [batch,classes,size,size] logits.
    public init(batch: Int, size: Int, classes: Int, options: InferenceOptions, run: @escaping ([Float]) throws -> [Float]) {
        self.batch = batch
        self.size = size
        self.classes = classes
        self.options = options
        self.run = run
    }

    public convenience init(session: InferenceSession, options: InferenceOptions) {
        self.init(batch: session.batch, size: session.size, classes: session.classes, options: options, run: session.logits)
    }

    /// Class probabilities [classes, H, W] at the image's own size.
    public func probabilities(_ image: Image) throws -> [Float] {
        let w = image.width, h = image.height, plane = w * h
        var total = [Float](repeating: 0, count: classes * plane)
        var passes = 0
        let base = options.resizeShortSide.map { Double($0) / Double(min(w, h)) } ?? 1
        for scale in options.scales {
            try requireMemory(width: Double(w) * base * scale, height: Double(h) * base * scale, image: image)
            let sw = max(1, Int((Double(w) * base * scale).rounded())), sh = max(1, Int((Double(h) * base * scale).rounded()))
            let planes = image.normalizedPlanes(width: sw, height: sh)
            var variants = [planes]
            if options.flip { variants.append(Self.mirrored(planes, channels: 3, width: sw, height: sh)) }
            let logits = try slide(variants, width: sw, height: sh)
            for (v, var result) in logits.enumerated() {
                if v == 1 { result = Self.mirrored(result, channels: classes, width: sw, height: sh) }
                let resized = resizeBilinear(result, channels: classes, width: sw, height: sh, newWidth: w, newHeight: h)
                Self.addSoftmax(resized, classes: classes, plane: plane, into: &total)
                passes += 1
            }
        }
        let inverse = 1 / Float(passes)
        for i in total.indices { total[i] *= inverse }
        return total
    }

    /// One pass at a scaled size holds the input planes and the logits of
    /// every variant (flips) plus the resized probabilities (4-byte floats).
    func requireMemory(width: Double, height: Double, image: Image) throws {
        let variants = Double(options.flip ? 2 : 1)
        let scaled = width.rounded() * height.rounded() * Double(3 + classes) * variants
        let original = Double(image.width) * Double(image.height) * Double(2 * classes)
        try MemoryBudget.require((scaled + original) * 4,
                                 for: "running a \(image.width)×\(image.height) image at \(Int(min(width, 1e15).rounded()))×\(Int(min(height, 1e15).rounded()))",
                                 advice: "use a smaller --resize or --scales")
    }

    /// How many calls of the compiled step an image of `width`×`height`
    /// takes (tiles of every scale and flip, `batch` per call).
    public func calls(width: Int, height: Int) -> Int {
        let base = options.resizeShortSide.map { Double($0) / Double(min(width, height)) } ?? 1
        let step = options.stride ?? size
        return options.scales.reduce(0) { total, scale in
            let sw = max(1, Int(min(Double(width) * base * scale, 1e9).rounded()))
            let sh = max(1, Int(min(Double(height) * base * scale, 1e9).rounded()))
            let tiles = Self.tileStarts(length: sw, tile: size, stride: step).count * Self.tileStarts(length: sh, tile: size, stride: step).count
            return total + (tiles * (options.flip ? 2 : 1) + batch - 1) / batch
        }
    }

    /// The most probable class of every pixel.
    public func predict(_ image: Image) throws -> LabelMap {
        let probabilities = try probabilities(image)
        return Self.argmax(probabilities, classes: classes, width: image.width, height: image.height)
    }

    public static func argmax(_ scores: [Float], classes: Int, width: Int, height: Int) -> LabelMap {
        let plane = width * height
        var labels = [UInt8](repeating: 0, count: plane)
        for p in 0..<plane {
            var best = 0
            var bestValue = scores[p]
            for c in 1..<max(classes, 1) where scores[c * plane + p] > bestValue {
                best = c
                bestValue = scores[c * plane + p]
            }
            labels[p] = UInt8(best)
        }
        return LabelMap(width: width, height: height, labels: labels)
    }

    /// Tile origins along a side of `length` for tiles of `tile` with `stride`.
    public static func tileStarts(length: Int, tile: Int, stride: Int) -> [Int] {
        guard length > tile else { return [0] }
        var starts = Array(Swift.stride(from: 0, to: length - tile, by: max(1, stride)))
        starts.append(length - tile)
        return starts
    }

    /// Averaged tile logits [classes, h, w] for each variant [3, h, w].
    func slide(_ variants: [[Float]], width w: Int, height h: Int) throws -> [[Float]] {
        let s = size, step = options.stride ?? size
        let xs = Self.tileStarts(length: w, tile: s, stride: step), ys = Self.tileStarts(length: h, tile: s, stride: step)
        var jobs: [(variant: Int, x: Int, y: Int)] = []
        for v in variants.indices { for y in ys { for x in xs { jobs.append((v, x, y)) } } }
        var sums = variants.map { _ in [Float](repeating: 0, count: classes * w * h) }
        var coverage = [Float](repeating: 0, count: w * h)
        for y in ys { for x in xs {
            for ty in y..<min(y + s, h) { for tx in x..<min(x + s, w) { coverage[ty * w + tx] += 1 } }
        } }
        let tile = s * s
        for start in Swift.stride(from: 0, to: jobs.count, by: batch) {
            let chunk = jobs[start..<min(start + batch, jobs.count)]
            var input = [Float](repeating: 0, count: batch * 3 * tile)
            for (n, job) in chunk.enumerated() {
                let src = variants[job.variant]
                let rows = min(s, h - job.y), columns = min(s, w - job.x)
                for c in 0..<3 { for r in 0..<rows {
                    let from = c * w * h + (job.y + r) * w + job.x, to = (n * 3 + c) * tile + r * s
                    for k in 0..<columns { input[to + k] = src[from + k] }
                } }
            }
            let output = try run(input)
            precondition(output.count == batch * classes * tile, "infer returned \(output.count) values for batch \(batch), \(classes) classes, size \(s)")
            for (n, job) in chunk.enumerated() {
                let rows = min(s, h - job.y), columns = min(s, w - job.x)
                sums[job.variant].withUnsafeMutableBufferPointer { sum in
                    for c in 0..<classes { for r in 0..<rows {
                        let from = (n * classes + c) * tile + r * s, to = c * w * h + (job.y + r) * w + job.x
                        for k in 0..<columns { sum[to + k] += output[from + k] }
                    } }
                }
            }
        }
        for v in sums.indices {
            sums[v].withUnsafeMutableBufferPointer { sum in
                for c in 0..<classes { for p in 0..<(w * h) { sum[c * w * h + p] /= coverage[p] } }
            }
        }
        return sums
    }

    /// Planes mirrored left-right.
    static func mirrored(_ planes: [Float], channels: Int, width: Int, height: Int) -> [Float] {
        var out = planes
        for c in 0..<channels { for y in 0..<height {
            let row = (c * height + y) * width
            for x in 0..<width { out[row + x] = planes[row + width - 1 - x] }
        } }
        return out
    }

    /// Adds softmax over classes of `logits` [classes, plane] to `total`.
    static func addSoftmax(_ logits: [Float], classes: Int, plane: Int, into total: inout [Float]) {
        var row = [Float](repeating: 0, count: classes)
        for p in 0..<plane {
            var top = -Float.infinity
            for c in 0..<classes { row[c] = logits[c * plane + p]; top = max(top, row[c]) }
            var sum: Float = 0
            for c in 0..<classes { row[c] = expf(row[c] - top); sum += row[c] }
            for c in 0..<classes { total[c * plane + p] += row[c] / sum }
        }
    }
}

/// Evaluates a predictor on a labeled set: one confusion matrix over all
/// images, each predicted at its own size; the next image is decoded in the
/// background while the current one runs.
public func evaluate(_ predictor: SegmentationPredictor, on dataset: LabeledDataset,
                     progress: (Int, Int) -> Void = { _, _ in }) throws -> ConfusionMatrix {
    var matrix = ConfusionMatrix(classes: dataset.classes)
    let loader = Prefetcher(steps: 0..<dataset.count, depth: 2) { try dataset.load(at: $0) }
    defer { loader.cancel() }
    for i in 0..<dataset.count {
        let (image, mask) = try loader.next()
        guard let mask else { continue }
        let prediction = try predictor.predict(image)
        matrix.add(groundTruth: mask.labels, prediction: prediction.labels)
        progress(i + 1, dataset.count)
    }
    return matrix
}
