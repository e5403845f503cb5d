import IR

/// Where every argument and result of every entry point lives at run time.
/// Compiled code receives four base pointers (see `ddp_buffers` in the
/// generated code): weights (param + frozen, shared by all entry points),
/// state (optimizer moments, running statistics; shared), per-call inputs
/// and outputs (`io`, one layout per entry point) and the activation arena.
public struct BufferLayout: Codable, Equatable, Sendable {
    public enum Region: String, Codable, Sendable { case params, state, io, arena }

    public struct Slot: Codable, Equatable, Sendable {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var offset: Int
        /// Init rule for weights and state (`he`, `zeros`, ...).
        public var initRule: String?
        public var byteSize: Int { shape.reduce(1, *) * (DType(rawValue: dtype)?.byteSize ?? 4) }
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
    }

    public var params: [Slot]
    public var paramsBytes: Int
    public var state: [Slot]
    public var stateBytes: Int
    public var entries: [Entry]

    public static let alignment = 64

    static func align(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// Builds the layout; a weight or state name used with two shapes is an error.
    public init(module: Module) throws {
        var params: [Slot] = [], state: [Slot] = []
        var paramsBytes = 0, stateBytes = 0
        var entries: [Entry] = []
        let functionNames = Set(module.functions.map(\.name))
        for function in module.functions {
            var inputs: [Slot] = [], outputs: [Slot] = []
            var ioBytes = 0
            for arg in function.args {
                let slot = Slot(name: arg.name, dtype: arg.type.dtype.rawValue, shape: arg.type.shape, offset: 0,
                                initRule: arg.initRule?.description)
                switch arg.role {
                case .input:
                    inputs.append(Slot(name: slot.name, dtype: slot.dtype, shape: slot.shape, offset: ioBytes))
                    ioBytes = Self.align(ioBytes + slot.byteSize)
                case .param, .frozen:
                    try Self.place(slot, in: &params, bytes: &paramsBytes, function: function.name)
                case .state:
                    try Self.place(slot, in: &state, bytes: &stateBytes, function: function.name)
                }
            }
            let types = function.types
            for output in function.outputs {
                let type = types[output.value]!
                outputs.append(Slot(name: output.name, dtype: type.dtype.rawValue, shape: type.shape, offset: ioBytes))
                ioBytes = Self.align(ioBytes + type.byteSize)
            }
            let updated = function.updates.compactMap { update in function.args.first { $0.id == update.target } }
            entries.append(Entry(name: function.name, inputs: inputs, outputs: outputs, ioBytes: ioBytes,
                                 arenaBytes: function.arenaBytes ?? 0,
                                 trains: updated.filter { $0.role == .param }.map(\.name),
                                 updatesState: updated.filter { $0.role == .state }.map(\.name),
                                 trainable: function.args.filter { $0.role == .param }.map(\.name),
                                 frozen: function.args.filter { $0.role == .frozen }.map(\.name),
                                 preparedBy: functionNames.contains(PreparedWeights.preparerName(of: function.name))
                                     ? PreparedWeights.preparerName(of: function.name) : nil))
        }
        self.params = params
        self.paramsBytes = paramsBytes
        self.state = state
        self.stateBytes = stateBytes
        self.entries = entries
    }

    private static func place(_ slot: Slot, in slots: inout [Slot], bytes: inout Int, function: String) throws {
        if let existing = slots.first(where: { $0.name == slot.name }) {
            guard existing.shape == slot.shape, existing.dtype == slot.dtype else {
                throw IRError("\"\(slot.name)\" is \(existing.dtype)\(existing.shape) in one entry point and \(slot.dtype)\(slot.shape) in @\(function)")
            }
            return
        }
        var placed = slot
        placed.offset = bytes
        bytes = align(bytes + slot.byteSize)
        slots.append(placed)
    }

    public func entry(_ name: String) -> Entry? { entries.first { $0.name == name } }
    public func param(_ name: String) -> Slot? { params.first { $0.name == name } }
    public func stateSlot(_ name: String) -> Slot? { state.first { $0.name == name } }
}
