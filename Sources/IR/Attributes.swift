/// An attribute value. Printed as `3`, `0.5`, `[1,2]`, `true`, `"text"`, or a
/// scalar expression `max(add(in0, in1), 0.0)` (fused nodes' computations,
/// kept typed rather than as text).
public enum Attr: Hashable, CustomStringConvertible, Sendable {
    case int(Int)
    case float(Double)
    case ints([Int])
    case bool(Bool)
    case string(String)
    case expr(ScalarExpr)

    public var description: String {
        switch self {
        case .int(let v): return String(v)
        case .float(let v):
            // Always print a '.', 'e', 'inf' or 'nan' so the parser reads a float back.
            let text = "\(v)"
            return text.contains(where: { ".enia".contains($0) }) ? text : text + ".0"
        case .ints(let v): return "[\(v.map(String.init).joined(separator: ","))]"
        case .bool(let v): return v ? "true" : "false"
        case .string(let v): return quoted(v)
        case .expr(let v): return v.description
        }
    }
}

/// Quote a string for the textual IR: backslash and quote escaped.
func quoted(_ text: String) -> String {
    var out = "\""
    for ch in text {
        switch ch {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        default: out.append(ch)
        }
    }
    return out + "\""
}

/// A node's attributes, printed in key order.
public struct Attributes: Hashable, ExpressibleByDictionaryLiteral, Sendable {
    public var values: [String: Attr]

    public init(_ values: [String: Attr] = [:]) { self.values = values }
    public init(dictionaryLiteral elements: (String, Attr)...) {
        values = Dictionary(elements, uniquingKeysWith: { $1 })
    }

    public subscript(key: String) -> Attr? {
        get { values[key] }
        set { values[key] = newValue }
    }

    public var isEmpty: Bool { values.isEmpty }

    /// These attributes with `other`'s added (other's win).
    public func merging(_ other: Attributes) -> Attributes {
        Attributes(values.merging(other.values) { $1 })
    }
    public var sortedKeys: [String] { values.keys.sorted() }

    public func int(_ key: String) throws -> Int {
        guard case .int(let v)? = values[key] else { throw missing(key, "an integer") }
        return v
    }

    public func expr(_ key: String) throws -> ScalarExpr {
        guard case .expr(let v)? = values[key] else { throw missing(key, "a scalar expression") }
        return v
    }

    public func float(_ key: String) throws -> Double {
        switch values[key] {
        case .float(let v)?: return v
        case .int(let v)?: return Double(v)
        default: throw missing(key, "a number")
        }
    }

    public func ints(_ key: String) throws -> [Int] {
        guard case .ints(let v)? = values[key] else { throw missing(key, "a list of integers") }
        return v
    }

    public func bool(_ key: String) throws -> Bool {
        guard case .bool(let v)? = values[key] else { throw missing(key, "true or false") }
        return v
    }

    public func string(_ key: String) throws -> String {
        guard case .string(let v)? = values[key] else { throw missing(key, "a string") }
        return v
    }

    private func missing(_ key: String, _ kind: String) -> IRError {
        IRError("attribute '\(key)' must be \(kind) (have: \(values[key].map { "\($0)" } ?? "nothing"))")
    }
}
