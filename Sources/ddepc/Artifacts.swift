import ABI
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
    static let configuration = CommandConfiguration(
        abstract: "Print an artifact's parameter table and entry points.",
        discussion: """
            One row per weight: name, shape, element count and, per entry point, what the entry does with it: \
            train (differentiated and updated), frozen (read, never changed: the encoder in pretrain_step), \
            read (used by a step without training, e.g. infer) or - (not used). Totals per entry point follow.
            """)
    @Argument(help: "Artifact directory (NAME.ddepc).") var artifact: String

    /// What one entry point does with one weight.
    enum Use: String { case train, frozen, read, none = "-" }

    static func uses(_ entry: BufferLayout.Entry) -> [String: Use] {
        var uses: [String: Use] = [:]
        let differentiated = Set(entry.outputs.map(\.name).filter { $0.hasPrefix(StepSignature.gradientPrefix) }.map { String($0.dropFirst(StepSignature.gradientPrefix.count)) })
        for name in entry.trainable ?? [] { uses[name] = differentiated.contains(name) || entry.trains.contains(name) ? .train : .read }
        for name in entry.frozen ?? [] { uses[name] = .frozen }
        for name in entry.trains { uses[name] = .train }
        return uses
    }

    func run() throws {
        try reportingErrors {
            let manifest = try Artifact(directory: URL(fileURLWithPath: artifact)).manifest
            var layout = manifest.layout
            // Preparers (prepare_infer) are named on the line of the entry point they prepare for.
            let preparers = Set(layout.entries.compactMap(\.preparedBy))
            layout.entries.removeAll { preparers.contains($0.name) }
            let uses = layout.entries.map(Self.uses)
            let nameWidth = max(40, (layout.params.map(\.name.count).max() ?? 0) + 2)
            func pad(_ text: String, _ width: Int) -> String { text.padding(toLength: max(width, text.count + 1), withPad: " ", startingAt: 0) }
            var header = pad("parameter", nameWidth) + pad("shape", 20) + pad("count", 11)
            for entry in layout.entries { header += pad(entry.name, entry.name.count + 2) }
            print(header)
            var total = 0
            for slot in layout.params {
                let count = slot.shape.reduce(1, *)
                total += count
                var row = pad(slot.name, nameWidth) + pad("\(slot.shape)", 20) + pad("\(count)", 11)
                for (entry, use) in zip(layout.entries, uses) { row += pad((use[slot.name] ?? .none).rawValue, entry.name.count + 2) }
                print(row)
            }
            print("total: \(total) parameters in \(layout.params.count) tensors (\(layout.paramsBytes) bytes); state \(layout.stateBytes) bytes")
            let sizes = Dictionary(uniqueKeysWithValues: layout.params.map { ($0.name, $0.shape.reduce(1, *)) })
            for (entry, use) in zip(layout.entries, uses) {
                func sum(_ kind: Use) -> Int { use.filter { $0.value == kind }.reduce(0) { $0 + (sizes[$1.key] ?? 0) } }
                var parts: [String] = []
                if sum(.train) > 0 { parts.append("trains \(sum(.train))") }
                if sum(.frozen) > 0 { parts.append("frozen \(sum(.frozen))") }
                if sum(.read) > 0 { parts.append("reads \(sum(.read))") }
                let prepared = entry.preparedBy.map { "; weights prepared by \($0)" } ?? ""
                print("entry \(entry.name): \(parts.joined(separator: ", ")); inputs \(entry.inputs.map(\.name).joined(separator: ", ")); arena \(entry.arenaBytes) bytes\(prepared)")
            }
            if manifest.dataParallel == true {
                print("data-parallel: batch \(manifest.batch) per process; `mpirun -np N ddepc train` trains on N × \(manifest.batch)")
            }
        }
    }
}
