import ArgumentParser
import Foundation
import Runtime

@main
struct Ddepc: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ddepc",
        abstract: "Compile and train segmentation models with decoder denoising pretraining (DDeP).",
        subcommands: [Compile.self, DumpIR.self, Train.self, Eval.self, Predict.self, Report.self, Inspect.self,
                      ImportWeights.self, MakeScenes.self, Bench.self])
}

/// Runs a command body and turns any error into `error: ...` on stderr and
/// exit status 1 (argument errors are reported by ArgumentParser itself).
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        // Foundation's file errors name neither the path nor the reason readably.
        var text = FileProblem.message(error) ?? "\(error)"
        if !text.hasPrefix("error:") && !text.contains(": error:") { text = "error: " + text }
        FileHandle.standardError.write(Data((text + "\n").utf8))
        throw ExitCode(1)
    }
}
