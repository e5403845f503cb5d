import Foundation
import XCTest

@testable import Runtime

/// Checkpoints written atomically and kept to the last K, the newest valid
/// one found on resume; progress lines.
final class CheckpointTests: TemporaryDirectoryTestCase {
    func checkpoint(_ step: Int, value: Float) throws -> SafetensorsFile {
        var file = SafetensorsFile(metadata: ["step": "\(step)"])
        try file.set("w", values: [value, value], shape: [2])
        return file
    }

    func testKeepsTheLastKAndLinksTheNewest() throws {
        let run = CheckpointDirectory(run: url("run"))
        XCTAssertNil(run.latestValid())
        for step in stride(from: 10, through: 60, by: 10) {
            try run.write(try checkpoint(step, value: Float(step)), step: step, keep: 3)
        }
        XCTAssertEqual(run.checkpoints().map(\.step), [40, 50, 60])
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: run.lastLink.path), "checkpoints/step-00000060.safetensors")
        XCTAssertEqual(try SafetensorsFile(contentsOf: run.lastLink).metadata["step"], "60")
        // No temporary files are left behind.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: url("run").path) + FileManager.default.contentsOfDirectory(atPath: run.directory.path)
        XCTAssertTrue(leftovers.allSatisfy { !$0.hasPrefix(".") }, "\(leftovers)")
        XCTAssertEqual(try resolveCheckpoint(url("run").path), run.url(step: 60))
        XCTAssertEqual(try resolveCheckpoint(run.url(step: 50).path), run.url(step: 50))
        XCTAssertThrowsError(try resolveCheckpoint(url("nowhere").path))
    }

    /// A damaged newest checkpoint (a disk fault; an atomic write never
    /// leaves one) makes resume fall back to the one before.
    func testLatestValidSkipsADamagedCheckpoint() throws {
        let run = CheckpointDirectory(run: url("run"))
        try run.write(try checkpoint(5, value: 5), step: 5, keep: 5)
        try run.write(try checkpoint(6, value: 6), step: 6, keep: 5)
        try Data(repeating: 0xAB, count: 100).write(to: run.url(step: 6))
        var skipped: [URL] = []
        let latest = try XCTUnwrap(run.latestValid { url, _ in skipped.append(url) })
        XCTAssertEqual(latest.url, run.url(step: 5))
        XCTAssertEqual(skipped, [run.url(step: 6)])
    }

    /// Replacing a checkpoint is all or nothing: a reader sees the old or the
    /// new bytes while a writer keeps replacing it.
    func testConcurrentReadersNeverSeeAPartialCheckpoint() throws {
        let run = CheckpointDirectory(run: url("run"))
        try run.write(try checkpoint(1, value: 0), step: 1, keep: 1)
        let done = DispatchSemaphore(value: 0)
        let writes = 40
        DispatchQueue.global().async {
            for i in 0..<writes { _ = try? run.write(try! self.checkpoint(1, value: Float(i)), step: 1, keep: 1) }
            done.signal()
        }
        var reads = 0
        while done.wait(timeout: .now()) == .timedOut {
            let file = try SafetensorsFile(contentsOf: run.lastLink)
            let w = try file.floats("w")
            XCTAssertEqual(w[0], w[1])
            reads += 1
        }
        XCTAssertGreaterThan(reads, 0)
    }

    func testProgressLinesAndBar() {
        var lines: [String] = []
        let plain = ProgressReporter(totalSteps: 25, batch: 4, interactive: false, every: 10) { lines.append($0) }
        for step in 1...25 { plain.update(step: step, loss: 1, lr: 1e-3, seconds: 0.5, first: step == 1) }
        XCTAssertEqual(lines.count, 4, "steps 1, 10, 20 and 25")
        XCTAssertEqual(lines[0], "step    1/25  loss 1.00000  lr 1.00e-03  8.0 img/s  eta 12s\n")
        XCTAssertTrue(lines[3].hasPrefix("step   25/25"))
        var drawn = ""
        let bar = ProgressReporter(totalSteps: 4, batch: 1, interactive: true) { drawn += $0 }
        for step in 1...4 { bar.update(step: step, loss: 0.5, lr: 1e-4, seconds: 1, first: step == 1) }
        XCTAssertEqual(drawn.components(separatedBy: "\r").count, 5)
        XCTAssertTrue(drawn.hasSuffix("eta 0s\n"))
        XCTAssertEqual(ProgressReporter.duration(3725), "1h02m")
        XCTAssertEqual(ProgressReporter.duration(187), "3m07s")
    }
}
