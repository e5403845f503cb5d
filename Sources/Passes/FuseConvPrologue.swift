import IR

/// Has the kernels that read a batch norm's activation, act(xc·s + t) with
/// per-channel s and t (act ReLU or none), compute it from xc themselves,
/// and drops the loop that wrote it:
///
/// - a Winograd convolution of it applies it as its prologue as it loads
///   each input row: `fused_conv2d(xc, w, ..., s, t) {prologue=max(add(mul(in0,
///   in1), in2), 0.0)}`;
/// - that convolution's weight gradient does the same:
///   `fused_conv2d_grad_weight(xc, dy, s, t) {prologue=...}`;
/// - the input gradient gated by the ReLU's backward reads the gate as
///   [xc·s + t > 0]: `gt(add(mul(in_k, in_s), in_t), 0.0)` in its epilogue.
///
/// A training step's batch norm normalizes x − mean (batch-norm-from-
/// moments), and rematerialize computes the activation again where the
/// backward pass reads it: in the forward pass a decoder block's second
/// convolution is its only reader, in the backward pass that convolution's
/// two gradients. The pass runs after rematerialize for that reason, and
/// only when every reader of the loop takes it in: nothing is computed twice
/// or lost. Each loop that goes was a write and a read of a full activation
/// (and its bytes while it lived).
///
/// Only the Winograd kernels take a prologue (the im2col ones read a 1×1
/// convolution's input in place, where a prologue would need a copy); every
/// kernel takes the gate.
public struct FuseConvPrologue: Pass {
    public static let name = "fuse-conv-prologue"
    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            changed = try fuse(&module.functions[f]) || changed
        }
        return changed
    }

    func fuse(_ function: inout Function) throws -> Bool {
        let roots = Set(function.rootValues)
        let readers = function.readers
        let types = function.types
        var removed = Set<Int>()
        for (index, node) in function.nodes.enumerated() where !roots.contains(node.id) {
            guard let users = readers[node.id], !users.isEmpty,
                  let normalization = normalization(node, types: types, channels: node.type.shape.count > 1 ? node.type.shape[1] : 0)
            else { continue }
            // Every reader takes the normalization in, or the loop stays.
            let absorbed = users.map { absorb(function.nodes[$0], activation: node.id, normalization, types: types) }
            guard absorbed.allSatisfy({ $0 != nil }) else { continue }
            for (user, replacement) in zip(users, absorbed) { function.nodes[user] = replacement! }
            removed.insert(index)
        }
        guard !removed.isEmpty else { return false }
        function.nodes = function.nodes.enumerated().filter { !removed.contains($0.offset) }.map(\.element)
        return true
    }

    typealias Normalization = (x: ValueID, scale: ValueID, shift: ValueID, relu: Bool)

    /// `user` reading the activation act(x·scale + shift) from x instead, or
    /// nil when its kernel cannot: a Winograd convolution of it (a prologue),
    /// that convolution's weight gradient (the same prologue), or an input
    /// gradient gated by it (the ReLU's backward, [x·scale + shift > 0]).
    /// The activation must be one operand of the user, once.
    func absorb(_ user: Node, activation: ValueID, _ n: Normalization, types: [ValueID: TensorType]) -> Node? {
        guard user.operands.filter({ $0 == activation }).count == 1 else { return nil }
        var fused = user
        let prologue = Attr.expr(FusedConvOps.Prologue.expr(relu: n.relu))
        switch user.op {
        case "conv2d", "fused_conv2d":
            guard user.operands[0] == activation, user.attrs[FusedConvOps.Prologue.key] == nil,
                  user.attrs[FusedConvOps.Gather.key] == nil else { return nil }
            fused.op = "fused_conv2d"
            fused.operands = [n.x] + user.operands.dropFirst() + [n.scale, n.shift]
            if fused.attrs["epilogue"] == nil { fused.attrs["epilogue"] = .expr(.input(0)) }
            fused.attrs[FusedConvOps.Prologue.key] = prologue
        case "conv2d_grad_weight":
            guard user.operands[0] == activation else { return nil }
            fused.op = "fused_conv2d_grad_weight"
            fused.operands = [n.x, user.operands[1], n.scale, n.shift]
            fused.attrs[FusedConvOps.Prologue.key] = prologue
        case "fused_conv2d_grad_input":
            // in_k is the gate: gt(in_k, 0) becomes gt(in_k·in_s + in_t, 0) on x.
            guard let at = user.operands.firstIndex(of: activation), at >= 2, case .expr(let epilogue)? = user.attrs["epilogue"]
            else { return nil }
            let k = at - 1, extras = user.operands.count - 2
            var replacements = (0...extras).map { ScalarExpr.input($0) }
            replacements[k] = .binary(.add, .binary(.mul, .input(k), .input(extras + 1)), .input(extras + 2))
            let gated = epilogue.substituting(replacements)
            fused.operands[at] = n.x
            fused.operands += [n.scale, n.shift]
            fused.attrs["epilogue"] = .expr(gated)
            let perChannel = fused.operands.dropFirst(2).map { FusedConvOps.isPerChannel(types[$0]!.shape, channels: user.type.shape[1]) }
            guard let parts = FusedConvOps.Epilogue.match(gated, perChannel: perChannel), parts.gate == k - 1, parts.gateScale != nil
            else { return nil }
        default:
            return nil
        }
        // Checked as built: the kernel computes this node, or the loop stays.
        guard let spec = OpRegistry.spec(fused.op),
              (try? spec.checkedType(operands: fused.operands.map { types[$0]! }, attrs: fused.attrs)) == user.type else { return nil }
        return fused
    }

    /// The operands of `node` when it is an elementwise loop computing
    /// act(x·scale + shift) with `scale` and `shift` per channel (of
    /// `channels`): (x, scale, shift, whether act is ReLU); nil otherwise.
    func normalization(_ node: Node, types: [ValueID: TensorType], channels: Int)
        -> Normalization? {
        guard node.op == "fused_elementwise", node.operands.count == 3, LoopGroups.group(of: node) == nil,
              case .expr(let expr)? = node.attrs["expr"] else { return nil }
        let perChannel = node.operands.map { FusedConvOps.isPerChannel(types[$0]!.shape, channels: channels) }
        guard let full = perChannel.firstIndex(of: false), perChannel.filter({ !$0 }).count == 1,
              types[node.operands[full]] == node.type else { return nil }
        // The full operand as in0, the other two as in1 and in2 (in their order).
        let others = node.operands.indices.filter { $0 != full }
        var order = [Int](repeating: 0, count: 3)
        order[full] = 0
        order[others[0]] = 1
        order[others[1]] = 2
        let canonical = expr.substituting(order.map { .input($0) })
        for (scale, shift) in [(1, 2), (2, 1)] {
            let swapped = scale == 1 ? canonical : canonical.substituting([.input(0), .input(2), .input(1)])
            if let prologue = FusedConvOps.Prologue.match(swapped) {
                return (node.operands[full], node.operands[others[scale - 1]], node.operands[others[shift - 1]], prologue.relu)
            }
        }
        return nil
    }
}
