import Foundation

// Tensor bytes are stored little-endian and copied to and from Swift arrays
// as they are, which is only correct on a little-endian host.
#if _endian(big)
#error("Safetensors.swift assumes a little-endian host")
#endif

// MARK: - Errors

/// A safetensors file that cannot be read, or a tensor that cannot be stored.
///
/// The description names the file and the tensor (where known), says what is
/// wrong and what to do about it.
public struct SafetensorsError: Error, CustomStringConvertible {
    /// The file (its path, or the name given to `init(serialized:name:)`), if any.
    public var file: String?
    /// The tensor concerned, if any.
    public var tensor: String?
    /// What is wrong.
    public let problem: String
    /// What the user can do about it.
    public let remedy: String

    public var description: String {
        var text = ""
        if let file { text += "\(file): " }
        if let tensor { text += "tensor \"\(tensor)\": " }
        return text + problem + ". " + remedy
    }
}

/// The remedy for a file whose content is damaged or was not written by a
/// safetensors writer.
private let corruptFileRemedy =
    "The file is damaged or is not a safetensors file; write it again (e.g. re-save the checkpoint) or restore it from a copy."

// MARK: - Element types

/// The element types a safetensors tensor may hold, spelled as in the header.
public enum SafetensorsDType: String, CaseIterable, Sendable {
    case bool = "BOOL"
    case u8 = "U8"
    case i8 = "I8"
    case u16 = "U16"
    case i16 = "I16"
    case f16 = "F16"
    case bf16 = "BF16"
    case u32 = "U32"
    case i32 = "I32"
    case f32 = "F32"
    case u64 = "U64"
    case i64 = "I64"
    case f64 = "F64"

    /// The size of one element in bytes.
    public var byteSize: Int {
        switch self {
        case .bool, .u8, .i8: return 1
        case .u16, .i16, .f16, .bf16: return 2
        case .u32, .i32, .f32: return 4
        case .u64, .i64, .f64: return 8
        }
    }
}

/// A Swift type whose in-memory representation is exactly one safetensors
/// element type, so tensors can be built from and read into `[Self]`.
public protocol SafetensorsElement: BitwiseCopyable {
    /// The safetensors element type with the same bytes as `Self`.
    static var safetensorsDType: SafetensorsDType { get }
}

extension Float: SafetensorsElement {
    public static var safetensorsDType: SafetensorsDType { .f32 }
}

extension Double: SafetensorsElement {
    public static var safetensorsDType: SafetensorsDType { .f64 }
}

extension Int32: SafetensorsElement {
    public static var safetensorsDType: SafetensorsDType { .i32 }
}

extension Int64: SafetensorsElement {
    public static var safetensorsDType: SafetensorsDType { .i64 }
}

extension UInt8: SafetensorsElement {
    public static var safetensorsDType: SafetensorsDType { .u8 }
}

// MARK: - Tensor

/// One tensor: its element type, its shape and its raw little-endian bytes
/// (row-major). The byte count always equals the element count times the
/// element size.
public struct SafetensorsTensor: Equatable, Sendable {
    public let dtype: SafetensorsDType
    /// The dimensions; `[]` is a scalar (one element).
    public let shape: [Int]
    /// The raw element bytes.
    public let data: Data

    /// The number of elements (the product of `shape`).
    public var elementCount: Int { data.count / dtype.byteSize }

    /// Creates a tensor from raw bytes, checking that they match the shape.
    public init(dtype: SafetensorsDType, shape: [Int], data: Data) throws {
        let byteCount = try Self.byteCount(dtype: dtype, shape: shape)
        guard byteCount == data.count else {
            throw SafetensorsError(
                problem: "shape \(shape) of \(dtype.rawValue) needs \(byteCount) bytes but \(data.count) were given",
                remedy: "Pass a shape whose element count matches the data.")
        }
        self.dtype = dtype
        self.shape = shape
        self.data = data
    }

