/// The textual form (`.ddir`). Every piece of a function is printed, so
/// `parse(print(m)) == m` (tested for every op).
///
///     func @step(%0: f32[2,3] input "x", %1: f32[3] param "b" init=zeros) arena 64 {
///       %2 = add(%0, %1) : f32[2,3] @0 loc("model.swift":4)
///       %3 = sub(%1, %2) : f32[3] @%1
///       return %2 as "y"
///       update %1 = %3
///     }
public enum Printer {
    public static func print(_ module: Module) -> String {
        module.functions.map(print).joined(separator: "\n")
    }

    public static func print(_ function: Function) -> String {
        var out = "func @\(function.name)("
        out += function.args.map { arg in
            var text = "%\(arg.id): \(arg.type) \(arg.role.rawValue) \(quoted(arg.name))"
            if let rule = arg.initRule { text += " init=\(rule)" }
            return text
        }.joined(separator: ", ")
        out += ")"
        if let arena = function.arenaBytes { out += " arena \(arena)" }
        out += " {\n"
        for node in function.nodes { out += "  " + print(node) + "\n" }
        if !function.outputs.isEmpty {
            out += "  return " + function.outputs.map { "%\($0.value) as \(quoted($0.name))" }.joined(separator: ", ") + "\n"
        }
        for update in function.updates { out += "  update %\(update.target) = %\(update.value)\n" }
        return out + "}\n"
    }

    public static func print(_ node: Node) -> String {
        var out = "%\(node.id) = \(node.op)(" + node.operands.map { "%\($0)" }.joined(separator: ", ") + ")"
        if !node.attrs.isEmpty {
            out += " {" + node.attrs.sortedKeys.map { "\($0)=\(node.attrs[$0]!)" }.joined(separator: ", ") + "}"
        }
        out += " : \(node.type)"
        if let offset = node.arenaOffset { out += " @\(offset)" }
        if let target = node.inPlaceOf { out += " @%\(target)" }
        if let scratch = node.scratchOffset { out += " scratch @\(scratch)" }
        if let spare = node.spare { out += " spare @\(spare.lowerBound) size \(spare.count)" }
        if let loc = node.loc { out += " loc(\(quoted(loc.file)):\(loc.line))" }
        return out
    }
}
