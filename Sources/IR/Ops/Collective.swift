/// Collective operations of a data-parallel step: every process of the run
/// executes the same compiled step on its own shard of the batch.
///
/// `allreduce` is the mean over the processes of a value each one computed;
/// every process gets the same bits. In a world of one process (the
/// reference interpreter, or a step run without mpirun) it is the identity.
public enum CollectiveOps {
    public static let all: [OpSpec] = [
        /// ∂x = allreduce(g): y = (1/N)·Σᵣ xᵣ is the same on every process, so the
        /// gradient of the mean loss (1/N)·Σᵣ Lᵣ reaches xᵣ as (1/N)·Σᵣ gᵣ; each
        /// process then carries N times its share, which the mean over the
        /// parameter gradients divides out again.
        OpSpec(name: "allreduce", doc: "%y = allreduce(%x): the mean of x over the processes of a data-parallel run (x itself in one process)",
               arity: 1...1,
               inferType: { operands, _ in
                   guard operands[0].dtype == .f32 || operands[0].dtype == .f64 else {
                       throw IRError("allreduce averages floating-point values, got \(operands[0])")
                   }
                   return operands[0]
               },
               evaluate: { operands, _, _ in operands[0] },
               gradient: { c in [try c.builder.allreduce(c.grad)] },
               lowering: .kernels { operands, _, _ in
                   [KernelCall("allreduce", [.operand(0), .result], ints: [operands[0].count])]
               },
               examples: [([TensorType.f32([2, 3])], [:]), ([TensorType.f32([])], [:])]),

        // The split form, for gradient buckets: the exchange starts where the
        // bucket is complete and runs while the backward pass goes on; the
        // wait comes where the result is needed. Formed after autodiff.
        OpSpec(name: "allreduce_start", doc: "%h = allreduce_start(%x): starts averaging x over the processes; read %h only through allreduce_wait",
               arity: 1...1,
               inferType: { operands, _ in try floating(operands[0]) },
               evaluate: { operands, _, _ in operands[0] },
               gradient: nil,
               lowering: .kernels { operands, _, _ in
                   [KernelCall("allreduce_start", [.operand(0), .result], ints: [operands[0].count])]
               },
               examples: [([TensorType.f32([6])], [:])]),
        OpSpec(name: "allreduce_wait", doc: "%y = allreduce_wait(%h): the mean over the processes that allreduce_start(%x) began",
               arity: 1...1,
               inferType: { operands, _ in try floating(operands[0]) },
               evaluate: { operands, _, _ in operands[0] },
               gradient: nil,
               lowering: .kernels { operands, _, _ in
                   [KernelCall("allreduce_wait", [.operand(0), .result], ints: [operands[0].count])]
               },
               examples: [([TensorType.f32([6])], [:])]),
    ]

    static func floating(_ type: TensorType) throws -> TensorType {
        guard type.dtype == .f32 || type.dtype == .f64 else { throw IRError("allreduce averages floating-point values, got \(type)") }
        return type
    }
}

extension FunctionBuilder {
    public func allreduce(_ x: Value) throws -> Value { try emit("allreduce", [x]) }
    public func allreduceStart(_ x: Value) throws -> Value { try emit("allreduce_start", [x]) }
    public func allreduceWait(_ h: Value) throws -> Value { try emit("allreduce_wait", [h]) }
}