    /// Creates a tensor holding `values` (row-major) with the given shape.
    public init<T: SafetensorsElement>(_ values: [T], shape: [Int]) throws {
        try self.init(dtype: T.safetensorsDType, shape: shape, data: values.withUnsafeBytes { Data($0) })
    }

    /// The elements as a Swift array; the tensor's dtype must be `T`'s.
    public func values<T: SafetensorsElement>(as type: T.Type = T.self) throws -> [T] {
        guard dtype == T.safetensorsDType else {
            throw SafetensorsError(
                problem: "holds \(dtype.rawValue) elements, not \(T.safetensorsDType.rawValue)",
                remedy: "Read it as \(dtype.rawValue), or convert the file to \(T.safetensorsDType.rawValue).")
        }
        let count = elementCount
        return data.withUnsafeBytes { raw in
            [T](unsafeUninitializedCapacity: count) { buffer, initialized in
                UnsafeMutableRawBufferPointer(buffer).copyMemory(from: raw)
                initialized = count
            }
        }
    }

    /// The number of bytes a tensor of this dtype and shape occupies, or an
    /// error if a dimension is negative or the size overflows.
    static func byteCount(dtype: SafetensorsDType, shape: [Int]) throws -> Int {
        var count = dtype.byteSize
        for dimension in shape {
            guard dimension >= 0 else {
                throw SafetensorsError(
                    problem: "shape \(shape) has a negative dimension",
                    remedy: "Dimensions must be zero or positive.")
            }
            let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
            guard !overflow else {
                throw SafetensorsError(
                    problem: "shape \(shape) of \(dtype.rawValue) is too large to address",
                    remedy: "Use a smaller tensor.")
            }
            count = product
        }
        return count
    }
}

// MARK: - File

/// The content of a safetensors file: named tensors plus optional string
/// metadata.
///
/// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
/// (`{"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, …,
/// "__metadata__": {"key": "value"}}`), then the data buffer that the offsets
/// (begin, end exclusive) index into.
///
/// Reading validates everything — a damaged or hostile file produces a
/// `SafetensorsError`, never a crash. Writing is deterministic: tensors are
/// sorted by name, stored contiguously, and the header is space-padded to a
/// multiple of 8 bytes.
public struct SafetensorsFile: Sendable {
    /// The header key that holds the metadata; no tensor may have this name.
    public static let metadataKey = "__metadata__"
    /// The largest header accepted when reading, in bytes.
    public static let maxHeaderLength = 100_000_000

    /// The tensors by name.
    public private(set) var tensors: [String: SafetensorsTensor] = [:]
    /// Free-form string metadata stored in the header.
    public var metadata: [String: String]
    /// The file this content was read from (used in error messages), if any.
    public let source: String?

    /// The tensor names, sorted.
    public var names: [String] { tensors.keys.sorted() }

    /// An empty file with the given metadata.
    public init(metadata: [String: String] = [:]) {
        self.metadata = metadata
        self.source = nil
    }

    /// Reads and validates the safetensors file at `url`.
    public init(contentsOf url: URL) throws {
        let bytes: Data
        do {
            bytes = try Data(contentsOf: url)
        } catch {
            throw SafetensorsError(
                file: url.path,
                problem: "cannot read the file (\(error.localizedDescription))",
                remedy: "Check that the path is right and that the file is readable.")
        }
        try self.init(serialized: bytes, name: url.path)
    }

    /// Parses and validates safetensors bytes; `name` identifies them in errors.
    public init(serialized bytes: Data, name: String) throws {
        source = name
        metadata = [:]
        do {
            try parse(Data(bytes))
        } catch var error as SafetensorsError {
            error.file = name
            throw error
        }
    }

    /// Adds or replaces the tensor `name`.
    public mutating func set(_ name: String, _ tensor: SafetensorsTensor) throws {
        guard name != Self.metadataKey else {
            throw error(
                tensor: name, problem: "this name is reserved for the file's metadata",
                remedy: "Choose another tensor name.")
        }
        tensors[name] = tensor
    }

