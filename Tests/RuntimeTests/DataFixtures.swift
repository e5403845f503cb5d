import Foundation
import XCTest

@testable import Runtime

/// A temporary directory per test, removed afterwards.
class TemporaryDirectoryTestCase: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("\(type(of: self))-" + UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func url(_ relative: String) -> URL { directory.appendingPathComponent(relative) }

    /// Creates the parent folders of `relative` and returns its URL.
    func prepare(_ relative: String) throws -> URL {
        let url = url(relative)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        return url
    }

    func write(_ image: Image, _ relative: String) throws {
        let url = try prepare(relative)
        if relative.hasSuffix(".png") { try image.writePNG(to: url) } else { try image.writeJPEG(to: url, quality: 95) }
    }

    func write(_ mask: LabelMap, _ relative: String) throws {
        try mask.image.writePNG(to: try prepare(relative))
    }

    func writeText(_ text: String, _ relative: String) throws {
        try text.write(to: try prepare(relative), atomically: true, encoding: .utf8)
    }
}

/// A synthetic labeled scene: a background of class 0 and a rectangle per
/// other class, each in its own colour, so the class of a pixel can be told
/// from its colour. `offset` is added to stored mask values (1 for layouts
/// that store classes as 1...n); `seed` moves the rectangles.
func scene(width: Int, height: Int, classes: Int, seed: UInt64, offset: UInt8 = 0) throws -> (Image, LabelMap) {
    var rng = SplitMix64(seed: seed)
    var labels = [UInt8](repeating: 0, count: width * height)
    for c in 1..<classes {
        let w = max(2, width / 3), h = max(2, height / 3)
        let x0 = Int.random(in: 0...(width - w), using: &rng), y0 = Int.random(in: 0...(height - h), using: &rng)
        for y in y0..<(y0 + h) { for x in x0..<(x0 + w) { labels[y * width + x] = UInt8(c) } }
    }
    var pixels = [UInt8](repeating: 0, count: width * height * 3)
    for (i, label) in labels.enumerated() {
        let colour = classColour(Int(label))
        pixels[3 * i] = colour.0
        pixels[3 * i + 1] = colour.1
        pixels[3 * i + 2] = colour.2
    }
    return (try Image(width: width, height: height, channels: 3, pixels: pixels),
            LabelMap(width: width, height: height, labels: labels.map { $0 + offset }))
}

func classColour(_ c: Int) -> (UInt8, UInt8, UInt8) {
    [(40, 40, 40), (220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 220, 30)][c % 5]
}
