import IR

/// Fuses a convolution with the ops that follow it into one `fused_conv2d`,
/// whose epilogue the conv2d kernel applies to each output block while it is
/// still in cache instead of in passes of their own over memory: a batch norm
/// with given statistics (inference, and the frozen encoder of a DDeP step),
/// folded to a per-channel scale and shift; a bias; a residual add; a ReLU.
///
/// The input gradient of a convolution is fused the same way into a
/// `fused_conv2d_grad_input`: in the backward pass the ReLU before a
/// convolution gates its dx (`mul(dx, gt(relu_out, 0))`), often after a
/// gradient from a skip connection is added, and the kernel does both as it
/// finishes each image of dx instead of in a loop of their own.
///
/// A follower is absorbed only when the value before it has no other use and
/// is not an output (so nothing is computed twice or lost), it has the
/// convolution's shape, and the composed epilogue is one the kernel computes
/// (`FusedConvOps.Epilogue`). Runs after autodiff: training-mode norms, whose
/// statistics read the convolution's output, stay unfused.
public struct FuseConvEpilogue: Pass {
    public static let name = "fuse-conv-epilogue"
    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            changed = try fuse(&module.functions[f]) || changed
        }
        return changed
    }

    /// The anchors, and the op each becomes with an epilogue.
    static let fusedForm = ["conv2d": "fused_conv2d", "conv2d_grad_input": "fused_conv2d_grad_input"]

    /// A fusion group being grown from one convolution.
    private struct Group {
        var epilogue = ScalarExpr.input(0)
        var extras: [ValueID] = []  // operands after %x, %w: epilogue inputs 1, 2, ...
        var prelude: [Node] = []    // per-channel folding, placed before the fused node
        var members: [Int] = []     // node indices, the convolution first
        var value: ValueID          // the group's current result
    }

    func fuse(_ function: inout Function) throws -> Bool {
        let roots = Set(function.rootValues)
        // Uses by live nodes only: a dead user (left by an earlier fusion,
        // before DCE) must not keep a value from fusing.
        var live = roots
        for node in function.nodes.reversed() where live.contains(node.id) { live.formUnion(node.operands) }
        var users: [ValueID: [Int]] = [:]
        for (index, node) in function.nodes.enumerated() where live.contains(node.id) {
            for operand in node.operands { users[operand, default: []].append(index) }
        }
        var types = function.types
        var nextID = function.nextID
        var replaced: [Int: [Node]] = [:]  // member index → what takes its place (claimed by a group)
        for (index, conv) in function.nodes.enumerated() {
            guard let fusedOp = Self.fusedForm[conv.op] else { continue }
            var group = Group(members: [index], value: conv.id)
            while !roots.contains(group.value), let using = users[group.value], using.count == 1, replaced[using[0]] == nil {
                let user = function.nodes[using[0]]
                guard user.type == conv.type, var next = try absorb(user, into: group, types: &types, nextID: &nextID),
                      next.extras.count <= 4 else { break }
                let output = conv.type.shape
                let perChannel = next.extras.map { FusedConvOps.isPerChannel(types[$0]!.shape, channels: output[1]) }
                guard zip(next.extras, perChannel).allSatisfy({ $1 || types[$0]!.shape == output }),
                      FusedConvOps.Epilogue.match(next.epilogue, perChannel: perChannel) != nil else { break }
                next.members.append(using[0])
                next.value = user.id
                group = next
            }
            guard group.members.count > 1 else { continue }
            for member in group.members.dropLast() { replaced[member] = [] }
            let fused = Node(id: group.value, op: fusedOp, operands: Array(conv.operands[0...1]) + group.extras,
                             attrs: conv.attrs.merging(["epilogue": .expr(group.epilogue)]), type: conv.type, loc: conv.loc)
            replaced[group.members.last!] = group.prelude + [fused]
        }
        guard !replaced.isEmpty else { return false }
        // Dead nodes go too: one may read a value the group no longer produces.
        function.nodes = function.nodes.enumerated().flatMap { index, node in
            replaced[index] ?? (live.contains(node.id) ? [node] : [])
        }
        return true
    }

    /// The group with `user` absorbed, or nil when `user` is not an epilogue op.
    private func absorb(_ user: Node, into group: Group, types: inout [ValueID: TensorType],
                        nextID: inout ValueID) throws -> Group? {
        var next = group
        if user.op == "batch_norm", user.operands[0] == group.value {
            // (x − mean)/√(var + eps)·γ + β = x·scale + shift, with
            // scale = γ/√(var + eps) and shift = β − mean·scale per channel.
            let (mean, variance, gamma, beta) = (user.operands[1], user.operands[2], user.operands[3], user.operands[4])
            let eps = try user.attrs.float("eps")
            let vector = types[gamma]!, channels = vector.count
            func node(_ op: String, _ operands: [ValueID], _ attrs: Attributes, _ type: TensorType) -> ValueID {
                let id = nextID
                nextID += 1
                next.prelude.append(Node(id: id, op: op, operands: operands, attrs: attrs, type: type, loc: user.loc))
                types[id] = type
                return id
            }
            let scale = node("fused_elementwise", [variance, gamma],
                             ["expr": .expr(.binary(.mul, .unary(.rsqrt, .binary(.add, .input(0), .const(eps))), .input(1)))], vector)
            let shift = node("fused_elementwise", [beta, mean, scale],
                             ["expr": .expr(.binary(.sub, .input(0), .binary(.mul, .input(1), .input(2))))], vector)
            let perChannel = vector.with(shape: [channels, 1, 1])
            next.extras += [node("reshape", [scale], ["shape": .ints(perChannel.shape)], perChannel),
                            node("reshape", [shift], ["shape": .ints(perChannel.shape)], perChannel)]
            let s = ScalarExpr.input(next.extras.count - 1), t = ScalarExpr.input(next.extras.count)
            next.epilogue = .binary(.add, .binary(.mul, group.epilogue, s), t)
            return next
        }
        guard user.op != "constant", case .elementwise(let exprOf) = try OpRegistry.require(user.op).lowering else { return nil }
        let inputs: [ScalarExpr] = user.operands.map { operand in
            if operand == group.value { return group.epilogue }
            if let k = next.extras.firstIndex(of: operand) { return .input(k + 1) }
            next.extras.append(operand)
            return .input(next.extras.count)
        }
        next.epilogue = try exprOf(user.attrs).substituting(inputs)
        return next
    }
}
