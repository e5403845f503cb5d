import IR

/// Has a concatenation's upsampled operand written straight into the
/// concatenation: `upsample_nearest {channels, channel_offset}` writes its
/// channels of the result, and each other operand is copied in after it
/// (`insert`, which plan-memory places over its first operand). A decoder
/// block upsampled into a buffer of its own and then copied that buffer
/// into the concatenation: two passes over the largest part of the
/// concatenation, and a buffer as large, where one pass now suffices.
///
/// The upsampling must have no other use and not be an output. Runs after
/// autodiff, whose gradient rules see the concatenation as it was (its
/// gradient slices the result's gradient, as before).
public struct FuseConcat: NodeFusionPass {
    public static let name = "fuse-concat"
    public init() {}

    func fuse(_ function: inout Function) throws -> Bool {
        let uses = function.useCounts
        let roots = Set(function.rootValues)
        let producers = Dictionary(uniqueKeysWithValues: function.nodes.map { ($0.id, $0) })
        let types = function.types
        var nextID = function.nextID
        var replaced: [Int: [Node]] = [:]
        for (index, concat) in function.nodes.enumerated() where concat.op == "concat" && concat.type.rank == 4 {
            guard try concat.attrs.int("axis") == 1,
                  let upsampled = concat.operands.firstIndex(where: { operand in
                      guard let producer = producers[operand], producer.op == "upsample_nearest" else { return false }
                      return producer.attrs["channels"] == nil && uses[operand] == 1 && !roots.contains(operand)
                  }) else { continue }
            var offsets = [0]
            for operand in concat.operands { offsets.append(offsets.last! + types[operand]!.shape[1]) }
            let upsample = producers[concat.operands[upsampled]]!
            let others = concat.operands.indices.filter { $0 != upsampled }
            var attrs = upsample.attrs
            attrs["channels"] = .int(concat.type.shape[1])
            attrs["channel_offset"] = .int(offsets[upsampled])
            var previous = others.isEmpty ? concat.id : nextID
            if !others.isEmpty { nextID += 1 }
            var nodes = [Node(id: previous, op: "upsample_nearest", operands: upsample.operands, attrs: attrs,
                              type: concat.type, loc: upsample.loc)]
            for (k, operand) in others.enumerated() {
                let id = k == others.count - 1 ? concat.id : nextID
                if k < others.count - 1 { nextID += 1 }
                nodes.append(Node(id: id, op: "insert", operands: [previous, concat.operands[operand]],
                                  attrs: ["axis": .int(1), "offset": .int(offsets[operand])], type: concat.type, loc: concat.loc))
                previous = id
            }
            replaced[index] = nodes
        }
        guard !replaced.isEmpty else { return false }
        function.nodes = function.nodes.enumerated().flatMap { index, node in replaced[index] ?? [node] }
        return true
    }
}
