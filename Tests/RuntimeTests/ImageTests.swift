import Foundation
import XCTest

@testable import Runtime

final class ImageTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("ImageTests-" + UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: directory)
    }

    // MARK: Helpers

    private func randomImage(width: Int, height: Int, channels: Int, rng: inout SplitMix64) throws -> Image {
        let pixels = (0..<(width * height * channels)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        return try Image(width: width, height: height, channels: channels, pixels: pixels)
    }

    /// Writes `image` as PNG at `relativePath` under the test directory,
    /// creating intermediate directories.
    @discardableResult
    private func writeFixture(_ image: Image, at relativePath: String) throws -> URL {
        let url = directory.appendingPathComponent(relativePath)
        try FileManager.default.createDirectory(
            at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try image.writePNG(to: url)
        return url
    }

    private func solid(_ rgb: [UInt8], width: Int, height: Int) throws -> Image {
        try Image(width: width, height: height, channels: 3,
                  pixels: Array((0..<(width * height)).map { _ in rgb }.joined()))
    }

    /// Asserts that loading `bytes` (written to a file) fails with an
    /// `ImageError` naming the file and containing `fragment`.
    private func assertLoadFails(_ bytes: Data, mentioning fragment: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let url = directory.appendingPathComponent("broken.png")
        try bytes.write(to: url)
        XCTAssertThrowsError(try Image.loadPNG(url), file: file, line: line) {
            guard let error = $0 as? ImageError else {
                return XCTFail("unexpected error type: \($0)", file: file, line: line)
            }
            XCTAssertEqual(error.file, url.path, file: file, line: line)
            XCTAssertTrue(error.description.hasPrefix(url.path + ": "), error.description, file: file, line: line)
            XCTAssertTrue(error.description.contains(fragment), error.description, file: file, line: line)
        }
    }

    // MARK: PNG

    func testPNGRoundTripGreyAndRGB() throws {
        var rng = SplitMix64(seed: 3)
        for (width, height, channels) in [(1, 1, 1), (7, 5, 1), (7, 5, 3), (64, 3, 3)] {
            let image = try randomImage(width: width, height: height, channels: channels, rng: &rng)
            let url = try writeFixture(image, at: "image-\(width)x\(height)x\(channels).png")
            XCTAssertEqual(try Image.loadPNG(url), image)
        }
    }

    func testPNGWriteReplacesExistingFile() throws {
        var rng = SplitMix64(seed: 4)
        let first = try randomImage(width: 4, height: 4, channels: 3, rng: &rng)
        let second = try randomImage(width: 2, height: 3, channels: 1, rng: &rng)
        let url = try writeFixture(first, at: "same.png")
        try second.writePNG(to: url)
        XCTAssertEqual(try Image.loadPNG(url), second)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path), ["same.png"])
    }

    /// Small PNGs made with Pillow in formats the writer does not produce.
    func testLoadConvertsAlphaPaletteAnd16BitTo8BitGreyOrRGB() throws {
        let cases: [(base64: String, channels: Int, pixels: [UInt8])] = [
            // RGBA 2×1: (255,0,0,0), (0,255,0,128): alpha is dropped.
            ("iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAYAAAD0In+KAAAAEUlEQVR4nGP4z8DAwPCfoQEAC34Cf2X/CxMAAAAASUVORK5CYII=",
             3, [255, 0, 0, 0, 255, 0]),
            // Grey + alpha 2×1: (10,0), (200,255).
            ("iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAQAAABeK7cBAAAADUlEQVR4nGPgYjjxHwACvAHSNr7+SQAAAABJRU5ErkJggg==",
             1, [10, 200]),
            // Palette 3×1: indices 2, 0, 1 into [(255,0,0), (0,0,255), (7,8,9)].
            ("iVBORw0KGgoAAAANSUhEUgAAAAMAAAABAgMAAABmjvwnAAAACVBMVEX/AAAAAP8HCAmgY8dTAAAACklEQVR4nGNoAQAAhgCFvPXN1gAAAABJRU5ErkJggg==",
             3, [7, 8, 9, 255, 0, 0, 0, 0, 255]),
            // 16-bit grey 3×1: 0, 25700, 65535.
            ("iVBORw0KGgoAAAANSUhEUgAAAAMAAAABEAAAAABuG5crAAAAD0lEQVR4nGNgYEhJ+f8fAAXAAscdOXl0AAAAAElFTkSuQmCC",
             1, [0, 100, 255]),
        ]
        for (index, testCase) in cases.enumerated() {
            let url = directory.appendingPathComponent("format-\(index).png")
            try XCTUnwrap(Data(base64Encoded: testCase.base64)).write(to: url)
            let image = try Image.loadPNG(url)
            XCTAssertEqual(image.channels, testCase.channels, "case \(index)")
            XCTAssertEqual(image.pixels, testCase.pixels, "case \(index)")
        }
    }

    func testMissingFileAndNonPNG() throws {
        let missing = directory.appendingPathComponent("missing.png")
        XCTAssertThrowsError(try Image.loadPNG(missing)) {
            XCTAssertEqual("\($0)", missing.path + ": no such file; check the path")
        }
        try assertLoadFails(Data("GIF89a, not a PNG".utf8), mentioning: "not a PNG file")
        try assertLoadFails(Data(), mentioning: "not a PNG file")

        // An empty mask is called empty, as an empty image is.
        let emptyMask = directory.appendingPathComponent("empty-mask.png")
        try Data().write(to: emptyMask)
        XCTAssertThrowsError(try LabelMap.load(emptyMask)) {
            XCTAssertEqual("\($0)", emptyMask.path + ": the mask file is empty; replace it or remove its image from the data set")
        }
    }

    func testCorruptPNGIsAnErrorNamingTheFile() throws {
        var rng = SplitMix64(seed: 5)
        let url = try writeFixture(try randomImage(width: 32, height: 32, channels: 3, rng: &rng), at: "good.png")
        let valid = try Data(contentsOf: url)
        try assertLoadFails(valid.prefix(valid.count / 2), mentioning: "corrupt PNG data")
        try assertLoadFails(valid.prefix(20), mentioning: "corrupt PNG data")
        let signature = valid.prefix(8)
        try assertLoadFails(signature + Data((0..<200).map { _ in UInt8.random(in: 0...255, using: &rng) }),
                            mentioning: "corrupt PNG data")
        // A header claiming 100000×100000 pixels (with a valid CRC) is refused before allocating.
        var huge = valid.prefix(33)
        huge.replaceSubrange(16..<24, with: [0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0])
        let crc = crc32(huge[12..<29])
        huge.replaceSubrange(29..<33, with: [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: crc >> $0) })
        try assertLoadFails(huge + valid.suffix(from: 33), mentioning: "the PNG is 100000×100000 pixels, more than the limit")
    }

    func testDamagedPNGsNeverCrash() throws {
        var rng = SplitMix64(seed: 6)
        let url = try writeFixture(try randomImage(width: 16, height: 16, channels: 3, rng: &rng), at: "good.png")
        let valid = try Data(contentsOf: url)
        for iteration in 0..<300 {
            var damaged = valid
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                damaged[Int.random(in: 8..<damaged.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            if iteration.isMultiple(of: 3) {
                damaged = damaged.prefix(Int.random(in: 8...damaged.count, using: &rng))
            }
            do {
                _ = try Image.decodePNG(damaged, name: "fuzz.png")
            } catch let error as ImageError {
                XCTAssertEqual(error.file, "fuzz.png")
            }
        }
    }

    func testInvalidImageIsRejected() {
        XCTAssertThrowsError(try Image(width: 2, height: 2, channels: 3, pixels: [1, 2, 3])) {
            XCTAssertTrue("\($0)".contains("but 3 were given"), "\($0)")
        }
        XCTAssertThrowsError(try Image(width: 1, height: 1, channels: 4, pixels: [1, 2, 3, 4]))
        XCTAssertThrowsError(try Image(width: 0, height: 1, channels: 1, pixels: []))
    }

    // MARK: SplitMix64

    func testSplitMix64MatchesReferenceOutputs() {
        var rng = SplitMix64(seed: 0)
        XCTAssertEqual([rng.next(), rng.next(), rng.next()],
                       [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])
        rng = SplitMix64(seed: 42)
        XCTAssertEqual(rng.next(), 0xBDD7_3226_2FEB_6E95)
        var copy = rng
        XCTAssertEqual(copy.next(), rng.next(), "the state alone determines the stream")
    }
}

/// The CRC-32 used by PNG chunks.
private func crc32(_ bytes: Data) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes {
        crc ^= UInt32(byte)
        for _ in 0..<8 {
            crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1
        }
    }
    return ~crc
}
