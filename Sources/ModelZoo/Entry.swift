import IR

/// A segmentation model: encoder (parameters under `enc`), decoder (`dec`)
/// and an output head (`head.denoise` with 3 channels for denoising
/// pretraining, `head.seg` with one channel per class for segmentation).
public protocol SegmentationModel {
    /// Image [N, 3, S, S] → feature maps.
    func encode(_ x: Tensor, scope: Scope) -> [Tensor]
    /// Feature maps → the decoder's full-resolution output [N, C, S, S].
    func decode(_ features: [Tensor], scope: Scope) -> Tensor
    /// Decoder output → `channels` maps. Default: 3×3 conv with bias,
    /// PyTorch's default init.
    func head(_ x: Tensor, channels: Int, scope: Scope) -> Tensor
    /// Pooled encoder features [N, C] → `classes` logits (classify_step's
    /// `head.cls`). Default: a linear layer with PyTorch's default init.
    func classifier(_ pooled: Tensor, classes: Int, scope: Scope) -> Tensor
    /// The input size must be a multiple of this. Default 1.
    var inputMultiple: Int { get }
}

extension SegmentationModel {
    public func head(_ x: Tensor, channels: Int, scope: Scope) -> Tensor {
        Conv2d(scope, x.channels, channels, kernel: 3, padding: 1, bias: true)(x)
    }
    public func classifier(_ pooled: Tensor, classes: Int, scope: Scope) -> Tensor {
        Linear(scope, pooled.shape.last ?? 1, classes)(pooled)
    }
    public var inputMultiple: Int { 1 }
}

/// The entry points a module holds (their names are what passes and the
/// runtime look for).
public enum EntryPoint: String, CaseIterable, Sendable {
    /// `x` → `logits` [B, classes, S, S]; eval-mode batch norm.
    case infer
    /// DDeP: `x, seed, noise_a [B], noise_b [B], target_noise, target_image` →
    /// `loss`; encoder frozen (eval BN).
    case pretrainStep = "pretrain_step"
    /// DeP: as pretrain_step with everything trained.
    case pretrainDepStep = "pretrain_dep_step"
    /// `x, labels` → cross-entropy `loss`; everything trained.
    case finetuneStep = "finetune_step"
    /// Supervised encoder pretraining: `x, labels` (one class per image) →
    /// cross-entropy `loss` of a linear head (`head.cls`) on the encoder's
    /// globally average-pooled last feature map; only the encoder and that
    /// head are trained.
    case classifyStep = "classify_step"
    /// `x` (a noisy image) → the denoising head's `prediction` [B, 3, S, S]
    /// (the noise ε or the clean image, as pretrained); eval-mode batch norm.
    /// What `ddepc denoise` runs.
    case denoise
}

/// Static shapes and options of the built entry points.
public struct EntryConfig: Hashable, Sendable {
    public var batch: Int
    /// Square input side S.
    public var size: Int
    public var classes: Int
    public var ignoreIndex: Int
    public var entries: [EntryPoint]
    /// Classes of the image-level classification head (classify_step).
    public var imageClasses: Int

    public init(batch: Int = 4, size: Int = 64, classes: Int = 2, ignoreIndex: Int = 255,
                entries: [EntryPoint] = EntryPoint.allCases, imageClasses: Int = 10) {
        self.batch = batch
        self.size = size
        self.classes = classes
        self.ignoreIndex = ignoreIndex
        self.entries = entries
        self.imageClasses = imageClasses
    }

    /// Checks that do not need the graph.
    public func validate(for model: any SegmentationModel) throws {
        guard batch >= 1 else { throw IRError("batch must be at least 1 (got \(batch))") }
        guard classes >= 1 else { throw IRError("classes must be at least 1 (got \(classes))") }
        guard imageClasses >= 1 else { throw IRError("image classes must be at least 1 (got \(imageClasses))") }
        let multiple = Swift.max(model.inputMultiple, 1)
        guard size >= 1, size % multiple == 0 else {
            throw IRError("input size \(size) must be a positive multiple of \(multiple) for this model (try \(Swift.max(multiple, (size / multiple) * multiple)))")
        }
        guard !entries.isEmpty, Set(entries).count == entries.count else {
            throw IRError("entry points must be a non-empty list without repeats (got \(entries.map(\.rawValue)))")
        }
    }
}

/// Build the module of `model`'s entry points (see `EntryPoint`): each
/// function verified, and every argument name of one shape and kind across
/// functions. Throws the first model error (located at its model-file line).
public func buildModule(_ model: any SegmentationModel, config: EntryConfig = EntryConfig()) throws -> Module {
    try config.validate(for: model)
    let module = Module(functions: try config.entries.map { try buildFunction($0, model: model, config: config) })
    try Verifier.verify(module)
    try checkConsistentArguments(module)
    return module
}

