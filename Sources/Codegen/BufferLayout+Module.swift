import ABI
import IR

/// The buffer layout of a compiled module, derived from its functions'
/// signatures and planned arenas.
extension BufferLayout {
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
        self.init(params: params, paramsBytes: paramsBytes, state: state, stateBytes: stateBytes, entries: entries)
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
}
