import IR

/// Applies the previous layer's normalization and ReLU as a Winograd
/// convolution's prologue: `conv2d(max(xc·s + t, 0), w)` becomes
/// `fused_conv2d(xc, w, s, t) {prologue=max(add(mul(in0, in1), in2), 0.0)}`,
/// and the kernel computes each input row's activations as it loads it. The
/// loop that wrote the activated tensor, and read xc for it, is gone: one
/// write and one read of a full activation per layer, and its bytes.
///
/// A training step's batch norm normalizes x − mean with per-channel scale
/// and shift (batch-norm-from-moments); rematerialize recomputes the
/// activation where the backward pass reads it, so in the forward pass the
/// convolution is its only reader. The pass runs after rematerialize for
/// that reason, and fuses only a loop whose sole reader is the convolution's
/// input: nothing is computed twice.
///
/// Only the Winograd kernels take a prologue (the im2col ones read a 1×1
/// convolution's input in place, where a prologue would need a copy); the
/// forward ones, so far. The weight gradient, which reads the same
/// activation in the backward pass, and the ReLU gate of the input gradient
/// still read the rematerialized tensor.
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
        var readers: [ValueID: Int] = [:]
        for node in function.nodes {
            for operand in node.operands { readers[operand, default: 0] += 1 }
        }
        let types = function.types
        let producer = Dictionary(function.nodes.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { first, _ in first })
        var removed = Set<Int>()
        for index in function.nodes.indices {
            let conv = function.nodes[index]
            guard conv.op == "conv2d" || conv.op == "fused_conv2d", conv.attrs[FusedConvOps.Prologue.key] == nil,
                  conv.attrs[ConvOps.Algorithm.key] != nil, let input = conv.operands.first,
                  !roots.contains(input), readers[input] == 1, let p = producer[input], !removed.contains(p),
                  let (xc, scale, shift, relu) = normalization(function.nodes[p], types: types, channels: types[input]!.shape[1])
            else { continue }
            var fused = conv
            fused.op = "fused_conv2d"
            fused.operands = [xc] + conv.operands.dropFirst() + [scale, shift]
            if fused.attrs["epilogue"] == nil { fused.attrs["epilogue"] = .expr(.input(0)) }
            fused.attrs[FusedConvOps.Prologue.key] = .expr(FusedConvOps.Prologue.expr(relu: relu))
            // Checked as built: the kernel computes this node or the pass leaves it.
            guard (try? OpRegistry.require("fused_conv2d").checkedType(operands: fused.operands.map { types[$0]! }, attrs: fused.attrs))
                == conv.type else { continue }
            function.nodes[index] = fused
            removed.insert(p)
        }
        guard !removed.isEmpty else { return false }
        function.nodes = function.nodes.enumerated().filter { !removed.contains($0.offset) }.map(\.element)
        return true
    }

    /// The operands of `node` when it is an elementwise loop computing
    /// act(x·scale + shift) with `scale` and `shift` per channel (of
    /// `channels`): (x, scale, shift, whether act is ReLU); nil otherwise.
    func normalization(_ node: Node, types: [ValueID: TensorType], channels: Int)
        -> (x: ValueID, scale: ValueID, shift: ValueID, relu: Bool)? {
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