    /// Adds or replaces the tensor `name` with `values` (row-major) of the
    /// given shape, e.g. `[Float]`, `[Int32]` or `[Int64]`.
    public mutating func set<T: SafetensorsElement>(_ name: String, values: [T], shape: [Int]) throws {
        let tensor: SafetensorsTensor
        do {
            tensor = try SafetensorsTensor(values, shape: shape)
        } catch var error as SafetensorsError {
            error.tensor = name
            throw error
        }
        try set(name, tensor)
    }

    /// The tensor `name`, or an error listing the tensors that do exist.
    public func tensor(_ name: String) throws -> SafetensorsTensor {
        guard let tensor = tensors[name] else { throw Self.noSuchTensor(name, in: source, holding: names) }
        return tensor
    }

    /// The error for a tensor a file does not hold, listing those it does.
    static func noSuchTensor(_ name: String, in file: String?, holding available: [String]) -> SafetensorsError {
        let listed = available.prefix(20).joined(separator: ", ")
            + (available.count > 20 ? ", … (\(available.count) in all)" : "")
        return SafetensorsError(file: file, tensor: name, problem: "no such tensor",
                                remedy: available.isEmpty ? "The file holds no tensors." : "The file holds: \(listed).")
    }

    /// The elements of tensor `name` as `T`; its dtype must be `T`'s.
    public func values<T: SafetensorsElement>(_ name: String, as type: T.Type = T.self) throws -> [T] {
        do {
            return try tensor(name).values(as: type)
        } catch var error as SafetensorsError {
            error.file = source
            error.tensor = name
            throw error
        }
    }

    /// The elements of the F32 tensor `name`.
    public func floats(_ name: String) throws -> [Float] {
        try values(name, as: Float.self)
    }

    /// The file's bytes: header length, padded JSON header, contiguous data.
    public func serialized() -> Data {
        let sorted = sortedTensors
        var bytes = Data(header(of: sorted))
        for (_, tensor) in sorted { bytes.append(tensor.data) }
        return bytes
    }

    /// Writes the file atomically (see `writeAtomically(to:_:)`), the header
    /// and then each tensor's bytes as they are: the file's bytes are never
    /// gathered in memory (a TransUNet checkpoint's are 1.26 GB).
    public func write(to url: URL) throws {
        let sorted = sortedTensors
        try writeAtomically(to: url) { file in
            try file.write(header(of: sorted))
            for (_, tensor) in sorted { try file.write(tensor.data) }
        }
    }

    private var sortedTensors: [(key: String, value: SafetensorsTensor)] { tensors.sorted { $0.key < $1.key } }

    /// The header length (8 bytes, little-endian) and the JSON header,
    /// space-padded to a multiple of 8, of `sorted`'s tensors in that order.
    private func header(of sorted: [(key: String, value: SafetensorsTensor)]) -> [UInt8] {
        var entries: [String] = []
        if !metadata.isEmpty {
            let pairs = metadata.sorted { $0.key < $1.key }
                .map { jsonString($0.key) + ":" + jsonString($0.value) }
            entries.append(jsonString(Self.metadataKey) + ":{" + pairs.joined(separator: ",") + "}")
        }
        var offset = 0
        for (name, tensor) in sorted {
            let shape = tensor.shape.map(String.init).joined(separator: ",")
            let end = offset + tensor.data.count
            entries.append(
                jsonString(name) + ":{\"dtype\":\"\(tensor.dtype.rawValue)\",\"shape\":[\(shape)],"
                    + "\"data_offsets\":[\(offset),\(end)]}")
            offset = end
        }
        var json = Array(("{" + entries.joined(separator: ",") + "}").utf8)
        json += repeatElement(UInt8(ascii: " "), count: (8 - json.count % 8) % 8)
        return withUnsafeBytes(of: UInt64(json.count).littleEndian, Array.init) + json
    }

