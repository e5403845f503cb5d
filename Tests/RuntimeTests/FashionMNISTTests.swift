import Foundation
@testable import Runtime
import XCTest

/// Fashion-MNIST idx reading (through zlib) and scene composition, on small
/// idx files the test writes itself.
final class FashionMNISTTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-fmnist-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func gzip(_ bytes: [UInt8], to name: String) throws {
        let raw = directory.appendingPathComponent(name + ".raw")
        try Data(bytes).write(to: raw)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["gzip", "-c", raw.path]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        try data.write(to: directory.appendingPathComponent(name))
    }

    func bigEndian(_ values: [UInt32]) -> [UInt8] {
        values.flatMap { v in [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }
    }

    /// Three 28×28 images: image i is filled with 100·i (a block in the middle), labels 3, 0, 9.
    func writeTinySet(labels: [UInt8] = [3, 0, 9]) throws {
        var pixels: [UInt8] = []
        for i in 0..<3 {
            for y in 0..<28 { for x in 0..<28 { pixels.append((8..<20).contains(y) && (8..<20).contains(x) ? UInt8(50 + 100 * i) : 0) } }
        }
        try gzip(bigEndian([0x0803, 3, 28, 28]) + pixels, to: "train-images-idx3-ubyte.gz")
        try gzip(bigEndian([0x0801, 3]) + labels, to: "train-labels-idx1-ubyte.gz")
    }

    func testReadsIdxFiles() throws {
        try writeTinySet()
        let set = try FashionMNIST(directory: directory, split: .train)
        XCTAssertEqual(set.count, 3)
        XCTAssertEqual([set.rows, set.columns], [28, 28])
        XCTAssertEqual(set.labels, [3, 0, 9])
        XCTAssertEqual(set.image(2)[set.image(2).startIndex + 14 * 28 + 14], 250)
    }

    func testBadFilesGiveClearErrors() throws {
        XCTAssertThrowsError(try FashionMNIST(directory: directory)) {
            XCTAssertTrue("\($0)".contains("install Debian's dataset-fashion-mnist"), "\($0)")
        }
        try writeTinySet(labels: [3, 12, 9])
        XCTAssertThrowsError(try FashionMNIST(directory: directory)) { XCTAssertTrue("\($0)".contains("label 12"), "\($0)") }
        try Data([0x1f, 0x8b, 8, 0, 1, 2, 3]).write(to: directory.appendingPathComponent("train-images-idx3-ubyte.gz"))
        XCTAssertThrowsError(try FashionMNIST(directory: directory)) { XCTAssertTrue("\($0)".contains("train-images-idx3-ubyte.gz"), "\($0)") }
    }

    func testScenesHaveExactMasks() throws {
        try writeTinySet()
        let set = try FashionMNIST(directory: directory)
        var composer = SceneComposer()
        composer.size = 32
        var rng = SplitMix64(seed: 4)
        let (image, mask) = composer.scene(from: set, rng: &rng)
        XCTAssertEqual(image.count, 32 * 32 * 3)
        XCTAssertEqual(mask.count, 32 * 32)
        // Only background and the classes of the pasted objects (label + 1) occur.
        XCTAssertTrue(Set(mask).isSubset(of: [0, 1, 4, 10]), "\(Set(mask))")
        XCTAssertTrue(mask.contains { $0 != 0 }, "some object was pasted")

        let out = directory.appendingPathComponent("scenes")
        try composer.write(from: set, count: 5, seed: 1, to: out)
        let masks = try FileManager.default.contentsOfDirectory(atPath: out.appendingPathComponent("masks").path).sorted()
        XCTAssertEqual(masks, (0..<5).map { "scene_\($0).png" })
        let loaded = try Image.loadPNG(out.appendingPathComponent("masks/scene_0.png"))
        XCTAssertEqual(loaded.channels, 1)
        XCTAssertTrue(try String(contentsOf: out.appendingPathComponent("classes.txt"), encoding: .utf8).hasPrefix("background\nT-shirt/top\n"))
        XCTAssertThrowsError(try composer.write(from: set, count: 1, seed: 1, to: out)) {
            XCTAssertTrue("\($0)".contains("is not empty"), "\($0)")
        }
    }
}
