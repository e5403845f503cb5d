import IR

/// Computes a concatenation's input gradient by parts. Where a
/// convolution's input gradient is read only by slices along its channels
/// (the gradient of concat(upsample(x), skip): one slice per part), each
/// slice becomes the input gradient of the filters' matching input
/// channels:
///
///     %dx = conv2d_grad_input(%dy, %w)          %wa = slice(%w) {channels [0, a)}
///     %da = slice(%dx) {channels [0, a)}   →    %wb = slice(%w) {channels [a, C)}
///     %db = slice(%dx) {channels [a, C)}        %da = conv2d_grad_input(%dy, %wa)
///                                               %db = conv2d_grad_input(%dy, %wb)
///
/// The same products in two kernels of fewer rows, without the whole
/// gradient and its copies: in TransUNet's fine-tuning step (224 px, batch
/// 4) the first decoder block's 38.5 MB gradient and its 25.7 + 12.8 MB of
/// slices were the step's peak. Each part reads %dy again (its Winograd
/// input transform runs once per part). The filters' slices, a few hundred
/// KB, are taken where the gradient was, before the optimizer updates the
/// filters in place; each part's gradient where its slice was.
/// fuse-conv-gather then takes the upsampled part back through its
/// upsampling.
///
/// Only a gradient without an epilogue, of a convolution of one group, that
/// is not an output; every reader a slice of whole images along channels.
public struct SplitConvGradInput: NodeFusionPass {
    public static let name = "split-conv-grad-input"
    public init() {}

    func fuse(_ function: inout Function) throws -> Bool {
        let roots = Set(function.rootValues)
        let readers = function.readers
        let types = function.types
        var nextID = function.nextID
        var replaced: [Int: [Node]] = [:]
        for (index, gradient) in function.nodes.enumerated() where gradient.op == "conv2d_grad_input" && gradient.type.rank == 4 {
            guard !roots.contains(gradient.id), try gradient.attrs["groups"] == nil || gradient.attrs.int("groups") == 1,
                  let users = readers[gradient.id], !users.isEmpty,
                  let weight = types[gradient.operands[1]], weight.rank == 4 else { continue }
            let parts = try users.map { try channels(of: function.nodes[$0], slicing: gradient.type.shape) }
            guard parts.allSatisfy({ $0 != nil }) else { continue }
            var filters: [Node] = []
            for (user, part) in zip(users, parts) {
                let (start, end) = part!
                let w = weight.shape
                let filter = Node(id: nextID, op: "slice", operands: [gradient.operands[1]],
                                  attrs: ["start": .ints([0, start, 0, 0]), "end": .ints([w[0], end, w[2], w[3]])],
                                  type: weight.with(shape: [w[0], end - start, w[2], w[3]]), loc: gradient.loc)
                nextID += 1
                filters.append(filter)
                let slice = function.nodes[user]
                var attrs = gradient.attrs
                attrs["input_shape"] = .ints(slice.type.shape)
                replaced[user] = [Node(id: slice.id, op: "conv2d_grad_input", operands: [gradient.operands[0], filter.id],
                                       attrs: attrs, type: slice.type, loc: gradient.loc)]
            }
            replaced[index] = filters
        }
        guard !replaced.isEmpty else { return false }
        function.nodes = function.nodes.enumerated().flatMap { index, node in replaced[index] ?? [node] }
        return true
    }

    /// The channels [start, end) `node` takes of a tensor of `shape`, when
    /// it is a slice of whole images along channels; nil otherwise.
    func channels(of node: Node, slicing shape: [Int]) throws -> (start: Int, end: Int)? {
        guard node.op == "slice" else { return nil }
        let start = try node.attrs.ints("start"), end = try node.attrs.ints("end")
        guard start.count == 4, end.count == 4, start[0] == 0, start[2] == 0, start[3] == 0,
              end[0] == shape[0], end[2] == shape[2], end[3] == shape[3], end[1] > start[1] else { return nil }
        return (start[1], end[1])
    }
}
