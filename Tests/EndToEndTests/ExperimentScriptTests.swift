import Foundation
import XCTest

/// scripts/experiment.py's resume rule, through its own check
/// (tools/test_experiment_resume.py): a stand-in for ddepc records the
/// calls, so a finished run must not run again, a lost result is redone
/// alone, and an unfinished pretraining run continues with --resume.
final class ExperimentScriptTests: XCTestCase {
    func testTheAblationScriptResumesWithoutRedoingFinishedRuns() throws {
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "tools/test_experiment_resume.py"]
        process.currentDirectoryURL = repository
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, text)
        XCTAssertTrue(text.contains("experiment resume: ok"), text)
    }
}
