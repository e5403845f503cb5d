import ABI
import IR

/// Lowers `grad:*` outputs into an in-graph Adam/AdamW update (PyTorch's
/// formulation, decoupled weight decay):
///
///     m ← β₁m + (1−β₁)g          v ← β₂v + (1−β₂)g²
///     p ← p − lr·(bc1·m / (√(bc2·v) + ε) + wd·p)
///
/// The step-dependent scalars are inputs so one compiled step serves every
/// iteration: `lr`, `bc1` = 1/(1−β₁ᵗ), `bc2` = 1/(1−β₂ᵗ), `weight_decay`
/// (decoupled, AdamW), `l2` (coupled, classic Adam: g ← g + l2·p) and, when
/// compiled with `clipping`, `clip_norm` (> 0: gradients are scaled so their
/// global L2 norm is at most clip_norm, as torch.nn.utils.clip_grad_norm_;
/// ≤ 0: no clipping). An input left at 0 disables its feature. The global
/// gradient norm (before clipping) is returned as the output `grad_norm`.
///
/// Clipping is a compile-time choice because of what it holds: the scale
/// depends on every gradient, so no weight can be updated before the whole
/// backward pass is done, and every gradient (the model's size, 421 MB for
/// TransUNet) stays in the arena until then. Without it, schedule-updates
/// updates each weight as soon as its gradient is complete.
/// Moments are state arguments `opt.m.<param>` / `opt.v.<param>`.
public struct AdamOptimizer: Pass {
    public static let name = "optimizer"
    /// β₁, β₂ and ε, recorded in the artifact's manifest for the trainer.
    public var settings: AdamSettings
    /// Whether the step takes `clip_norm` and scales its gradients by it.
    public var clipping = false

    public init(beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8, clipping: Bool = false) {
        settings = AdamSettings(beta1: beta1, beta2: beta2, epsilon: epsilon)
        self.clipping = clipping
    }

    /// The output holding the global gradient norm.
    public static let gradNormName = StepSignature.gradNorm
    /// The prefix of the moments' state arguments.
    public static let statePrefix = StepSignature.optimizerStatePrefix

    /// The scalar inputs of every optimized step; `clipNormName` too with clipping.
    public static let inputNames = StepSignature.optimizerInputs
    public static let clipNormName = StepSignature.clipNorm

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for index in module.functions.indices {
            let function = module.functions[index]
            let gradOutputs = function.outputs.filter { $0.name.hasPrefix(Autodiff.gradientPrefix) }
            guard !gradOutputs.isEmpty else { continue }
            module.functions[index] = try lower(function, gradOutputs)
            changed = true
        }
        return changed
    }

    func lower(_ function: Function, _ gradOutputs: [Output]) throws -> Function {
        let b = FunctionBuilder(function)
        let scalar = TensorType.f32([])
        let inputs = Dictionary(uniqueKeysWithValues: Self.inputNames.map { ($0, b.argument($0, scalar, role: .input)) })
        let (lr, bc1, bc2, wd) = (inputs[StepSignature.learningRate]!, inputs[StepSignature.biasCorrection1]!,
                                  inputs[StepSignature.biasCorrection2]!, inputs[StepSignature.weightDecay]!)
        let beta1 = try b.constant(settings.beta1), oneMinusBeta1 = try b.constant(1 - settings.beta1)
        let beta2 = try b.constant(settings.beta2), oneMinusBeta2 = try b.constant(1 - settings.beta2)
        let eps = try b.constant(settings.epsilon)

        let params = try gradOutputs.map { output -> (Argument, Value) in
            let name = String(output.name.dropFirst(Autodiff.gradientPrefix.count))
            guard let param = function.argument(named: name) else { throw IRError("gradient of unknown parameter \"\(name)\"") }
            return (param, b.value(output.value))
        }
        // Global norm ‖g‖ over every gradient, and with clipping the factor
        // min(1, clip/(‖g‖ + 1e-6)) when clip_norm > 0.
        var squares: Value?
        for (_, g) in params {
            let sum = try b.sum(try b.mul(g, g), axes: Array(0..<g.rank))
            squares = try squares.map { try b.add($0, sum) } ?? sum
        }
        let norm = try b.unary("sqrt", squares!)
        var scale: Value?
        if clipping {
            let clip = b.argument(Self.clipNormName, scalar, role: .input)
            let ratio = try b.div(clip, try b.add(norm, try b.constant(1e-6)))
            let one = try b.constant(1)
            scale = try b.select(clip, try b.emit("minimum", [one, ratio]), one)
        }

        for (param, rawGrad) in params {
            let p = b.value(param.id)
            let g = try b.add(try scale.map { try b.mul(rawGrad, $0) } ?? rawGrad, try b.mul(inputs[StepSignature.l2]!, p))
            let m = b.argument(Self.statePrefix + "m." + param.name, param.type, role: .state, initRule: .zeros)
            let v = b.argument(Self.statePrefix + "v." + param.name, param.type, role: .state, initRule: .zeros)
            let newM = try b.add(try b.mul(beta1, m), try b.mul(oneMinusBeta1, g))
            let newV = try b.add(try b.mul(beta2, v), try b.mul(oneMinusBeta2, try b.mul(g, g)))
            let denominator = try b.add(try b.unary("sqrt", try b.mul(bc2, newV)), eps)
            let direction = try b.add(try b.div(try b.mul(bc1, newM), denominator), try b.mul(wd, p))
            let newP = try b.sub(p, try b.mul(lr, direction))
            b.update(p, with: newP)
            b.update(m, with: newM)
            b.update(v, with: newV)
        }
        b.output(norm, name: Self.gradNormName)
        b.setOutputs(b.function.outputs.filter { !$0.name.hasPrefix(Autodiff.gradientPrefix) })
        return b.function
    }
}
