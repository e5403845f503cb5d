import ArgumentParser
import Foundation
import Runtime

struct DumpIR: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dump-ir", abstract: "Print the final IR of an artifact.")
    @Argument(help: "Artifact directory (NAME.ddepc).") var artifact: String

    func run() throws {
        try reportingErrors {
            print(try Artifact(directory: URL(fileURLWithPath: artifact)).finalIR, terminator: "")
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an artifact's parameter table and entry points.")
    @Argument(help: "Artifact directory (NAME.ddepc).") var artifact: String

    func run() throws {
        try reportingErrors {
            let manifest = try Artifact(directory: URL(fileURLWithPath: artifact)).manifest
            let layout = manifest.layout
            let trained = Dictionary(grouping: layout.entries.flatMap { e in e.trains.map { ($0, e.name) } }, by: \.0)
            var total = 0
            print("parameter".padding(toLength: 52, withPad: " ", startingAt: 0) + "shape".padding(toLength: 20, withPad: " ", startingAt: 0) + "count      trained by")
            for slot in layout.params {
                let count = slot.shape.reduce(1, *)
                total += count
                let by = trained[slot.name]?.map(\.1).joined(separator: ",") ?? "-"
                print(slot.name.padding(toLength: 52, withPad: " ", startingAt: 0)
                      + "\(slot.shape)".padding(toLength: 20, withPad: " ", startingAt: 0)
                      + "\(count)".padding(toLength: 11, withPad: " ", startingAt: 0) + by)
            }
            print("total parameters: \(total) (\(layout.params.count) tensors, \(layout.paramsBytes) bytes); state \(layout.stateBytes) bytes")
            for entry in layout.entries {
                print("entry \(entry.name): inputs \(entry.inputs.map(\.name).joined(separator: ", ")); arena \(entry.arenaBytes) bytes; trains \(entry.trains.count) tensors")
            }
        }
    }
}
