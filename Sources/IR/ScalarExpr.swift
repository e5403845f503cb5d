import Foundation

/// The per-element computation of an elementwise op: both the reference
/// interpreter and both code generators render this one description, so an
/// elementwise op's semantics live in exactly one place. Fused elementwise
/// chains are just larger expressions.
public indirect enum ScalarExpr: Hashable, CustomStringConvertible, Sendable {
    case input(Int)
    case const(Double)
    case unary(UnaryFn, ScalarExpr)
    case binary(BinaryFn, ScalarExpr, ScalarExpr)
    /// `cond > 0 ? a : b`
    case select(ScalarExpr, ScalarExpr, ScalarExpr)

    public enum UnaryFn: String, CaseIterable, Sendable {
        case neg, exp, log, sqrt, rsqrt, tanh, erf, abs, sigmoid, recip
    }

    public enum BinaryFn: String, CaseIterable, Sendable {
        case add, sub, mul, div, max, min, pow
        /// Comparisons give 1 or 0.
        case gt, ge, eq
    }

    public var description: String {
        switch self {
        case .input(let i): return "in\(i)"
        case .const(let v): return Attr.float(v).description
        case .unary(let fn, let a): return "\(fn.rawValue)(\(a))"
        case .binary(let fn, let a, let b): return "\(fn.rawValue)(\(a), \(b))"
        case .select(let c, let a, let b): return "select(\(c), \(a), \(b))"
        }
    }

    /// Evaluate in double precision.
    public func evaluate(_ inputs: [Double]) -> Double {
        switch self {
        case .input(let i): return inputs[i]
        case .const(let v): return v
        case .unary(let fn, let a):
            let x = a.evaluate(inputs)
            switch fn {
            case .neg: return -x
            case .exp: return Foundation.exp(x)
            case .log: return Foundation.log(x)
            case .sqrt: return x.squareRoot()
            case .rsqrt: return 1 / x.squareRoot()
            case .tanh: return Foundation.tanh(x)
            case .erf: return Foundation.erf(x)
            case .abs: return Swift.abs(x)
            case .sigmoid: return 1 / (1 + Foundation.exp(-x))
            case .recip: return 1 / x
            }
        case .binary(let fn, let a, let b):
            let x = a.evaluate(inputs), y = b.evaluate(inputs)
            switch fn {
            case .add: return x + y
            case .sub: return x - y
            case .mul: return x * y
            case .div: return x / y
            // As the generated code computes them (C's fmaxf, fminf): a NaN operand yields the other.
            case .max: return x.isNaN ? y : y.isNaN ? x : Swift.max(x, y)
            case .min: return x.isNaN ? y : y.isNaN ? x : Swift.min(x, y)
            case .pow: return Foundation.pow(x, y)
            case .gt: return x > y ? 1 : 0
            case .ge: return x >= y ? 1 : 0
            case .eq: return x == y ? 1 : 0
            }
        case .select(let c, let a, let b):
            return c.evaluate(inputs) > 0 ? a.evaluate(inputs) : b.evaluate(inputs)
        }
    }

    /// Replace `input(i)` by `replacements[i]` (used to fuse chains).
    public func substituting(_ replacements: [ScalarExpr]) -> ScalarExpr {
        switch self {
        case .input(let i): return replacements[i]
        case .const: return self
        case .unary(let fn, let a): return .unary(fn, a.substituting(replacements))
        case .binary(let fn, let a, let b):
            return .binary(fn, a.substituting(replacements), b.substituting(replacements))
        case .select(let c, let a, let b):
            return .select(c.substituting(replacements), a.substituting(replacements), b.substituting(replacements))
        }
    }

    /// A rough cost per element, in simple operations: 1 for each add, mul,
    /// comparison or select, 4 for a division or square root, 20 for a
    /// transcendental function (exp, log, tanh, erf, sigmoid, pow).
    public var arithmeticCost: Int {
        switch self {
        case .input, .const: return 0
        case .unary(let fn, let a):
            let own: Int
            switch fn {
            case .neg, .abs: own = 1
            case .sqrt, .rsqrt, .recip: own = 4
            case .exp, .log, .tanh, .erf, .sigmoid: own = 20
            }
            return own + a.arithmeticCost
        case .binary(let fn, let a, let b):
            let own: Int
            switch fn {
            case .add, .sub, .mul, .max, .min, .gt, .ge, .eq: own = 1
            case .div: own = 4
            case .pow: own = 20
            }
            return own + a.arithmeticCost + b.arithmeticCost
        case .select(let c, let a, let b): return 1 + c.arithmeticCost + a.arithmeticCost + b.arithmeticCost
        }
    }

    /// The expression with every input(i) renumbered to input(f(i)).
    public func mappingInputs(_ f: (Int) -> Int) -> ScalarExpr {
        switch self {
        case .input(let i): return .input(f(i))
        case .const: return self
        case .unary(let fn, let a): return .unary(fn, a.mappingInputs(f))
        case .binary(let fn, let a, let b): return .binary(fn, a.mappingInputs(f), b.mappingInputs(f))
        case .select(let c, let a, let b): return .select(c.mappingInputs(f), a.mappingInputs(f), b.mappingInputs(f))
        }
    }

    /// How many times `input(index)` occurs in the expression.
    public func occurrences(ofInput index: Int) -> Int {
        switch self {
        case .input(let i): return i == index ? 1 : 0
        case .const: return 0
        case .unary(_, let a): return a.occurrences(ofInput: index)
        case .binary(_, let a, let b): return a.occurrences(ofInput: index) + b.occurrences(ofInput: index)
        case .select(let c, let a, let b):
            return c.occurrences(ofInput: index) + a.occurrences(ofInput: index) + b.occurrences(ofInput: index)
        }
    }

    /// Number of inputs referenced (max index + 1).
    public var inputCount: Int {
        switch self {
        case .input(let i): return i + 1
        case .const: return 0
        case .unary(_, let a): return a.inputCount
        case .binary(_, let a, let b): return max(a.inputCount, b.inputCount)
        case .select(let c, let a, let b): return max(c.inputCount, a.inputCount, b.inputCount)
        }
    }

    /// Parse the printed form (`add(in0, mul(in1, 2.0))`).
    public static func parse(_ text: String) throws -> ScalarExpr {
        var scanner = ExprScanner(Array(text.utf8))
        let expr = try scanner.expression()
        scanner.skipSpaces()
        guard scanner.atEnd else { throw IRError("unexpected text after expression in \"\(text)\"") }
        return expr
    }
}