    private func error(tensor: String?, problem: String, remedy: String) -> SafetensorsError {
        SafetensorsError(file: source, tensor: tensor, problem: problem, remedy: remedy)
    }
}

// MARK: - Reading

extension SafetensorsFile {
    /// One tensor entry of the header, already checked on its own.
    struct Entry {
        let name: String
        let dtype: SafetensorsDType
        let shape: [Int]
        let begin: Int
        let end: Int
    }

    /// Fills `tensors` and `metadata` from `bytes` (indexed from 0); errors
    /// carry no file name, the caller adds it.
    private mutating func parse(_ bytes: Data) throws {
        let prefix = [UInt8](bytes.prefix(8))
        let headerEnd = try Self.headerEnd(lengthField: prefix, fileLength: bytes.count)
        let parsed = try Self.parseHeader([UInt8](bytes[8..<headerEnd]), dataLength: bytes.count - headerEnd)
        metadata = parsed.metadata
        for entry in parsed.entries {
            let data = bytes.subdata(in: (headerEnd + entry.begin)..<(headerEnd + entry.end))
            tensors[entry.name] = try SafetensorsTensor(dtype: entry.dtype, shape: entry.shape, data: data)
        }
    }

    /// Where the header of a file of `fileLength` bytes ends, from its first
    /// 8 bytes (the header's length, little-endian).
    static func headerEnd(lengthField bytes: [UInt8], fileLength: Int) throws -> Int {
        guard bytes.count >= 8 else {
            throw SafetensorsError(
                problem: "the file is \(fileLength) bytes long, shorter than the 8-byte header length field",
                remedy: corruptFileRemedy)
        }
        let headerLength = (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[$1]) << (8 * UInt64($1)) }
        guard headerLength <= UInt64(Self.maxHeaderLength) else {
            throw SafetensorsError(
                problem: "the header length field says \(headerLength) bytes, more than the limit of \(Self.maxHeaderLength)",
                remedy: corruptFileRemedy)
        }
        let headerEnd = 8 + Int(headerLength)
        guard headerEnd <= fileLength else {
            throw SafetensorsError(
                problem: "the header length field says \(headerLength) bytes, but only \(fileLength - 8) bytes follow it (the file is truncated)",
                remedy: corruptFileRemedy)
        }
        return headerEnd
    }

    /// The metadata and tensor entries of `header` (the JSON after the
    /// length field), checked against a data buffer of `dataLength` bytes.
    static func parseHeader(_ header: [UInt8], dataLength: Int) throws -> (metadata: [String: String], entries: [Entry]) {
        guard String(validating: header, as: UTF8.self) != nil else {
            throw SafetensorsError(problem: "the header is not valid UTF-8", remedy: corruptFileRemedy)
        }

        let root: JSONValue
        do {
            var parser = JSONParser(bytes: header)
            root = try parser.parseDocument()
        } catch let error as JSONSyntaxError {
            throw SafetensorsError(
                problem: "the header is not valid JSON (\(error.message) at byte \(error.offset) of the header)",
                remedy: corruptFileRemedy)
        }
        guard case .object(let members) = root else {
            throw SafetensorsError(
                problem: "the header is a JSON \(root.kind), not an object",
                remedy: corruptFileRemedy)
        }

        var metadata: [String: String] = [:]
        var entries: [Entry] = []
        var seen = Set<String>()
        for (name, value) in members {
            guard seen.insert(name).inserted else {
                throw SafetensorsError(
                    tensor: name, problem: "the name appears more than once in the header",
                    remedy: corruptFileRemedy)
            }
            if name == Self.metadataKey {
                metadata = try Self.parseMetadata(value)
            } else {
                let entry = try Self.parseEntry(name: name, value)
                guard entry.end <= dataLength else {
                    throw SafetensorsError(
                        tensor: name,
                        problem: "data_offsets [\(entry.begin), \(entry.end)] are out of range: the data buffer holds only \(dataLength) bytes",
                        remedy: corruptFileRemedy)
                }
                entries.append(entry)
            }
        }

        try Self.checkLayout(entries, dataLength: dataLength)
        return (metadata, entries)
    }

    /// The `__metadata__` object: a map from strings to strings.
    private static func parseMetadata(_ value: JSONValue) throws -> [String: String] {
        guard case .object(let members) = value else {
            throw SafetensorsError(
                problem: "\"\(metadataKey)\" is a JSON \(value.kind), not an object of strings",
                remedy: corruptFileRemedy)
        }
        var metadata: [String: String] = [:]
        for (key, value) in members {
            guard case .string(let text) = value else {
                throw SafetensorsError(
                    problem: "metadata value for key \"\(key)\" is a JSON \(value.kind), not a string",
                    remedy: "Metadata values must be strings; write the file again with string values.")
            }
            guard metadata.updateValue(text, forKey: key) == nil else {
                throw SafetensorsError(
                    problem: "metadata key \"\(key)\" appears more than once",
                    remedy: corruptFileRemedy)
            }
        }
        return metadata
    }

    /// One `{"dtype", "shape", "data_offsets"}` entry, checked on its own.
    private static func parseEntry(name: String, _ value: JSONValue) throws -> Entry {
        func failure(_ problem: String, _ remedy: String = corruptFileRemedy) -> SafetensorsError {
            SafetensorsError(tensor: name, problem: problem, remedy: remedy)
        }
        guard case .object(let members) = value else {
            throw failure("the header entry is a JSON \(value.kind), not an object with dtype, shape and data_offsets")
        }
        var fields: [String: JSONValue] = [:]
        for (key, value) in members {
            guard fields.updateValue(value, forKey: key) == nil else {
                throw failure("the header entry has the field \"\(key)\" more than once")
            }
        }
        func field(_ key: String) throws -> JSONValue {
            guard let value = fields[key] else {
                throw failure("the header entry has no \"\(key)\" field")
            }
            return value
        }

        guard case .string(let dtypeName) = try field("dtype") else {
            throw failure("\"dtype\" is not a string")
        }
        guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
            let known = SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", ")
            throw failure(
                "unknown dtype \"\(dtypeName)\"",
                "Supported dtypes are \(known); convert the tensor to one of them.")
        }
        guard let shape = try field("shape").naturalNumbers else {
            throw failure("\"shape\" is not an array of non-negative integers")
        }
        guard let offsets = try field("data_offsets").naturalNumbers, offsets.count == 2 else {
            throw failure("\"data_offsets\" is not an array of two non-negative integers")
        }
        let (begin, end) = (offsets[0], offsets[1])
        guard begin <= end else {
            throw failure("data_offsets [\(begin), \(end)] end before they begin")
        }
        let byteCount: Int
        do {
            byteCount = try SafetensorsTensor.byteCount(dtype: dtype, shape: shape)
        } catch let error as SafetensorsError {
            throw failure(error.problem)
        }
        guard byteCount == end - begin else {
            throw failure(
                "shape \(shape) of \(dtype.rawValue) needs \(byteCount) bytes, but data_offsets [\(begin), \(end)] span \(end - begin) bytes")
        }
        return Entry(name: name, dtype: dtype, shape: shape, begin: begin, end: end)
    }

    /// Checks that the entries tile the data buffer exactly: no overlaps,
    /// no gaps, no unused bytes at the end.
    private static func checkLayout(_ entries: [Entry], dataLength: Int) throws {
        let ordered = entries.sorted { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var covered = 0
        var previous: Entry?
        for entry in ordered {
            if entry.begin > covered {
                throw SafetensorsError(
                    tensor: entry.name,
                    problem: "data bytes \(covered)..<\(entry.begin) before this tensor belong to no tensor (a gap in data_offsets)",
                    remedy: corruptFileRemedy)
            }
            if entry.begin < covered, let previous {
                throw SafetensorsError(
                    tensor: entry.name,
                    problem: "data_offsets [\(entry.begin), \(entry.end)] overlap those of tensor \"\(previous.name)\" [\(previous.begin), \(previous.end)]",
                    remedy: corruptFileRemedy)
            }
            covered = entry.end
            previous = entry
        }
        guard covered == dataLength else {
            throw SafetensorsError(
                problem: "the last \(dataLength - covered) bytes of the data buffer belong to no tensor (a gap after the last tensor)",
                remedy: corruptFileRemedy)
        }
    }
}

