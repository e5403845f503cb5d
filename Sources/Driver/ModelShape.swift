import ABI
import IR

/// Batch, input size and classes of a compiled model, as its `@infer`
/// function fixes them: input x [B,3,S,S] and output logits [B,classes,S,S].
public struct ModelShape: Equatable, Sendable {
    public var batch: Int
    public var size: Int
    public var classes: Int

    public init(batch: Int, size: Int, classes: Int) {
        self.batch = batch
        self.size = size
        self.classes = classes
    }

    /// nil when the module has no such `@infer` (a hand-written module may not).
    public init?(of module: Module) {
        guard let infer = module["infer"], let x = infer.argument(named: "x")?.type.shape, x.count == 4, x[2] == x[3],
              let logits = infer.output(named: StepSignature.logits).flatMap({ infer.types[$0.value]?.shape }), logits.count == 4 else { return nil }
        self.init(batch: x[0], size: x[2], classes: logits[1])
    }
}
