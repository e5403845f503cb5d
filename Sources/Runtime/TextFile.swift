import Foundation

/// Reads a UTF-8 text file the user edits (a `.ddir`). A byte that is not
/// UTF-8 is reported at its line and column, where Foundation only says
/// "the file isn't in the correct format".
public func readUTF8Text(_ url: URL) throws -> String {
    let data: Data
    do {
        data = try Data(contentsOf: url)
    } catch {
        throw FileProblem.error(error, path: url.path, action: "read it")
    }
    if let text = String(data: data, encoding: .utf8) { return text }
    let bytes = [UInt8](data)
    var iterator = bytes.makeIterator()
    var decoder = UTF8()
    var offset = 0
    decoding: while true {
        switch decoder.decode(&iterator) {
        case .scalarValue(let scalar): offset += UTF8.width(scalar)
        case .emptyInput: break decoding
        case .error: break decoding
        }
    }
    let before = bytes[..<min(offset, bytes.count)]
    let line = before.filter { $0 == UInt8(ascii: "\n") }.count + 1
    let lineStart = before.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0
    let column = String(decoding: bytes[lineStart..<min(offset, bytes.count)], as: UTF8.self).count + 1
    let byte = offset < bytes.count ? String(format: "0x%02x", bytes[offset]) : "at the end"
    throw RuntimeError("\(url.path):\(line):\(column): invalid UTF-8 byte \(byte); the file must be UTF-8 text (was it damaged or saved in another encoding?)")
}
