import Foundation
import XCTest
#if canImport(FoundationXML)
import FoundationXML
#endif

@testable import Runtime

/// `ddepc report`: a run's summary and its loss curve.
final class ReportTests: TemporaryDirectoryTestCase {
    func testRunReportSummaryAndSVG() throws {
        let run = url("run")
        try FileManager.default.createDirectory(at: run, withIntermediateDirectories: true)
        var text = ""
        for step in 1...40 {
            text += String(format: "{\"step\":%d,\"loss\":%.6f,\"lr\":0.001,\"images_per_s\":10,\"seconds\":0.5}\n", step, 2.0 / Double(step))
        }
        text += "{\"step\":41,\"lo"  // cut short by a kill
        try text.write(to: run.appendingPathComponent("metrics.jsonl"), atomically: true, encoding: .utf8)
        try #"{"mode": "ddep", "steps": 50, "artifact": "a.ddepc"}"#.write(to: run.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        let report = try RunReport(run: run)
        XCTAssertEqual(report.points.count, 40)
        let summary = report.summary()
        XCTAssertTrue(summary.contains("steps 40 of 50"), summary)
        XCTAssertTrue(summary.contains("loss 2.00000 (step 1) → 0.05000 (step 40)"), summary)
        let svg = report.svg()
        XCTAssertTrue(svg.hasPrefix("<svg"))
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count, 3, "raw and smoothed curves")
        XCTAssertNoThrow(try XMLDocument(xmlString: svg))
        XCTAssertThrowsError(try RunReport(run: url("nothing")))
    }
}
