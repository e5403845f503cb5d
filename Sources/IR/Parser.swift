/// Parses the textual form printed by `Printer`. Errors name the line and
/// column and what was expected.
public struct Parser {
    private let text: [UInt8]
    private var pos = 0
    private let sourceName: String
    /// Per function, per node: the line that wrote it.
    private var written: [[SourceLoc]] = []
    /// Newlines counted so far (the text before `lineCursor.pos` has
    /// `lineCursor.line - 1`), so locating every node stays linear.
    private var lineCursor = (pos: 0, line: 1)

    public static func parse(_ source: String, name: String = "<ir>") throws -> Module {
        var parser = Parser(text: Array(source.utf8), sourceName: name)
        return try parser.module()
    }

    /// The module and, per function and node, where the text wrote the node:
    /// diagnostics about a hand-written file can then name its own lines
    /// rather than the model source recorded in `loc(...)`.
    public static func parseLocated(_ source: String, name: String) throws -> (module: Module, written: [[SourceLoc]]) {
        var parser = Parser(text: Array(source.utf8), sourceName: name)
        let module = try parser.module()
        return (module, parser.written)
    }

    private init(text: [UInt8], sourceName: String) {
        self.text = text
        self.sourceName = sourceName
    }

    // MARK: lexing

    private var lineAndColumn: (Int, Int) {
        var line = 1, column = 1
        for byte in text[..<min(pos, text.count)] {
            if byte == UInt8(ascii: "\n") { line += 1; column = 1 } else { column += 1 }
        }
        return (line, column)
    }

    private mutating func currentLine() -> Int {
        while lineCursor.pos < min(pos, text.count) {
            if text[lineCursor.pos] == UInt8(ascii: "\n") { lineCursor.line += 1 }
            lineCursor.pos += 1
        }
        return lineCursor.line
    }

    private func error(_ message: String) -> IRError {
        let (line, column) = lineAndColumn
        return IRError("\(sourceName):\(line):\(column): \(message)")
    }

