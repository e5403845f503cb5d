import ArgumentParser
import Foundation
import Runtime

@main
struct Ddepc: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ddepc",
        abstract: "Compile and train segmentation models with decoder denoising pretraining (DDeP).",
        subcommands: [Compile.self, DumpIR.self, Train.self, Eval.self, Predict.self, Denoise.self, Report.self, Inspect.self,
                      ImportWeights.self, MakeScenes.self, Bench.self, Tune.self])

    static func main() {
        main(attachingNegativeValues(Array(CommandLine.arguments.dropFirst())))
    }

    /// ArgumentParser reads `--steps -1` as a missing value followed by an
    /// option "-1", and says "Missing value"; `--steps=-1` reaches the
    /// option, whose check then says what is wrong with the number.
    static func attachingNegativeValues(_ arguments: [String]) -> [String] {
        var result: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--" { return result + arguments[index...] }
            if argument.hasPrefix("--"), !argument.contains("="), index + 1 < arguments.count,
               isNegativeNumber(arguments[index + 1]) {
                result.append(argument + "=" + arguments[index + 1])
                index += 2
            } else {
                result.append(argument)
                index += 1
            }
        }
        return result
    }

    /// "-1", "-0.5", "-.5", "-1/8", "-5%", "-1e-3", "-inf": a value, not an option.
    static func isNegativeNumber(_ text: String) -> Bool {
        guard text.hasPrefix("-"), text.count > 1 else { return false }
        let rest = text.dropFirst()
        if rest.lowercased() == "inf" || rest.lowercased() == "infinity" || rest.lowercased() == "nan" { return true }
        guard let first = rest.first, first.isNumber || (first == "." && rest.dropFirst().first?.isNumber == true) else { return false }
        return rest.allSatisfy { $0.isNumber || ".,/%eE+-".contains($0) }
    }
}

/// Runs a command body and turns any error into `error: ...` on stderr and
/// exit status 1 (argument errors are reported by ArgumentParser itself).
/// `process` names the process of a data-parallel run ("rank 1 of 2: ").
func reportingErrors(process: String = "", _ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        // Foundation's file errors name neither the path nor the reason readably.
        var text = FileProblem.message(error) ?? "\(error)"
        if !text.hasPrefix("error:") && !text.contains(": error:") { text = "error: " + process + text } else { text = process + text }
        FileHandle.standardError.write(Data((text + "\n").utf8))
        throw ExitCode(1)
    }
}
