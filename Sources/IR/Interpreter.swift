/// The reference interpreter: runs any function node by node with each op's
/// `evaluate`. In `.f64` it is the numeric oracle; in `.f32` every result is
/// rounded to Float, approximating compiled code.
public enum Precision: String, Sendable { case f32, f64 }

public struct InterpreterResult {
    /// Outputs by name.
    public var outputs: [String: HostTensor]
    /// New values of updated arguments, by argument name.
    public var updates: [String: HostTensor]
}

public enum Interpreter {
    /// `arguments` are keyed by argument name; every argument must be given.
    public static func run(_ function: Function, arguments: [String: HostTensor],
                           precision: Precision = .f64) throws -> InterpreterResult {
        var values: [ValueID: HostTensor] = [:]
        for arg in function.args {
            guard let tensor = arguments[arg.name] else { throw IRError("no value given for argument \"\(arg.name)\"") }
            guard tensor.type.shape == arg.type.shape else {
                throw IRError("argument \"\(arg.name)\" expects \(arg.type), got shape \(tensor.shape)")
            }
            values[arg.id] = tensor
        }
        for node in function.nodes {
            let spec = try OpRegistry.require(node.op)
            var result = try spec.evaluate(node.operands.map { values[$0]! }, node.attrs, node.type)
            if precision == .f32, node.type.dtype == .f32 {
                result.data = result.data.map { Double(Float($0)) }
            }
            values[node.id] = result
        }
        var outputs: [String: HostTensor] = [:]
        for output in function.outputs { outputs[output.name] = values[output.value]! }
        var updates: [String: HostTensor] = [:]
        for update in function.updates {
            let name = function.args.first { $0.id == update.target }!.name
            updates[name] = values[update.value]!
        }
        return InterpreterResult(outputs: outputs, updates: updates)
    }
}