    private mutating func skipSpace() {
        while pos < text.count {
            let c = text[pos]
            if c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") || c == UInt8(ascii: "\n") || c == UInt8(ascii: "\r") {
                pos += 1
            } else if c == UInt8(ascii: "/"), pos + 1 < text.count, text[pos + 1] == UInt8(ascii: "/") {
                while pos < text.count, text[pos] != UInt8(ascii: "\n") { pos += 1 }
            } else {
                break
            }
        }
    }

    private mutating func peek(_ s: String) -> Bool {
        skipSpace()
        let bytes = Array(s.utf8)
        return pos + bytes.count <= text.count && Array(text[pos..<(pos + bytes.count)]) == bytes
    }

    private mutating func accept(_ s: String) -> Bool {
        if peek(s) {
            pos += s.utf8.count
            return true
        }
        return false
    }

    private mutating func expect(_ s: String) throws {
        guard accept(s) else { throw error("expected '\(s)'") }
    }

    private static func isWordByte(_ c: UInt8) -> Bool {
        (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 95 || c == 46 || c == 45 || c == 43
    }

    private mutating func word() throws -> String {
        skipSpace()
        let start = pos
        while pos < text.count, Parser.isWordByte(text[pos]) { pos += 1 }
        guard pos > start else { throw error("expected a name or number") }
        return String(decoding: text[start..<pos], as: UTF8.self)
    }

    private mutating func integer() throws -> Int {
        let w = try word()
        guard let value = Int(w) else { throw error("expected an integer, found '\(w)'") }
        return value
    }

    private mutating func string() throws -> String {
        try expect("\"")
        var bytes: [UInt8] = []
        while pos < text.count, text[pos] != UInt8(ascii: "\"") {
            if text[pos] == UInt8(ascii: "\\"), pos + 1 < text.count {
                pos += 1
                bytes.append(text[pos] == UInt8(ascii: "n") ? UInt8(ascii: "\n") : text[pos])
            } else {
                bytes.append(text[pos])
            }
            pos += 1
        }
        guard pos < text.count else { throw error("unterminated string") }
        pos += 1
        return String(decoding: bytes, as: UTF8.self)
    }

    private mutating func valueRef() throws -> ValueID {
        try expect("%")
        return try integer()
    }

    private mutating func type() throws -> TensorType {
        skipSpace()
        let start = pos
        let name = try wordUntilBracket()
        guard let dtype = DType(rawValue: name) else { throw error("unknown element type '\(name)'") }
        try expect("[")
        var shape: [Int] = []
        if !accept("]") {
            repeat { shape.append(try integer()) } while accept(",")
            try expect("]")
        }
        let type = TensorType(dtype, shape)
        if type.checkedByteSize == nil {
            pos = start  // point at the type, not past it
            throw error(shape.contains { $0 < 0 } ? "tensor \(type) has a negative dimension"
                        : "tensor \(type) is too large (its byte size overflows)")
        }
        return type
    }

    private mutating func wordUntilBracket() throws -> String {
        skipSpace()
        let start = pos
        while pos < text.count, text[pos] != UInt8(ascii: "["), Parser.isWordByte(text[pos]) { pos += 1 }
        guard pos > start else { throw error("expected a type") }
        return String(decoding: text[start..<pos], as: UTF8.self)
    }

    // MARK: grammar

    private mutating func module() throws -> Module {
        var functions: [Function] = []
        while true {
            skipSpace()
            if pos >= text.count { break }
            functions.append(try function())
        }
        return Module(functions: functions)
    }

    private mutating func function() throws -> Function {
        try expect("func")
        try expect("@")
        var function = Function(name: try word())
        written.append([])
        try expect("(")
        if !accept(")") {
            repeat {
                let id = try valueRef()
                try expect(":")
                let type = try type()
                let roleName = try word()
                guard let role = ArgRole(rawValue: roleName) else {
                    throw error("unknown argument role '\(roleName)' (input, param, frozen or state)")
                }
                let name = try string()
                var initRule: InitRule?
                if accept("init=") {
                    var ruleText = try word()
                    if accept("(") {
                        ruleText += "(" + (try word()) + ")"
                        try expect(")")
                    }
                    guard let rule = InitRule(text: ruleText) else { throw error("unknown init rule '\(ruleText)'") }
                    initRule = rule
                }
                function.args.append(Argument(id: id, type: type, role: role, name: name, initRule: initRule))
            } while accept(",")
            try expect(")")
        }
        if accept("arena") {
            let bytes = try integer()
            guard bytes >= 0 else { throw error("arena size \(bytes) is negative") }
            function.arenaBytes = bytes
        }
        try expect("{")
        while !accept("}") {
            if accept("return") {
                repeat {
                    let value = try valueRef()
                    try expect("as")
                    function.outputs.append(Output(value: value, name: try string()))
                } while accept(",")
            } else if accept("update") {
                let target = try valueRef()
                try expect("=")
                function.updates.append(Update(target: target, value: try valueRef()))
            } else {
                skipSpace()
                written[written.count - 1].append(SourceLoc(file: sourceName, line: currentLine()))
                function.nodes.append(try node())
            }
        }
        return function
    }

    private mutating func node() throws -> Node {
        let id = try valueRef()
        try expect("=")
        let op = try word()
        guard OpRegistry.spec(op) != nil else { throw error("unknown op '\(op)'") }
        try expect("(")
        var operands: [ValueID] = []
        if !accept(")") {
            repeat { operands.append(try valueRef()) } while accept(",")
            try expect(")")
        }
        var attrs = Attributes()
        if accept("{") {
            repeat {
                let key = try word()
                try expect("=")
                attrs[key] = try attribute()
            } while accept(",")
            try expect("}")
        }
        try expect(":")
        var node = Node(id: id, op: op, operands: operands, attrs: attrs, type: try type())
        if accept("@") {
            if peek("%") { node.inPlaceOf = try valueRef() } else { node.arenaOffset = try integer() }
        }
        if accept("scratch") {
            try expect("@")
            node.scratchOffset = try integer()
        }
        if accept("spare") {
            try expect("@")
            let offset = try integer()
            try expect("size")
            let bytes = try integer()
            guard offset >= 0, bytes > 0 else { throw error("a spare region needs an offset ≥ 0 and bytes > 0") }
            node.spare = offset ..< offset + bytes
        }
        if accept("loc(") {
            let file = try string()
            try expect(":")
            node.loc = SourceLoc(file: file, line: try integer())
            try expect(")")
        }
        return node
    }

    private mutating func attribute() throws -> Attr {
        if peek("\"") { return .string(try string()) }
        if accept("[") {
            var values: [Int] = []
            if !accept("]") {
                repeat { values.append(try integer()) } while accept(",")
                try expect("]")
            }
            return .ints(values)
        }
        skipSpace()
        let start = pos
        let w = try word()
        if w == "true" { return .bool(true) }
        if w == "false" { return .bool(false) }
        if let i = Int(w) { return .int(i) }
        if let d = Double(w) { return .float(d) }
        if w.hasPrefix("in") || peek("(") { return .expr(try scalarExpression(from: start)) }
        throw error("cannot read attribute value '\(w)'")
    }

    /// A scalar expression attribute: the name just read and, if any, its
    /// balanced parentheses (commas inside them do not end the attribute).
    private mutating func scalarExpression(from start: Int) throws -> ScalarExpr {
        if peek("(") {
            var depth = 0
            repeat {
                guard pos < text.count else { throw error("unbalanced parentheses in a scalar expression") }
                if text[pos] == UInt8(ascii: "(") { depth += 1 }
                if text[pos] == UInt8(ascii: ")") { depth -= 1 }
                pos += 1
            } while depth > 0
        }
        let source = String(decoding: text[start..<pos], as: UTF8.self)
        do { return try ScalarExpr.parse(source) } catch let e as IRError { throw error(e.message) }
    }
}
