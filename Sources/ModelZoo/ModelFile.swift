import Foundation
import IR

/// The entry of a model file: a Swift script compiled against ModelZoo whose
/// last line is `ModelFile.main(MyModel(...))`. Run with
/// `--batch N --size S --classes C --out PATH` (defaults 4, 64, 2, `-` =
/// stdout; also `--entries infer,finetune_step,...`),
/// it writes the module's textual IR; on an error it prints
/// `file:line: error: message` to stderr and exits 1.
public enum ModelFile {
    /// Parsed command line.
    public struct Options: Equatable {
        public var config = EntryConfig()
        /// Output path; "-" is stdout.
        public var out = "-"
        public init() {}
    }

    public static let usage = "usage: MODEL [--batch N] [--size S] [--classes C] [--image-classes K] [--entries NAME,...] [--out PATH|-]"

    public static func parse(_ arguments: [String]) throws -> Options {
        var options = Options()
        var rest = arguments[...]
        func value(_ flag: String) throws -> String {
            guard let next = rest.popFirst() else { throw IRError("\(flag) needs a value\n\(usage)") }
            return next
        }
        func integer(_ flag: String) throws -> Int {
            let text = try value(flag)
            guard let n = Int(text) else { throw IRError("\(flag) expects an integer, got '\(text)'") }
            return n
        }
        while let flag = rest.popFirst() {
            switch flag {
            case "--batch": options.config.batch = try integer(flag)
            case "--size": options.config.size = try integer(flag)
            case "--classes": options.config.classes = try integer(flag)
            case "--image-classes": options.config.imageClasses = try integer(flag)
            case "--out": options.out = try value(flag)
            case "--entries":
                options.config.entries = try value(flag).split(separator: ",").map { name in
                    guard let entry = EntryPoint(rawValue: String(name)) else {
                        throw IRError("unknown entry point '\(name)' (known: \(EntryPoint.allCases.map(\.rawValue).joined(separator: ", ")))")
                    }
                    return entry
                }
            default:
                throw IRError("unknown option '\(flag)'\n\(usage)")
            }
        }
        return options
    }

    /// Build `model` for the command line `arguments` (without the program
    /// name) and return the printed module and where it should go.
    public static func render(_ model: any SegmentationModel, arguments: [String]) throws -> (text: String, out: String) {
        let options = try parse(arguments)
        let module = try buildModule(model, config: options.config)
        return (Printer.print(module), options.out)
    }

    /// Build, print and write the module; report errors as `file:line: error:`
    /// and exit 1. Errors without a location point at this call.
    public static func main(_ model: any SegmentationModel, file: StaticString = #fileID, line: UInt = #line) {
        do {
            let (text, out) = try render(model, arguments: Array(CommandLine.arguments.dropFirst()))
            if out == "-" {
                FileHandle.standardOutput.write(Data(text.utf8))
            } else {
                do {
                    try text.write(toFile: out, atomically: true, encoding: .utf8)
                } catch {
                    throw IRError("cannot write \(out): \(error.localizedDescription)")
                }
            }
        } catch var error as IRError {
            if error.loc == nil { error.loc = BuildContext.location(file, line).0 }
            fail(error.description)
        } catch {
            fail("\(BuildContext.location(file, line).0): error: \(error)")
        }
    }

    private static func fail(_ text: String) -> Never {
        FileHandle.standardError.write(Data((text + "\n").utf8))
        exit(1)
    }
}
