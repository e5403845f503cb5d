import IR

/// Fuses chains of elementwise ops into one `fused_elementwise` node whose
/// scalar expression is the composition: one loop, no intermediate buffers.
/// A producer is inlined into its consumer when the consumer is its only
/// user and both have the same shape (so no element is computed twice), and
/// the consumer reads it once, or the producer is so cheap (a bias add) that
/// computing it again beats a pass over memory; scalar constants are always
/// inlined.
public struct FuseElementwise: Pass {
    public static let name = "fuse-elementwise"
    public init() {}

    /// The most a producer may cost (ScalarExpr.arithmeticCost) to be
    /// inlined where its consumer reads it more than once: GELU reads its
    /// input twice, and the bias add before it then costs one more add per
    /// element instead of a loop of its own.
    public static let recomputedCost = 2

    /// Runs to a fixed point, so that compiling the final IR again fuses
    /// nothing more: a node that could not absorb all its producers within
    /// the operand limit may absorb some once they are fused themselves.
    /// The producers it absorbs are removed as it goes (their uses would
    /// otherwise keep other values from fusing).
    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for _ in 0..<Self.maximumRounds {
            var round = false
            for f in module.functions.indices {
                round = try fuse(&module.functions[f]) || round
            }
            guard round else { break }
            _ = try DCE().run(&module)
            changed = true
        }
        return changed
    }

    static let maximumRounds = 8

    func fuse(_ function: inout Function) throws -> Bool {
        let uses = function.useCounts
        let roots = Set(function.rootValues)
        let types = function.types
        var forms: [ValueID: (expr: ScalarExpr, operands: [ValueID], shape: [Int])] = [:]
        var constants: [ValueID: Double] = [:]
        var changed = false
        let maxOperands = try OpRegistry.require("fused_elementwise").arity.upperBound
        for n in function.nodes.indices {
            let node = function.nodes[n]
            guard case .elementwise(let exprOf) = try OpRegistry.require(node.op).lowering else { continue }
            if node.op == "constant" {
                if node.type.shape.isEmpty { constants[node.id] = try node.attrs.float("value") }
                continue
            }
            let nodeExpr = try exprOf(node.attrs)
            var operands: [ValueID] = []
            func input(_ id: ValueID) -> ScalarExpr {
                if let index = operands.firstIndex(of: id) { return .input(index) }
                operands.append(id)
                return .input(operands.count - 1)
            }
            var inlined = false
            func replacements(inliningProducers: Bool) -> [ScalarExpr] {
                operands = []
                inlined = false
                return node.operands.enumerated().map { index, operand in
                    if let value = constants[operand] {
                        inlined = true
                        return .const(value)
                    }
                    if inliningProducers, let producer = forms[operand], uses[operand] == 1, !roots.contains(operand),
                       producer.shape == node.type.shape,
                       nodeExpr.occurrences(ofInput: index) == 1 || producer.expr.arithmeticCost <= Self.recomputedCost {
                        inlined = true
                        return producer.expr.substituting(producer.operands.map(input))
                    }
                    return input(operand)
                }
            }
            var replaced = replacements(inliningProducers: true)
            // A fused node takes at most `maxOperands`: past that, a new chain starts here.
            if operands.count > maxOperands { replaced = replacements(inliningProducers: false) }
            let expr = nodeExpr.substituting(replaced)
            forms[node.id] = (expr, operands, node.type.shape)
            // A node whose operands were all inlined constants keeps its own form
            // (fused_elementwise needs a tensor operand); its users may still absorb it.
            if inlined, !operands.isEmpty {
                var attrs: Attributes = ["expr": .expr(expr)]
                if broadcastShapes(operands.map { types[$0]!.shape }) != node.type.shape { attrs["shape"] = .ints(node.type.shape) }
                function.nodes[n] = Node(id: node.id, op: "fused_elementwise", operands: operands,
                                         attrs: attrs, type: node.type, loc: node.loc)
                changed = true
            }
        }
        return changed
    }
}
