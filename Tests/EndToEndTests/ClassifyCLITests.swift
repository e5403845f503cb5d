import Foundation
import Runtime
import XCTest

/// `ddepc train --mode classify`: supervised encoder pretraining on a folder
/// of images per class, then its encoder carried into a DDeP run.
final class ClassifyCLITests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    let work = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-classify-\(UUID().uuidString)")

    override func tearDown() { try? FileManager.default.removeItem(at: work) }

    func ddepc(_ arguments: [String]) throws -> DdepcCommand.Result {
        try DdepcCommand.run(arguments, in: Self.repository)
    }

    /// Three classes of 20×20 images: dark, reddish and greenish, with noise.
    func writeClasses() throws -> URL {
        let root = work.appendingPathComponent("classes")
        var rng = SplitMix64(seed: 9)
        for (name, colour) in [("dark", (40, 40, 40)), ("red", (210, 40, 40)), ("green", (40, 190, 60))] {
            let folder = root.appendingPathComponent(name)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            for i in 0..<6 {
                let pixels: [UInt8] = (0..<(20 * 20)).flatMap { _ in
                    [colour.0, colour.1, colour.2].map { UInt8(max(0, min(255, $0 + Int.random(in: -30...30, using: &rng)))) }
                }
                try Image(width: 20, height: 20, channels: 3, pixels: pixels).writePNG(to: folder.appendingPathComponent("\(i).png"))
            }
        }
        return root
    }

    func testClassifyPretrainsTheEncoderForDDeP() throws {
        let classes = try writeClasses()
        let artifact = work.appendingPathComponent("cls.ddepc").path
        let compiled = try ddepc(["compile", "unet-small", "-o", artifact, "--batch", "4", "--size", "32", "--image-classes", "3"])
        XCTAssertEqual(compiled.status, 0, compiled.all)

        let run = work.appendingPathComponent("cls-run").path
        let trained = try ddepc(["train", artifact, "--mode", "classify", "--data", classes.path, "--steps", "60", "--lr", "1e-3",
                                 "--out", run])
        XCTAssertEqual(trained.status, 0, trained.all)
        XCTAssertTrue(trained.stdout.contains("classifying 18 images of 3 classes"), trained.stdout)
        let losses = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { line in
            ((try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any])["loss"] as! NSNumber).doubleValue
        }
        XCTAssertEqual(losses.count, 60)
        // Batches of four make single losses noisy, and the curve differs between
        // CPUs (AVX2 and AVX-512 sum in other orders): compare window medians
        // with a margin, not one machine's values.
        func median(_ window: ArraySlice<Double>) -> Double { window.sorted()[window.count / 2] }
        let first = median(losses.prefix(15)), last = median(losses.suffix(15))
        XCTAssertLessThan(last, 0.5 * first, "three colour classes are learned: \(losses)")

        // Its encoder starts a DDeP run, which keeps it frozen.
        let ddep = try ddepc(["train", artifact, "--mode", "ddep", "--images", "Examples/data/images", "--steps", "2",
                              "--init", run, "--out", work.appendingPathComponent("ddep-run").path])
        XCTAssertEqual(ddep.status, 0, ddep.all)
        XCTAssertTrue(ddep.stdout.contains("enc "), ddep.stdout)

        // A head of another size is a clear error.
        let wrong = work.appendingPathComponent("wrong.ddepc").path
        XCTAssertEqual(try ddepc(["compile", "unet-small", "-o", wrong, "--batch", "4", "--size", "32"]).status, 0)
        let refused = try ddepc(["train", wrong, "--mode", "classify", "--data", classes.path, "--steps", "1",
                                 "--out", work.appendingPathComponent("refused").path])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("--image-classes 3"), refused.stderr)
    }
}