/// `text` as a JSON string literal.
private func jsonString(_ text: String) -> String {
    var result = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": result += "\\\""
        case "\\": result += "\\\\"
        case "\n": result += "\\n"
        case "\r": result += "\\r"
        case "\t": result += "\\t"
        case _ where scalar.value < 0x20:
            result += "\\u00" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
        default: result.unicodeScalars.append(scalar)
        }
    }
    return result + "\""
}

// MARK: - A strict JSON parser

/// A parsed JSON value. Objects keep their members in order and with
/// duplicates, so the reader can reject duplicate names; numbers keep their
/// text, so large integers are never rounded.
private enum JSONValue {
    case object([(key: String, value: JSONValue)])
    case array([JSONValue])
    case string(String)
    case number(String)
    case bool(Bool)
    case null

    /// The kind of value, for error messages.
    var kind: String {
        switch self {
        case .object: return "object"
        case .array: return "array"
        case .string: return "string"
        case .number: return "number"
        case .bool: return "boolean"
        case .null: return "null"
        }
    }

    /// The value as an array of integers ≥ 0 that fit in `Int`, if it is one.
    var naturalNumbers: [Int]? {
        guard case .array(let elements) = self else { return nil }
        var numbers: [Int] = []
        for element in elements {
            guard case .number(let text) = element, let number = Int(text), number >= 0 else { return nil }
            numbers.append(number)
        }
        return numbers
    }
}

