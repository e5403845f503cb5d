import IR

/// Data-parallel training (`ddepc compile --data-parallel`): every process
/// runs the same step on its own B images of a global batch of N·B, and the
/// step averages across processes what must be global. The loss of the
/// global batch is the mean of the processes' mean losses (equal shards), so
/// the gradient is the mean of their gradients.

/// Batch normalization over the global batch (synchronized batch norm): the
/// batch mean and variance a training step computes are replaced by their
/// allreduce, before autodiff, so the backward pass gets allreduce's
/// gradient too. Statistics over equal shards average to the global ones
/// (the variance is taken around the global mean), so N processes with batch
/// B normalize exactly like one process with batch N·B. Statistics that come
/// in as arguments (running statistics, frozen encoders) are left alone.
///
/// batch_norm_train computes its statistics inside its kernel, where no
/// allreduce reaches them: each one becomes batch_norm over the moments its
/// layer built with NormOps.batchMoments (which its running statistics use
/// too), and those are averaged like any other.
public struct SyncBatchNorm: Pass {
    public static let name = "sync-batch-norm"
    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for index in module.functions.indices {
            guard module.functions[index].output(named: Autodiff.lossName) != nil,
                  !module.functions[index].nodes.contains(where: { $0.op == "allreduce" }) else { continue }
            try Self.exposeStatistics(&module.functions[index])
            let function = module.functions[index]
            let computed = Set(function.nodes.map(\.id))
            let statistics = Set(function.nodes.filter { $0.op == "batch_norm" }
                .flatMap { $0.operands[1...2] }.filter { computed.contains($0) })
            guard !statistics.isEmpty else { continue }
            var rewritten = function
            rewritten.nodes = []
            var renamed: [ValueID: ValueID] = [:]
            var next = function.nextID
            for var node in function.nodes {
                node.operands = node.operands.map { renamed[$0] ?? $0 }
                rewritten.nodes.append(node)
                if statistics.contains(node.id) {
                    rewritten.nodes.append(Node(id: next, op: "allreduce", operands: [node.id], type: node.type, loc: node.loc))
                    renamed[node.id] = next
                    next += 1
                }
            }
            rewritten.outputs = function.outputs.map { Output(value: renamed[$0.value] ?? $0.value, name: $0.name) }
            rewritten.updates = function.updates.map { Update(target: $0.target, value: renamed[$0.value] ?? $0.value) }
            module.functions[index] = rewritten
            changed = true
        }
        return changed
    }
}

extension SyncBatchNorm {
    /// Rewrites each batch_norm_train as batch_norm over its batch moments.
    static func exposeStatistics(_ function: inout Function) throws {
        for (position, node) in function.nodes.enumerated() where node.op == "batch_norm_train" {
            let x = node.operands[0]
            guard let (mean, _, variance) = NormOps.existingBatchMoments(of: x, in: function, before: position) else {
                throw IRError("batch_norm_train %\(node.id) has no batch moments of %\(x) (NormOps.batchMoments) before it, so --data-parallel cannot average its statistics", loc: node.loc)
            }
            function.nodes[position] = Node(id: node.id, op: "batch_norm", operands: [x, mean, variance, node.operands[1], node.operands[2]],
                                            attrs: node.attrs, type: node.type, loc: node.loc)
        }
    }
}

/// Averages the gradients (and the reported loss) over the processes, between
/// autodiff and the optimizer, so every process applies the same update and
/// the parameters stay bit-identical. Gradients are packed into buckets of at
/// most `bucketBytes` and 64 gradients (flattened and concatenated) in the
/// order the backward pass completes them. Each bucket's exchange starts
/// (`allreduce_start`) right after its last gradient is computed, so it
/// overlaps the rest of the backward pass, and is awaited
/// (`allreduce_wait`) before the optimizer, which reads it sliced back.
/// (The runtime overlaps only when asked, DDEPC_OVERLAP=1: it needs a free
/// core; see ddp_mpi.c.)
public struct AllReduceGradients: Pass {
    public static let name = "allreduce-gradients"
    public var bucketBytes: Int

