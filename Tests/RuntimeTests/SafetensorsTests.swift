import Foundation
import XCTest

@testable import Runtime

final class SafetensorsTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("SafetensorsTests-" + UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: directory)
    }

    // MARK: Helpers

    /// A file made of an 8-byte length (the header's, unless `declaredLength`
    /// is given), the header text and the data bytes.
    private func file(header: String, data: [UInt8] = [], declaredLength: UInt64? = nil) -> Data {
        let headerBytes = Array(header.utf8)
        var bytes = Data()
        withUnsafeBytes(of: (declaredLength ?? UInt64(headerBytes.count)).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: headerBytes)
        bytes.append(contentsOf: data)
        return bytes
    }

    /// `bytes` as a file on disk, opened by `SafetensorsFileReader` (which
    /// reads only the header).
    private func reader(of bytes: Data, named name: String) throws -> SafetensorsFileReader {
        let url = directory.appendingPathComponent(name)
        try bytes.write(to: url)
        return try SafetensorsFileReader(contentsOf: url)
    }

    /// Asserts that parsing `bytes` fails with a message naming the file and
    /// containing every string in `fragments`, read whole and read from disk.
    private func assertRejects(
        _ bytes: Data, mentioning fragments: [String], file: StaticString = #filePath, line: UInt = #line
    ) {
        let onDisk = directory.appendingPathComponent("bad.safetensors").path
        for (name, read) in [("bad.safetensors", { _ = try SafetensorsFile(serialized: bytes, name: "bad.safetensors") }),
                             (onDisk, { _ = try self.reader(of: bytes, named: "bad.safetensors") })] {
            XCTAssertThrowsError(try read(), file: file, line: line) {
                guard let error = $0 as? SafetensorsError else {
                    return XCTFail("unexpected error type \(type(of: $0)): \($0)", file: file, line: line)
                }
                let message = error.description
                XCTAssertTrue(message.hasPrefix(name + ": "), message, file: file, line: line)
                for fragment in fragments {
                    XCTAssertTrue(message.contains(fragment), "\"\(message)\" does not mention \"\(fragment)\"", file: file, line: line)
                }
            }
        }
    }

    /// Parses `bytes` read whole and from disk, accepting success or a
    /// `SafetensorsError` (the same outcome both ways); anything else (or a
    /// crash) fails the test.
    private func parseTolerantly(_ bytes: Data) {
        var outcomes: [Bool] = []
        for read in [{ _ = try SafetensorsFile(serialized: bytes, name: "fuzz") }, { _ = try self.reader(of: bytes, named: "fuzz") }] {
            do {
                try read()
                outcomes.append(true)
            } catch is SafetensorsError {
                outcomes.append(false)
            } catch {
                XCTFail("unexpected error type: \(error)")
            }
        }
        XCTAssertEqual(Set(outcomes).count, 1, "read whole and from disk disagree on \(Array(bytes))")
    }

    private func sampleFile() throws -> SafetensorsFile {
        var file = SafetensorsFile(metadata: ["format": "pt", "note": "quote \" backslash \\ newline \n ünïcødé"])
        try file.set("weight", values: [Float](arrayLiteral: 1, -2.5, 3e-8, .infinity, 0, -0), shape: [2, 3])
        try file.set("bias", values: [Float(0.5), 1.5], shape: [2])
        try file.set("step", values: [Int64(42)], shape: [])
        return file
    }

    // MARK: Round trips

    func testRoundTripOfEveryDTypeIncludingScalarsAndEmptyTensors() throws {
        var rng = SplitMix64(seed: 7)
        var original = SafetensorsFile(metadata: ["epoch": "3", "": "empty key", "ключ": "значение"])
        let shapes: [[Int]] = [[], [0], [3], [2, 3], [3, 0, 2], [1, 1, 1, 2]]
        for dtype in SafetensorsDType.allCases {
            for (i, shape) in shapes.enumerated() {
                let count = shape.reduce(1, *) * dtype.byteSize
                let data = Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) })
                try original.set("\(dtype.rawValue).\(i)", SafetensorsTensor(dtype: dtype, shape: shape, data: data))
            }
        }
        let bytes = original.serialized()
        let parsed = try SafetensorsFile(serialized: bytes, name: "roundtrip")
        XCTAssertEqual(parsed.tensors, original.tensors)
        XCTAssertEqual(parsed.metadata, original.metadata)
        XCTAssertEqual(parsed.serialized(), bytes, "writing is deterministic")
        let slice = (Data([0xFF]) + bytes).dropFirst()
        XCTAssertEqual(try SafetensorsFile(serialized: slice, name: "slice").tensors, original.tensors)
        XCTAssertEqual(try parsed.tensor("F32.0").shape, [])
        XCTAssertEqual(try parsed.tensor("F32.0").elementCount, 1)
        XCTAssertEqual(try parsed.tensor("I64.4").elementCount, 0)
    }

    func testTypedValuesRoundTrip() throws {
        var file = SafetensorsFile()
        let floats: [Float] = [1, -2.5, .pi, .greatestFiniteMagnitude]
        try file.set("f32", values: floats, shape: [2, 2])
        try file.set("f64", values: [Double.pi, -1e300], shape: [2])
        try file.set("i32", values: [Int32.min, 0, Int32.max], shape: [3])
        try file.set("i64", values: [Int64.min, 7, Int64.max], shape: [3, 1])
        try file.set("u8", values: [UInt8](0...255), shape: [16, 16])
        let parsed = try SafetensorsFile(serialized: file.serialized(), name: "typed")
        XCTAssertEqual(try parsed.floats("f32"), floats)
        XCTAssertEqual(try parsed.values("f64", as: Double.self), [Double.pi, -1e300])
        XCTAssertEqual(try parsed.values("i32", as: Int32.self), [Int32.min, 0, Int32.max])
        XCTAssertEqual(try parsed.values("i64", as: Int64.self), [Int64.min, 7, Int64.max])
        XCTAssertEqual(try parsed.values("u8", as: UInt8.self), [UInt8](0...255))
        XCTAssertEqual(try parsed.tensor("i64").shape, [3, 1])
    }

    func testWriterLayout() throws {
        let bytes = try sampleFile().serialized()
        let headerLength = Int(bytes.prefix(8).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        XCTAssertEqual(headerLength % 8, 0, "header is padded to a multiple of 8")
        let header = try XCTUnwrap(String(data: bytes.subdata(in: 8..<(8 + headerLength)), encoding: .utf8))
        XCTAssertTrue(header.hasPrefix("{\"__metadata__\":{"))
        let positions = ["\"bias\"", "\"step\"", "\"weight\""].map { header.range(of: $0)?.lowerBound }
        XCTAssertEqual(positions.compactMap { $0 }, positions.compactMap { $0 }.sorted(), "names are sorted")
        XCTAssertTrue(header.contains("\"data_offsets\":[0,8]"), header)
        XCTAssertEqual(bytes.count, 8 + headerLength + 8 + 8 + 24, "data is contiguous")
        // Other writers may use whitespace and any member order.
        let foreign = file(
            header: " { \"b\" : {\"shape\": [ 1 ], \"data_offsets\":[4,8], \"dtype\":\"U8\"} ,\n"
                + "\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}    ",
            data: [0, 0, 128, 63, 9])
        assertRejects(foreign, mentioning: ["\"b\"", "needs 1 bytes", "span 4 bytes"])
        let valid = file(
            header: " { \"b\" : {\"shape\": [ 1 ], \"data_offsets\":[4,5], \"dtype\":\"U8\"} ,\n"
                + "\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}    ",
            data: [0, 0, 128, 63, 9])
        let parsed = try SafetensorsFile(serialized: valid, name: "foreign")
        XCTAssertEqual(try parsed.floats("a"), [1])
        XCTAssertEqual(try parsed.values("b", as: UInt8.self), [9])
    }

    func testFileRoundTripOnDisk() throws {
        let url = directory.appendingPathComponent("model.safetensors")
        let original = try sampleFile()
        try original.write(to: url)
        XCTAssertEqual(try Data(contentsOf: url), original.serialized(), "written as it is serialized, a tensor at a time")
        let parsed = try SafetensorsFile(contentsOf: url)
        XCTAssertEqual(parsed.tensors, original.tensors)
        XCTAssertEqual(parsed.metadata, original.metadata)
        XCTAssertEqual(parsed.source, url.path)
        XCTAssertEqual(parsed.names, ["bias", "step", "weight"])

        let reader = try SafetensorsFileReader(contentsOf: url)
        XCTAssertEqual(reader.names, ["bias", "step", "weight"])
        XCTAssertEqual(reader.metadata, original.metadata)
        for name in reader.names {
            let tensor = try reader.tensor(name)
            XCTAssertEqual(tensor.dtype, original.tensors[name]!.dtype)
            XCTAssertEqual(tensor.shape, original.tensors[name]!.shape)
            var bytes = [UInt8](repeating: 0xAA, count: tensor.byteCount)
            try bytes.withUnsafeMutableBytes { try reader.read(name, into: $0) }
            XCTAssertEqual(Data(bytes), original.tensors[name]!.data, name)
        }
        XCTAssertThrowsError(try reader.tensor("missing")) {
            let message = "\($0)"
            XCTAssertTrue(message.hasPrefix(url.path + ": tensor \"missing\": no such tensor") && message.contains("bias, step, weight"), message)
        }
        // Cut short after its header was read: the read says so.
        let handle = try FileHandle(forWritingTo: url)
        try handle.truncate(atOffset: UInt64(try Data(contentsOf: url).count - 4))
        try handle.close()
        var weight = [UInt8](repeating: 0, count: 24) // the last tensor
        XCTAssertThrowsError(try weight.withUnsafeMutableBytes { try reader.read("weight", into: $0) }) {
            XCTAssertTrue("\($0)".contains("tensor \"weight\": the file ended while it was being read"), "\($0)")
        }
    }

    // MARK: API misuse

    func testAccessorErrorsNameTheTensor() throws {
        let url = directory.appendingPathComponent("model.safetensors")
        try sampleFile().write(to: url)
        let parsed = try SafetensorsFile(contentsOf: url)
        XCTAssertThrowsError(try parsed.floats("step")) {
            let message = "\($0)"
            XCTAssertTrue(message.contains(url.path) && message.contains("\"step\"") && message.contains("I64"), message)
        }
        XCTAssertThrowsError(try parsed.floats("missing")) {
            let message = "\($0)"
            XCTAssertTrue(message.contains("no such tensor") && message.contains("bias, step, weight"), message)
        }
    }

    func testSettingInvalidTensorsThrows() {
        var file = SafetensorsFile()
        XCTAssertThrowsError(try file.set("__metadata__", values: [Float(1)], shape: [1])) {
            XCTAssertTrue("\($0)".contains("reserved"), "\($0)")
        }
        XCTAssertThrowsError(try file.set("w", values: [Float(1), 2, 3], shape: [2, 2])) {
            XCTAssertTrue("\($0)".contains("tensor \"w\"") && "\($0)".contains("needs 16 bytes"), "\($0)")
        }
        XCTAssertThrowsError(try file.set("w", values: [Float](), shape: [-1, 0])) {
            XCTAssertTrue("\($0)".contains("negative"), "\($0)")
        }
        XCTAssertThrowsError(try SafetensorsTensor(dtype: .u8, shape: [Int.max, 2], data: Data())) {
            XCTAssertTrue("\($0)".contains("too large"), "\($0)")
        }
        XCTAssertTrue(file.tensors.isEmpty)
    }

    func testMissingFileIsReported() {
        let url = directory.appendingPathComponent("absent.safetensors")
        XCTAssertThrowsError(try SafetensorsFile(contentsOf: url)) {
            XCTAssertTrue("\($0)".hasPrefix(url.path + ": cannot read the file"), "\($0)")
        }
        XCTAssertThrowsError(try SafetensorsFileReader(contentsOf: url)) {
            XCTAssertTrue("\($0)".hasPrefix(url.path + ": cannot read the file"), "\($0)")
        }
        XCTAssertThrowsError(try SafetensorsFileReader(contentsOf: directory)) {
            XCTAssertTrue("\($0)".hasPrefix(directory.path + ": it is not a regular file"), "\($0)")
        }
    }

    // MARK: Malformed files

    private let f32Entry = "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"

    func testRejectsShortFile() {
        assertRejects(Data(), mentioning: ["0 bytes long", "shorter than the 8-byte"])
        assertRejects(Data([1, 0, 0]), mentioning: ["3 bytes long", "shorter than the 8-byte"])
    }

    func testRejectsHeaderLengthBeyondFileOrLimit() {
        assertRejects(file(header: "{}", declaredLength: 100), mentioning: ["says 100 bytes", "only 2 bytes", "truncated"])
        assertRejects(file(header: "{}", declaredLength: 100_000_001), mentioning: ["100000001", "more than the limit"])
        assertRejects(file(header: "{}", declaredLength: .max), mentioning: ["more than the limit"])
    }

    func testRejectsHeaderThatIsNotAJSONObject() {
        assertRejects(file(header: "{\"a\": "), mentioning: ["not valid JSON", "unexpected end"])
        assertRejects(file(header: "{\"a\":1,}"), mentioning: ["not valid JSON"])
        assertRejects(file(header: "{} {}"), mentioning: ["not valid JSON", "after the top-level value"])
        assertRejects(file(header: "{\"a\":\"\\q\"}"), mentioning: ["not valid JSON", "escape"])
        assertRejects(file(header: "{\"a\":01}"), mentioning: ["not valid JSON"])
        assertRejects(file(header: "[1, 2]"), mentioning: ["JSON array, not an object"])
        assertRejects(file(header: "\"text\""), mentioning: ["JSON string, not an object"])
        assertRejects(file(header: ""), mentioning: ["not valid JSON"])
        var invalidUTF8 = file(header: "{\"a\":\"xx\"}")
        invalidUTF8[14] = 0xFF
        assertRejects(invalidUTF8, mentioning: ["not valid UTF-8"])
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        assertRejects(file(header: deep), mentioning: ["nested more than"])
    }

    func testRejectsEntriesWithMissingOrInvalidFields() {
        let data: [UInt8] = [0, 0, 0, 0]
        assertRejects(file(header: "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", data: data),
                      mentioning: ["tensor \"w\"", "no \"dtype\" field"])
        assertRejects(file(header: "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", data: data),
                      mentioning: ["tensor \"w\"", "no \"shape\" field"])
        assertRejects(file(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", data: data),
                      mentioning: ["tensor \"w\"", "no \"data_offsets\" field"])
        assertRejects(file(header: "{\"w\":[1]}", data: data), mentioning: ["tensor \"w\"", "JSON array, not an object"])
        assertRejects(file(header: "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", data: data),
                      mentioning: ["tensor \"w\"", "\"dtype\" is not a string"])
        assertRejects(file(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", data: data),
                      mentioning: ["tensor \"w\"", "\"shape\" is not an array of non-negative integers"])
        assertRejects(file(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", data: data),
                      mentioning: ["\"shape\" is not an array of non-negative integers"])
        assertRejects(file(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", data: data),
                      mentioning: ["\"data_offsets\" is not an array of two non-negative integers"])
        assertRejects(file(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", data: data),
                      mentioning: ["tensor \"w\"", "end before they begin"])
        assertRejects(file(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[99999999999,99999999999],\"data_offsets\":[0,4]}}", data: data),
                      mentioning: ["too large"])
        assertRejects(file(header: "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", data: data),
                      mentioning: ["\"dtype\" more than once"])
    }

    func testRejectsUnknownDType() {
        assertRejects(file(header: "{\"w\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", data: []),
                      mentioning: ["tensor \"w\"", "unknown dtype \"F128\"", "Supported dtypes are", "F32"])
    }

    func testRejectsShapeThatDoesNotMatchTheByteLength() {
        assertRejects(file(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", data: [0, 0, 0, 0]),
                      mentioning: ["tensor \"w\"", "shape [2] of F32 needs 8 bytes", "span 4 bytes"])
    }

    func testRejectsOffsetsOutOfRange() {
        assertRejects(file(header: "{\"w\":\(f32Entry)}", data: [0, 0]),
                      mentioning: ["tensor \"w\"", "out of range", "holds only 2 bytes"])
    }

    func testRejectsOverlappingOffsets() {
        let header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            + "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}"
        assertRejects(file(header: header, data: Array(repeating: 0, count: 8)),
                      mentioning: ["tensor \"b\"", "overlap", "\"a\" [0, 8]"])
    }

    func testRejectsGappedOffsets() {
        let header = "{\"a\":\(f32Entry),\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}"
        assertRejects(file(header: header, data: Array(repeating: 0, count: 12)),
                      mentioning: ["tensor \"b\"", "4..<8", "gap"])
        assertRejects(file(header: "{\"a\":\(f32Entry)}", data: Array(repeating: 0, count: 6)),
                      mentioning: ["last 2 bytes", "belong to no tensor"])
        assertRejects(file(header: "{}", data: [1]), mentioning: ["last 1 bytes", "belong to no tensor"])
    }

    func testRejectsDuplicateNames() {
        assertRejects(file(header: "{\"a\":\(f32Entry),\"a\":\(f32Entry)}", data: [0, 0, 0, 0]),
                      mentioning: ["tensor \"a\"", "more than once"])
        assertRejects(file(header: "{\"__metadata__\":{},\"__metadata__\":{}}"),
                      mentioning: ["more than once"])
    }

    func testRejectsMetadataThatIsNotStrings() {
        assertRejects(file(header: "{\"__metadata__\":{\"epoch\":3}}"),
                      mentioning: ["metadata value for key \"epoch\"", "number, not a string"])
        assertRejects(file(header: "{\"__metadata__\":[\"a\"]}"),
                      mentioning: ["\"__metadata__\" is a JSON array"])
    }

    func testAcceptsEscapesInNames() throws {
        let header = "{\"a\\u00e9\\ud83d\\ude00\\n\":\(f32Entry)}"
        let parsed = try SafetensorsFile(serialized: file(header: header, data: [0, 0, 128, 63]), name: "escapes")
        XCTAssertEqual(parsed.names, ["aé😀\n"])
        assertRejects(file(header: "{\"\\ud83d\":\(f32Entry)}", data: [0, 0, 128, 63]), mentioning: ["surrogate"])
    }

    // MARK: Robustness

    func testRandomAndDamagedBytesNeverCrash() throws {
        var rng = SplitMix64(seed: 1234)
        for _ in 0..<2000 {
            let count = Int.random(in: 0...64, using: &rng)
            parseTolerantly(Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }))
        }
        let valid = try sampleFile().serialized()
        for length in 0...valid.count {
            parseTolerantly(valid.prefix(length))
        }
        for _ in 0..<2000 {
            var damaged = valid
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                damaged[Int.random(in: 0..<damaged.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            parseTolerantly(damaged)
        }
        // Random JSON-ish headers with a correct length field.
        let alphabet = Array("{}[]\":,0123456789-.eE \\utrufalsnF32I64U8dtypeshapedata_offsets__metadata__".utf8)
        for _ in 0..<2000 {
            let header = (0..<Int.random(in: 0...80, using: &rng)).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] }
            parseTolerantly(file(header: String(decoding: header, as: UTF8.self), data: [0, 0, 0, 0]))
        }
    }

    // MARK: Atomic writes

    func testAtomicWriteReplacesContentAndLeavesNoTemporaryFiles() throws {
        let url = directory.appendingPathComponent("state.bin")
        try writeAtomically(Data("old content".utf8), to: url)
        try writeAtomically(Data("new".utf8), to: url)
        XCTAssertEqual(try Data(contentsOf: url), Data("new".utf8))
        try writeAtomically(Data(), to: url)
        XCTAssertEqual(try Data(contentsOf: url), Data())
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path), ["state.bin"])
    }

    func testAtomicWriteFailureLeavesTargetUntouched() throws {
        let missing = directory.appendingPathComponent("no-such-dir/state.bin")
        XCTAssertThrowsError(try writeAtomically(Data("x".utf8), to: missing)) {
            XCTAssertTrue($0 is AtomicWriteError)
            XCTAssertTrue("\($0)".hasPrefix(missing.path + ": could not create a temporary file"), "\($0)")
        }
        // Renaming over a non-empty directory fails after the data is written.
        let blocked = directory.appendingPathComponent("blocked")
        try FileManager.default.createDirectory(
            at: blocked.appendingPathComponent("inner"), withIntermediateDirectories: true)
        XCTAssertThrowsError(try writeAtomically(Data("x".utf8), to: blocked)) {
            XCTAssertTrue("\($0)".contains("could not replace the file"), "\($0)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path), ["blocked"])
        // A writer that fails halfway leaves the old content and no temporary file.
        struct Stop: Error {}
        let url = directory.appendingPathComponent("state.bin")
        try writeAtomically(Data("old".utf8), to: url)
        XCTAssertThrowsError(try writeAtomically(to: url) { file in
            try file.write(Data("half of the new".utf8))
            throw Stop()
        }) { XCTAssertTrue($0 is Stop, "\($0)") }
        XCTAssertEqual(try Data(contentsOf: url), Data("old".utf8))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted(), ["blocked", "state.bin"])
    }
}
