/// Appends typed nodes to a function. Every emitted node is shape-checked at
/// once, so a shape error names the op, the operand types and the source line.
public final class FunctionBuilder {
    public private(set) var function: Function
    private var types: [ValueID: TensorType]
    private var next: ValueID
    /// Location stamped on nodes emitted without an explicit one.
    public var currentLoc: SourceLoc?

    public init(name: String) {
        function = Function(name: name)
        types = [:]
        next = 0
    }

    /// Continue building an existing function (passes use this).
    public init(_ function: Function) {
        self.function = function
        types = function.types
        next = function.nextID
    }

    public func type(of id: ValueID) -> TensorType {
        guard let type = types[id] else { preconditionFailure("FunctionBuilder: unknown value %\(id)") }
        return type
    }

    public func value(_ id: ValueID) -> Value { Value(id: id, type: type(of: id)) }

    @discardableResult
    public func argument(_ name: String, _ type: TensorType, role: ArgRole, initRule: InitRule? = nil) -> Value {
        let id = next
        next += 1
        function.args.append(Argument(id: id, type: type, role: role, name: name, initRule: initRule))
        types[id] = type
        return Value(id: id, type: type)
    }

    /// Emit a node; throws an IRError naming op, operand types and location.
    public func emit(_ op: String, _ operands: [Value], _ attrs: Attributes = [:], loc: SourceLoc? = nil) throws -> Value {
        let spec = try OpRegistry.require(op)
        let where_ = loc ?? currentLoc
        let type: TensorType
        do {
            type = try spec.checkedType(operands: operands.map(\.type), attrs: attrs)
        } catch let error as IRError {
            let operandText = operands.map { $0.type.description }.joined(separator: ", ")
            throw IRError("\(op)(\(operandText)): \(error.message)", loc: error.loc ?? where_)
        }
        let id = next
        next += 1
        function.nodes.append(Node(id: id, op: op, operands: operands.map(\.id), attrs: attrs, type: type, loc: where_))
        types[id] = type
        return Value(id: id, type: type)
    }

    public func output(_ value: Value, name: String) {
        function.outputs.append(Output(value: value.id, name: name))
    }

    public func update(_ target: Value, with value: Value) {
        function.updates.append(Update(target: target.id, value: value.id))
    }

    /// Replace the function's outputs (passes rewrite results).
    public func setOutputs(_ outputs: [Output]) { function.outputs = outputs }
    public func setUpdates(_ updates: [Update]) { function.updates = updates }
    public func removeArguments(where predicate: (Argument) -> Bool) { function.args.removeAll(where: predicate) }
}
