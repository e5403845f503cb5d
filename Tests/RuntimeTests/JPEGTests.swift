import Foundation
import XCTest

@testable import Runtime

final class JPEGTests: TemporaryDirectoryTestCase {
    func testRoundTripRGBAndGreyIsClose() throws {
        for channels in [1, 3] {
            // A smooth gradient: JPEG keeps it within a few levels.
            let (w, h) = (37, 21)
            var pixels: [UInt8] = []
            for y in 0..<h { for x in 0..<w { for c in 0..<channels { pixels.append(UInt8(x * 4 + y * 3 + c * 20)) } } }
            let image = try Image(width: w, height: h, channels: channels, pixels: pixels)
            let file = url("gradient-\(channels).jpg")
            try image.writeJPEG(to: file, quality: 98)
            let decoded = try Image.load(file)
            XCTAssertEqual(decoded.width, w)
            XCTAssertEqual(decoded.height, h)
            XCTAssertEqual(decoded.channels, channels)
            let worst = zip(decoded.pixels, image.pixels).map { abs(Int($0) - Int($1)) }.max()!
            XCTAssertLessThanOrEqual(worst, 8, "channels \(channels)")
            XCTAssertEqual(try Image.loadJPEG(file), decoded)
        }
    }

    func testFormatIsToldByContentNotName() throws {
        let image = try Image(width: 4, height: 3, channels: 3, pixels: Array(repeating: 200, count: 36))
        try image.writePNG(to: url("really-a-png.jpg"))
        XCTAssertEqual(try Image.load(url("really-a-png.jpg")), image)
        try Data(try image.jpegData()).write(to: url("really-a-jpeg.png"))
        XCTAssertEqual(try Image.load(url("really-a-jpeg.png")).width, 4)
    }

    /// Damaged JPEGs are errors that name the file: truncated (which libjpeg
    /// would otherwise pad with grey), garbage after the header, empty, random.
    func testCorruptJPEGsAreErrorsNamingTheFileNeverCrashes() throws {
        var rng = SplitMix64(seed: 9)
        let pixels = (0..<(48 * 32 * 3)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let good = try Image(width: 48, height: 32, channels: 3, pixels: pixels).jpegData(quality: 90)
        var cases: [(String, Data)] = [
            ("truncated", good.prefix(good.count / 2)),
            ("header-only", good.prefix(20)),
            ("empty", Data()),
            ("signature-only", Data([0xFF, 0xD8, 0xFF])),
        ]
        var garbled = good
        for i in stride(from: 200, to: garbled.count - 2, by: 7) { garbled[i] = UInt8.random(in: 0...255, using: &rng) }
        cases.append(("garbled", garbled))
        for i in 0..<30 {
            var bytes = good
            let cut = Int.random(in: 3..<bytes.count, using: &rng)
            bytes = bytes.prefix(cut) + Data((0..<Int.random(in: 0..<64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
            cases.append(("random-\(i)", bytes))
        }
        for (name, bytes) in cases {
            let file = url(name + ".jpg")
            try bytes.write(to: file)
            do {
                _ = try Image.load(file)
                // A random tail can, rarely, still be a complete image; the named cases never are.
                XCTAssertTrue(name.hasPrefix("random"), "\(name) decoded")
            } catch let error as ImageError {
                XCTAssertEqual(error.file, file.path)
                XCTAssertTrue(error.description.hasPrefix(file.path + ": "), error.description)
            }
        }
    }

    func testHugeDimensionsAreRefusedNotAllocated() throws {
        // SOI, then a baseline SOF0 header claiming 65000×65000 pixels.
        let bytes: [UInt8] = [0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0xFD, 0xE8, 0xFD, 0xE8, 0x03,
                              0x01, 0x11, 0x00, 0x02, 0x11, 0x00, 0x03, 0x11, 0x00, 0xFF, 0xD9]
        let file = url("huge.jpg")
        try Data(bytes).write(to: file)
        XCTAssertThrowsError(try Image.load(file)) { XCTAssertTrue("\($0)".contains(file.path), "\($0)") }
    }
}
