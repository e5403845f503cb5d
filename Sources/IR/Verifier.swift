/// Structural and type checks, run after every pass. Each error names the
/// function, the node (printed), its operand types and where it came from.
public enum Verifier {
    /// `writtenAt` (from `Parser.parseLocated`): where each node of each
    /// function was written; errors then name that line instead of the
    /// node's `loc` (which stays visible in the printed node).
    public static func verify(_ module: Module, writtenAt: [[SourceLoc]]? = nil) throws {
        var names = Set<String>()
        for function in module.functions {
            guard names.insert(function.name).inserted else { throw IRError("function @\(function.name) is defined twice") }
        }
        try forEachFunction(module) { index, function in
            try verify(function, writtenAt: writtenAt.flatMap { index < $0.count ? $0[index] : nil })
        }
    }

    /// Every function's arena placement (`verifyPlacement`).
    public static func verifyPlacement(_ module: Module) throws {
        try forEachFunction(module) { _, function in try verifyPlacement(function) }
    }

    /// Runs `check` on each function, on all cores (the checks are
    /// independent, and one at a time they took about a quarter of
    /// TransUNet's passes), and throws the error of the first function in
    /// the module's order that has one.
    static func forEachFunction(_ module: Module, _ check: (Int, Function) throws -> Void) throws {
        try concurrentPerformThrowing(iterations: module.functions.count) { try check($0, module.functions[$0]) }
    }

    public static func verify(_ function: Function, writtenAt: [SourceLoc]? = nil) throws {
        func fail(_ message: String, _ node: Node? = nil) -> IRError {
            var text = "in @\(function.name): \(message)"
            if let node { text += "\n  in: \(Printer.print(node))" }
            let written = node.flatMap { node in
                function.nodes.firstIndex(of: node).flatMap { index in writtenAt.flatMap { index < $0.count ? $0[index] : nil } }
            }
            return IRError(text, loc: written ?? node?.loc)
        }
        var types: [ValueID: TensorType] = [:]
        var argNames = Set<String>()
        for arg in function.args {
            guard types[arg.id] == nil else { throw fail("value %\(arg.id) is defined twice") }
            guard arg.type.checkedByteSize != nil else { throw fail("argument \"\(arg.name)\" \(arg.type) is too large (its byte size overflows)") }
            guard argNames.insert(arg.name).inserted else { throw fail("argument name \"\(arg.name)\" is used twice") }
            types[arg.id] = arg.type
        }
        for node in function.nodes {
            guard types[node.id] == nil else { throw fail("value %\(node.id) is defined twice", node) }
            guard let spec = OpRegistry.spec(node.op) else { throw fail("unknown op '\(node.op)'", node) }
            var operandTypes: [TensorType] = []
            for operand in node.operands {
                guard let type = types[operand] else {
                    throw fail("operand %\(operand) is used before it is defined", node)
                }
                operandTypes.append(type)
            }
            let expected: TensorType
            do {
                expected = try spec.checkedType(operands: operandTypes, attrs: node.attrs)
            } catch let error as IRError {
                let operandText = operandTypes.map(\.description).joined(separator: ", ")
                throw fail("\(node.op)(\(operandText)): \(error.message)", node)
            }
            guard expected == node.type else {
                let operandText = operandTypes.map(\.description).joined(separator: ", ")
                throw fail("\(node.op)(\(operandText)) produces \(expected) but the node is typed \(node.type)", node)
            }
            guard expected.checkedByteSize != nil else {
                throw fail("\(node.op) produces \(expected), which is too large (its byte size overflows)", node)
            }
            types[node.id] = node.type
        }
        for output in function.outputs where types[output.value] == nil {
            throw fail("output \"\(output.name)\" refers to undefined %\(output.value)")
        }
        var targets = Set<ValueID>()
        for update in function.updates {
            guard let arg = function.args.first(where: { $0.id == update.target }) else {
                throw fail("update target %\(update.target) is not an argument")
            }
            guard arg.role == .param || arg.role == .state else {
                throw fail("update target %\(update.target) \"\(arg.name)\" has role \(arg.role.rawValue); only param and state arguments can be updated")
            }
            guard targets.insert(update.target).inserted else { throw fail("\"\(arg.name)\" is updated twice") }
            guard let type = types[update.value] else { throw fail("update of \"\(arg.name)\" uses undefined %\(update.value)") }
            guard type == arg.type else { throw fail("update of \"\(arg.name)\" (\(arg.type)) with a \(type) value") }
        }
        if let problem = LoopGroups.problem(function) { throw fail(problem) }
        if let problem = BatchMomentsOps.problem(function) { throw fail(problem) }
        // Placement: an update written in place must be one nothing can tell apart.
        let inPlace = function.nodes.filter { $0.inPlaceOf != nil }
        if !inPlace.isEmpty {
            let analysis = InPlaceAnalysis(function)
            for node in inPlace {
                guard node.arenaOffset == nil else { throw fail("a node is placed both in the arena and in place of %\(node.inPlaceOf!)", node) }
                if let problem = analysis.problem(placing: node, over: node.inPlaceOf!) {
                    throw fail("cannot compute in place of %\(node.inPlaceOf!): \(problem)", node)
                }
            }
        }
    }

    /// Arena placement (plan-memory's offsets): no two buffers live at once
    /// share a byte, aliases sit on their storage, offsets are aligned and
    /// inside the arena (ArenaCheck). Passes before plan-memory do not keep
    /// offsets, so the pipeline checks this after plan-memory only.
    public static func verifyPlacement(_ function: Function) throws {
        if let problem = ArenaCheck(function).failures.first { throw IRError("arena placement: \(problem)") }
    }
}
