import IR

/// Lowers `grad:*` outputs into an in-graph Adam/AdamW update (PyTorch's
/// formulation, decoupled weight decay):
///
///     m ← β₁m + (1−β₁)g          v ← β₂v + (1−β₂)g²
///     p ← p − lr·(bc1·m / (√(bc2·v) + ε) + wd·p)
///
/// The step-dependent scalars are inputs so one compiled step serves every
/// iteration: `lr`, `bc1` = 1/(1−β₁ᵗ), `bc2` = 1/(1−β₂ᵗ), `weight_decay`
/// (decoupled, AdamW), `l2` (coupled, classic Adam: g ← g + l2·p) and
/// `clip_norm` (> 0: gradients are scaled so their global L2 norm is at most
/// clip_norm, as torch.nn.utils.clip_grad_norm_; ≤ 0: no clipping). An input
/// left at 0 disables its feature. The global gradient norm (before
/// clipping) is returned as the output `grad_norm`.
/// Moments are state arguments `opt.m.<param>` / `opt.v.<param>`.
public struct AdamOptimizer: Pass {
    public static let name = "optimizer"
    public var beta1 = 0.9
    public var beta2 = 0.999
    public var epsilon = 1e-8

    public init(beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
    }

    public static let inputNames = ["lr", "bc1", "bc2", "weight_decay", "l2", "clip_norm"]

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
        let (lr, bc1, bc2, wd) = (inputs["lr"]!, inputs["bc1"]!, inputs["bc2"]!, inputs["weight_decay"]!)
        let beta1 = try b.constant(self.beta1), oneMinusBeta1 = try b.constant(1 - self.beta1)
        let beta2 = try b.constant(self.beta2), oneMinusBeta2 = try b.constant(1 - self.beta2)
        let eps = try b.constant(epsilon)

        let params = try gradOutputs.map { output -> (Argument, Value) in
            let name = String(output.name.dropFirst(Autodiff.gradientPrefix.count))
            guard let param = function.argument(named: name) else { throw IRError("gradient of unknown parameter \"\(name)\"") }
            return (param, b.value(output.value))
        }
        // Global norm ‖g‖ over every gradient, and the clipping factor
        // min(1, clip/(‖g‖ + 1e-6)) when clip_norm > 0.
        var squares: Value?
        for (_, g) in params {
            let sum = try b.sum(try b.mul(g, g), axes: Array(0..<g.rank))
            squares = try squares.map { try b.add($0, sum) } ?? sum
        }
        let norm = try b.unary("sqrt", squares!)
        let clip = inputs["clip_norm"]!
        let ratio = try b.div(clip, try b.add(norm, try b.constant(1e-6)))
        let one = try b.constant(1)
        let scale = try b.select(clip, try b.emit("minimum", [one, ratio]), one)

        for (param, rawGrad) in params {
            let p = b.value(param.id)
            let g = try b.add(try b.mul(rawGrad, scale), try b.mul(inputs["l2"]!, p))
            let m = b.argument("opt.m." + param.name, param.type, role: .state, initRule: .zeros)
            let v = b.argument("opt.v." + param.name, param.type, role: .state, initRule: .zeros)
            let newM = try b.add(try b.mul(beta1, m), try b.mul(oneMinusBeta1, g))
            let newV = try b.add(try b.mul(beta2, v), try b.mul(oneMinusBeta2, try b.mul(g, g)))
            let denominator = try b.add(try b.unary("sqrt", try b.mul(bc2, newV)), eps)
            let direction = try b.add(try b.div(try b.mul(bc1, newM), denominator), try b.mul(wd, p))
            let newP = try b.sub(p, try b.mul(lr, direction))
            b.update(p, with: newP)
            b.update(m, with: newM)
            b.update(v, with: newV)
        }
        b.output(norm, name: "grad_norm")
        b.setOutputs(b.function.outputs.filter { !$0.name.hasPrefix(Autodiff.gradientPrefix) })
        return b.function
    }
}