private struct JSONSyntaxError: Error {
    let message: String
    let offset: Int
}

/// A recursive-descent parser for RFC 8259 JSON over UTF-8 bytes, with a
/// nesting limit so that hostile input cannot exhaust the stack.
private struct JSONParser {
    static let maxDepth = 64

    let bytes: [UInt8]
    var index = 0
    var depth = 0

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// Parses one value surrounded by optional whitespace.
    mutating func parseDocument() throws -> JSONValue {
        let value = try parseValue()
        skipWhitespace()
        guard index == bytes.count else { throw failure("unexpected text after the top-level value") }
        return value
    }

    private func failure(_ message: String) -> JSONSyntaxError {
        JSONSyntaxError(message: message, offset: index)
    }

    private var current: UInt8? { index < bytes.count ? bytes[index] : nil }

    private mutating func skipWhitespace() {
        while let byte = current, byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 {
            index += 1
        }
    }

    private mutating func expect(_ character: Unicode.Scalar) throws {
        guard current == UInt8(ascii: character) else { throw failure("expected '\(character)'") }
        index += 1
    }

    private mutating func parseValue() throws -> JSONValue {
        skipWhitespace()
        guard let byte = current else { throw failure("unexpected end of text") }
        switch byte {
        case UInt8(ascii: "{"): return try nested { try $0.parseObject() }
        case UInt8(ascii: "["): return try nested { try $0.parseArray() }
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try parseLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try parseLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try parseLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw failure("unexpected character")
        }
    }

    private mutating func nested(_ body: (inout JSONParser) throws -> JSONValue) throws -> JSONValue {
        guard depth < Self.maxDepth else { throw failure("nested more than \(Self.maxDepth) levels deep") }
        depth += 1
        defer { depth -= 1 }
        return try body(&self)
    }