/// Build one entry point.
public func buildFunction(_ entry: EntryPoint, model: any SegmentationModel, config: EntryConfig) throws -> Function {
    let (b, s) = (config.batch, config.size)
    let image = TensorType.f32([b, 3, s, s])
    let ctx: BuildContext
    switch entry {
    case .infer:
        ctx = BuildContext(function: entry.rawValue, training: false)
        let x = ctx.input("x", image)
        let logits = forward(model, x, headScope: "head.seg", channels: config.classes)
        ctx.output(logits, name: "logits")
    case .pretrainStep, .pretrainDepStep:
        ctx = BuildContext(function: entry.rawValue, training: true, frozen: entry == .pretrainStep ? ["enc"] : [])
        let x = ctx.input("x", image)
        let seed = ctx.input("seed", TensorType(.i64, []))
        // Per-sample noise scales (a fixed γ repeats one pair; γ ~ U[0,1] draws
        // one per image): x̃ = a·x + b·ε, ε ~ N(0, I) drawn from the seed.
        let a = ctx.input("noise_a", .f32([b]))
        let bScale = ctx.input("noise_b", .f32([b]))
        // What the head predicts: target_noise·ε + target_image·x (1, 0: the noise).
        let targetNoise = ctx.input("target_noise", .f32([]))
        let targetImage = ctx.input("target_image", .f32([]))
        let perSample = [b, 1, 1, 1]
        let noise = seed.emit("random_normal", [], ["shape": .ints(image.shape)])
        let noisy = x * a.reshape(perSample) + noise * bScale.reshape(perSample)
        let prediction = forward(model, noisy, headScope: "head.denoise", channels: 3)
        ctx.output(prediction.emit("mse", [noise * targetNoise + x * targetImage]), name: "loss")
    case .denoise:
        ctx = BuildContext(function: entry.rawValue, training: false)
        let x = ctx.input("x", image)
        ctx.output(forward(model, x, headScope: "head.denoise", channels: 3), name: "prediction")
    case .finetuneStep:
        ctx = BuildContext(function: entry.rawValue, training: true)
        let x = ctx.input("x", image)
        let labels = ctx.input("labels", TensorType(.i32, [b, s, s]))
        let logits = forward(model, x, headScope: "head.seg", channels: config.classes)
        ctx.output(logits.emit("cross_entropy", [labels], ["ignore_index": .int(config.ignoreIndex)]), name: "loss")
    case .classifyStep:
        ctx = BuildContext(function: entry.rawValue, training: true)
        let x = ctx.input("x", image)
        let labels = ctx.input("labels", TensorType(.i32, [b]))
        let root = x.context.root
        guard let last = model.encode(x, scope: root["enc"]).last else {
            x.context.fail("the model's encoder returned no feature maps")
            return try ctx.finish()
        }
        let pooled = last.mean(axes: [2, 3])
        let logits = model.classifier(pooled, classes: config.imageClasses, scope: root["head.cls"])
        ctx.output(logits.emit("cross_entropy", [labels], ["ignore_index": .int(config.ignoreIndex)]), name: "loss")
    }
    return try ctx.finish()
}

/// encoder → decoder → head, checking the head keeps the input's resolution.
func forward(_ model: any SegmentationModel, _ x: Tensor, headScope: String, channels: Int) -> Tensor {
    let root = x.context.root
    let features = model.encode(x, scope: root["enc"])
    guard !features.isEmpty else {
        x.context.fail("the model's encoder returned no feature maps")
        return x
    }
    let decoded = model.decode(features, scope: root["dec"])
    let y = model.head(decoded, channels: channels, scope: root[headScope])
    let expected = [x.shape[0], channels, x.shape[2], x.shape[3]]
    if y.shape != expected && x.context.firstError == nil {
        x.context.fail("the model's \(headScope) output is \(y.type); expected f32\(expected) (the input's batch and size)")
    }
    return y
}

/// Every weight and state name has one type, and weights stay weights, across functions.
func checkConsistentArguments(_ module: Module) throws {
    var seen: [String: (Argument, String)] = [:]
    for function in module.functions {
        // Inputs are per entry point (classify_step's labels are per image).
        for arg in function.args where arg.role != .input {
            guard let (first, where_) = seen[arg.name] else {
                seen[arg.name] = (arg, function.name)
                continue
            }
            guard first.type == arg.type, first.role.isWeight == arg.role.isWeight,
                  (first.role == .state) == (arg.role == .state) else {
                throw IRError("argument \"\(arg.name)\" is \(first.type) \(first.role) in @\(where_) but \(arg.type) \(arg.role) in @\(function.name)")
            }
        }
    }
}