    /// 4 MiB: large enough that an exchange costs its bytes rather than its
    /// latency, small enough that the first buckets start early in the
    /// backward pass of a large model.
    public init(bucketBytes: Int = 4 << 20) { self.bucketBytes = bucketBytes }

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for index in module.functions.indices {
            let function = module.functions[index]
            let grads = function.outputs.filter { $0.name.hasPrefix(Autodiff.gradientPrefix) }
            guard !grads.isEmpty else { continue }
            module.functions[index] = try reduce(function, grads)
            changed = true
        }
        return changed
    }

    /// concat's operand limit.
    static let maxBucketMembers = 64

    /// Consecutive gradients grouped up to the byte cap and concat's operand limit.
    func buckets(_ types: [TensorType]) -> [[Int]] {
        var result: [[Int]] = []
        var bytes = 0
        for (i, type) in types.enumerated() {
            if result.isEmpty || bytes + type.byteSize > bucketBytes || result[result.count - 1].count == Self.maxBucketMembers {
                result.append([])
                bytes = 0
            }
            result[result.count - 1].append(i)
            bytes += type.byteSize
        }
        return result
    }

    func reduce(_ function: Function, _ grads: [Output]) throws -> Function {
        let b = FunctionBuilder(function)
        let original = function.nodes.count
        // Where each gradient is complete (-1: an argument, from the start).
        let position = Dictionary(uniqueKeysWithValues: function.nodes.enumerated().map { ($1.id, $0) })
        var seen = Set<ValueID>()
        let values = grads.map { b.value($0.value) }.filter { seen.insert($0.id).inserted }
            .sorted { (position[$0.id] ?? -1, $0.id) < (position[$1.id] ?? -1, $1.id) }

        var starts: [(ready: Int, nodes: Range<Int>)] = []
        var pending: [(handle: Value, members: [Value])] = []
        for bucket in buckets(values.map(\.type)) {
            let members = bucket.map { values[$0] }
            let first = b.function.nodes.count
            let packed = members.count == 1 ? members[0]
                : try b.concat(try members.map { try b.reshape($0, [$0.type.count]) }, axis: 0)
            let handle = try b.allreduceStart(packed)
            starts.append((members.map { position[$0.id] ?? -1 }.max()!, first..<b.function.nodes.count))
            pending.append((handle, members))
        }
        var reduced: [ValueID: ValueID] = [:]
        for (handle, members) in pending {
            let mean = try b.allreduceWait(handle)
            guard members.count > 1 else {
                reduced[members[0].id] = mean.id
                continue
            }
            var offset = 0
            for member in members {
                let count = member.type.count
                let part = try b.slice(mean, start: [offset], end: [offset + count])
                reduced[member.id] = try b.reshape(part, member.shape).id
                offset += count
            }
        }
        var outputs = function.outputs.map { output -> Output in
            guard output.name.hasPrefix(Autodiff.gradientPrefix) else { return output }
            return Output(value: reduced[output.value]!, name: output.name)
        }
        // The loss every process reports is the global batch's.
        if let loss = outputs.firstIndex(where: { $0.name == Autodiff.lossName }) {
            outputs[loss].value = try b.allreduce(b.value(outputs[loss].value)).id
        }
        b.setOutputs(outputs)

        // Schedule: each bucket's packing and start right after its last gradient.
        var result = b.function
        let built = result.nodes
        var after: [Int: [Node]] = [:]
        for start in starts { after[start.ready, default: []] += built[start.nodes] }
        let moved = Set(starts.flatMap { built[$0.nodes].map(\.id) })
        var nodes = after[-1] ?? []
        for (index, node) in built.enumerated() where !moved.contains(node.id) {
            nodes.append(node)
            if index < original { nodes += after[index] ?? [] }
        }
        result.nodes = nodes
        return result
    }
}