private struct ExprScanner {
    let bytes: [UInt8]
    var pos = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool { pos >= bytes.count }

    mutating func skipSpaces() {
        while pos < bytes.count, bytes[pos] == UInt8(ascii: " ") { pos += 1 }
    }

    mutating func expect(_ ch: Character) throws {
        skipSpaces()
        guard pos < bytes.count, bytes[pos] == ch.asciiValue! else {
            throw IRError("expected '\(ch)' in scalar expression at column \(pos + 1)")
        }
        pos += 1
    }

    mutating func word() -> String {
        skipSpaces()
        let start = pos
        while pos < bytes.count, bytes[pos] != UInt8(ascii: "("), bytes[pos] != UInt8(ascii: ","),
              bytes[pos] != UInt8(ascii: ")"), bytes[pos] != UInt8(ascii: " ") { pos += 1 }
        return String(decoding: bytes[start..<pos], as: UTF8.self)
    }

    mutating func expression() throws -> ScalarExpr {
        let name = word()
        if name.hasPrefix("in"), let index = Int(name.dropFirst(2)) { return .input(index) }
        if let value = Double(name) { return .const(value) }
        try expect("(")
        var args: [ScalarExpr] = [try expression()]
        skipSpaces()
        while pos < bytes.count, bytes[pos] == UInt8(ascii: ",") {
            pos += 1
            args.append(try expression())
            skipSpaces()
        }
        try expect(")")
        if let fn = ScalarExpr.UnaryFn(rawValue: name), args.count == 1 { return .unary(fn, args[0]) }
        if let fn = ScalarExpr.BinaryFn(rawValue: name), args.count == 2 { return .binary(fn, args[0], args[1]) }
        if name == "select", args.count == 3 { return .select(args[0], args[1], args[2]) }
        throw IRError("unknown scalar function '\(name)' with \(args.count) arguments")
    }
}