    private mutating func parseObject() throws -> JSONValue {
        try expect("{")
        var members: [(key: String, value: JSONValue)] = []
        skipWhitespace()
        if current == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard current == UInt8(ascii: "\"") else { throw failure("expected a string key") }
            let key = try parseString()
            skipWhitespace()
            try expect(":")
            members.append((key, try parseValue()))
            skipWhitespace()
            if current == UInt8(ascii: ",") {
                index += 1
            } else {
                try expect("}")
                return .object(members)
            }
        }
    }

    private mutating func parseArray() throws -> JSONValue {
        try expect("[")
        var elements: [JSONValue] = []
        skipWhitespace()
        if current == UInt8(ascii: "]") {
            index += 1
            return .array(elements)
        }
        while true {
            elements.append(try parseValue())
            skipWhitespace()
            if current == UInt8(ascii: ",") {
                index += 1
            } else {
                try expect("]")
                return .array(elements)
            }
        }
    }

    private mutating func parseLiteral(_ literal: String) throws {
        for expected in literal.utf8 {
            guard current == expected else { throw failure("invalid literal, expected \(literal)") }
            index += 1
        }
    }

    /// Parses a number and returns its text.
    private mutating func parseNumber() throws -> String {
        let start = index
        func isDigit(_ byte: UInt8?) -> Bool {
            byte.map { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") } ?? false
        }
        func digits(_ parser: inout JSONParser) throws {
            guard isDigit(parser.current) else { throw parser.failure("expected a digit") }
            while isDigit(parser.current) { parser.index += 1 }
        }
        if current == UInt8(ascii: "-") { index += 1 }
        if current == UInt8(ascii: "0") {
            index += 1
        } else {
            try digits(&self)
        }
        if current == UInt8(ascii: ".") {
            index += 1
            try digits(&self)
        }
        if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            index += 1
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
            try digits(&self)
        }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    /// Parses a string literal, resolving escapes. The input is known to be
    /// valid UTF-8, so unescaped bytes are copied as they are.
    private mutating func parseString() throws -> String {
        try expect("\"")
        var utf8: [UInt8] = []
        while true {
            guard let byte = current else { throw failure("unterminated string") }
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: utf8, as: UTF8.self)
            case UInt8(ascii: "\\"):
                try parseEscape(into: &utf8)
            case ..<0x20:
                throw failure("control character in string")
            default:
                utf8.append(byte)
            }
        }
    }

    private mutating func parseEscape(into utf8: inout [UInt8]) throws {
        guard let byte = current else { throw failure("unterminated string") }
        index += 1
        let simple: [UInt8: UInt8] = [
            UInt8(ascii: "\""): 0x22, UInt8(ascii: "\\"): 0x5C, UInt8(ascii: "/"): 0x2F,
            UInt8(ascii: "b"): 0x08, UInt8(ascii: "f"): 0x0C, UInt8(ascii: "n"): 0x0A,
            UInt8(ascii: "r"): 0x0D, UInt8(ascii: "t"): 0x09,
        ]
        if let replacement = simple[byte] {
            utf8.append(replacement)
            return
        }
        guard byte == UInt8(ascii: "u") else { throw failure("invalid escape sequence") }
        var value = try parseHex4()
        if (0xD800..<0xDC00).contains(value) {
            guard current == UInt8(ascii: "\\") else { throw failure("unpaired surrogate in \\u escape") }
            index += 1
            try expect("u")
            let low = try parseHex4()
            guard (0xDC00..<0xE000).contains(low) else { throw failure("unpaired surrogate in \\u escape") }
            value = 0x10000 + ((value - 0xD800) << 10) + (low - 0xDC00)
        }
        guard let scalar = Unicode.Scalar(value) else { throw failure("unpaired surrogate in \\u escape") }
        utf8 += Array(String(scalar).utf8)
    }

    private mutating func parseHex4() throws -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let byte = current, let digit = hexValue(byte) else {
                throw failure("expected four hex digits after \\u")
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }

    private func hexValue(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(byte - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }
}
