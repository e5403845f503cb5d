import ABI
import IR

/// Reverse-mode differentiation of every function that returns a "loss",
/// with respect to its trainable (`param`) arguments only. Frozen weights,
/// inputs and state get no gradient, and nodes that depend only on them get
/// no backward code at all. Each op contributes its own vector-Jacobian rule
/// (OpSpec.gradient); the walk, accumulation and un-broadcasting live here.
///
/// Gradients are returned as outputs named `grad:<param name>`; the optimizer
/// pass turns them into updates.
public struct Autodiff: Pass {
    public static let name = "autodiff"
    public static let gradientPrefix = StepSignature.gradientPrefix
    public static let lossName = StepSignature.loss

    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for index in module.functions.indices {
            let function = module.functions[index]
            guard function.output(named: Self.lossName) != nil,
                  !function.outputs.contains(where: { $0.name.hasPrefix(Self.gradientPrefix) }),
                  function.args.contains(where: { $0.role == .param }) else { continue }
            module.functions[index] = try differentiate(function)
            changed = true
        }
        return changed
    }

    func differentiate(_ function: Function) throws -> Function {
        let loss = function.output(named: Self.lossName)!.value
        guard function.types[loss]?.shape == [] else {
            throw IRError("@\(function.name): the loss must be a scalar, it is \(function.types[loss]!)")
        }

        // Values that depend on a trainable parameter through differentiable ops.
        var active = Set(function.args.filter { $0.role == .param }.map(\.id))
        for node in function.nodes where OpRegistry.spec(node.op)?.gradient != nil {
            if node.operands.contains(where: active.contains) { active.insert(node.id) }
        }
        // Values the loss depends on.
        var needed: Set<ValueID> = [loss]
        for node in function.nodes.reversed() where needed.contains(node.id) {
            needed.formUnion(node.operands)
        }

        let builder = FunctionBuilder(function)
        var grads: [ValueID: Value] = [loss: try builder.constant(1, like: builder.value(loss))]

        for node in function.nodes.reversed() {
            guard active.contains(node.id), needed.contains(node.id), let grad = grads[node.id] else { continue }
            let spec = try OpRegistry.require(node.op)
            builder.currentLoc = node.loc
            let context = GradientContext(builder: builder, node: node, operands: node.operands.map(builder.value),
                                          result: builder.value(node.id), grad: grad)
            let operandGrads = try spec.gradient!(context)
            for (operand, operandGrad) in zip(node.operands, operandGrads) {
                guard let operandGrad, active.contains(operand) else { continue }
                let reduced = try unbroadcast(builder, operandGrad, to: builder.type(of: operand).shape)
                grads[operand] = try grads[operand].map { try builder.add($0, reduced) } ?? reduced
            }
        }
        builder.currentLoc = nil
        for arg in function.args where arg.role == .param {
            if let grad = grads[arg.id] { builder.output(grad, name: Self.gradientPrefix + arg.name) }
        }
        return builder.function
    }

    /// Sum a broadcast gradient back to the operand's shape.
    func unbroadcast(_ b: FunctionBuilder, _ grad: Value, to shape: [Int]) throws -> Value {
        if grad.shape == shape { return grad }
        let extra = grad.rank - shape.count
        var axes = Array(0..<max(extra, 0))
        for (i, size) in shape.enumerated() where size == 1 && grad.shape[extra + i] != 1 { axes.append(extra + i) }
        let summed = axes.isEmpty ? grad : try b.sum(grad, axes: axes)
        return try b.reshape(summed, shape)
    }
}
