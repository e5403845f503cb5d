/// Where every argument and result of every entry point lives at run time.
/// Compiled code receives four base pointers (`ddp_buffers` in ddp_abi.h):
/// weights (param + frozen, shared by all entry points), state (optimizer
/// moments, running statistics; shared), per-call inputs and outputs (`io`,
/// one layout per entry point) and the activation arena.
public struct BufferLayout: Codable, Equatable, Sendable {
    /// The regions, in the order of `ddp_buffers`' fields (ddp_abi.h), which
    /// both code generators lay out by this enum.
    public enum Region: String, Codable, Sendable, CaseIterable { case params, state, io, arena }

    public struct Slot: Codable, Equatable, Sendable {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var offset: Int
        /// Init rule for weights and state (`he`, `zeros`, ...).
        public var initRule: String?
        public var byteSize: Int { shape.reduce(1, *) * BufferLayout.elementBytes(dtype) }

        public init(name: String, dtype: String, shape: [Int], offset: Int, initRule: String? = nil) {
            (self.name, self.dtype, self.shape, self.offset, self.initRule) = (name, dtype, shape, offset, initRule)
        }
    }

    public struct Entry: Codable, Equatable, Sendable {
        public var name: String
        public var inputs: [Slot]
        public var outputs: [Slot]
        public var ioBytes: Int
        public var arenaBytes: Int
        /// Weights this entry point trains (role `param` with an update).
        public var trains: [String]
        /// State it updates.
        public var updatesState: [String]
        /// Weights it differentiates (role `param`; trained unless compiled
        /// without an optimizer). Absent in older manifests.
        public var trainable: [String]?
        /// Weights it reads but never changes (role `frozen`, e.g. the
        /// encoder in DDeP pretraining). Absent in older manifests.
        public var frozen: [String]?
        /// The entry point that fills the `prepared.…` state this one reads
        /// (see `PreparedWeights`): to be called once the weights are set,
        /// and again whenever they change. Absent when there is none.
        public var preparedBy: String?

        public init(name: String, inputs: [Slot], outputs: [Slot], ioBytes: Int, arenaBytes: Int, trains: [String],
                    updatesState: [String], trainable: [String]? = nil, frozen: [String]? = nil, preparedBy: String? = nil) {
            (self.name, self.inputs, self.outputs, self.ioBytes, self.arenaBytes) = (name, inputs, outputs, ioBytes, arenaBytes)
            (self.trains, self.updatesState, self.trainable, self.frozen, self.preparedBy) = (trains, updatesState, trainable, frozen, preparedBy)
        }
    }

    public var params: [Slot]
    public var paramsBytes: Int
    public var state: [Slot]
    public var stateBytes: Int
    public var entries: [Entry]

    public static let alignment = 64

    public static func align(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// Bytes per element of a slot's `dtype` (the IR's element types).
    public static func elementBytes(_ dtype: String) -> Int { dtype == "f64" || dtype == "i64" ? 8 : 4 }

    public init(params: [Slot], paramsBytes: Int, state: [Slot], stateBytes: Int, entries: [Entry]) {
        self.params = params
        self.paramsBytes = paramsBytes
        self.state = state
        self.stateBytes = stateBytes
        self.entries = entries
    }

    public func entry(_ name: String) -> Entry? { entries.first { $0.name == name } }
    public func param(_ name: String) -> Slot? { params.first { $0.name == name } }
    public func stateSlot(_ name: String) -> Slot? { state.first { $0.name == name } }
}
