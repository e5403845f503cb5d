import Driver
import Foundation
import IR
import ModelZoo
import Runtime

/// The module of MODEL.swift (evaluated), GRAPH.ddir (parsed and, with
/// `verify`, checked as written) or a zoo model, built for `shape`.
func loadModule(_ model: String, shape: ModelShapeOptions, modelTimeout: Double, verify: Bool) throws -> Module {
    if model.hasSuffix(".swift") {
        return try ModelFileEvaluator.evaluate(URL(fileURLWithPath: model), batch: shape.batch, size: shape.size,
                                               classes: shape.classes, imageClasses: shape.imageClasses, timeout: modelTimeout)
    }
    if model.hasSuffix(".ddir") {
        let (module, written) = try Parser.parseLocated(try readUTF8Text(URL(fileURLWithPath: model)), name: model)
        guard !module.functions.isEmpty else {
            throw RuntimeError("\(model) holds no functions; a .ddir file defines at least one `func @name(...) { ... }`")
        }
        if let silent = module.functions.first(where: { $0.outputs.isEmpty && $0.updates.isEmpty }) {
            throw RuntimeError("\(model): @\(silent.name) returns and updates nothing, so its entry point would compute nothing; end it with `return %N as \"name\"`")
        }
        // The file is checked as written: a declared type the op does not
        // produce is an error at its line, not silently re-inferred.
        if verify { try Verifier.verify(module, writtenAt: written) }
        return module
    }
    guard let zooModel = Zoo.models[model] else {
        throw RuntimeError("'\(model)' is not a .swift model file, a .ddir file or a zoo model (\(Zoo.models.keys.sorted().joined(separator: ", ")))")
    }
    return try buildModule(zooModel, config: EntryConfig(batch: shape.batch, size: shape.size, classes: shape.classes,
                                                         imageClasses: shape.imageClasses))
}
