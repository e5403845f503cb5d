import ArgumentParser
import Foundation
import Runtime

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Summarize a training run and draw its loss curve as SVG.")

    @Argument(help: "Run directory (ddepc train --out).") var directory: String
    @Option(help: "Where to write the loss curve (default RUN/loss.svg).") var svg: String?

    func run() throws {
        try reportingErrors {
            let report = try RunReport(run: URL(fileURLWithPath: directory))
            print(report.summary(), terminator: "")
            let output = URL(fileURLWithPath: svg ?? (directory as NSString).appendingPathComponent("loss.svg"))
            try writeAtomically(Data(report.svg().utf8), to: output)
            print("loss curve: \(output.path)")
        }
    }
}
