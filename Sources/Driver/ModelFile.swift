import Foundation
import IR
import Runtime

/// Evaluates a model file the way SwiftPM evaluates `Package.swift`: compile
/// it with the toolchain's `swiftc` against the DSL library (`libModelZoo.so`,
/// built by this package), run it, and parse the IR it prints.
public enum ModelFileEvaluator {
    /// Where `libModelZoo.so` and `Modules/ModelZoo.swiftmodule` live:
    /// `$DDEPC_DSL_DIR`, else beside the running executable.
    public static func dslDirectory() throws -> URL {
        var candidates: [URL] = []
        if let env = ProcessInfo.processInfo.environment["DDEPC_DSL_DIR"] {
            candidates.append(URL(fileURLWithPath: env))
        }
        if let executable = Bundle.main.executableURL?.resolvingSymlinksInPath() {
            candidates.append(executable.deletingLastPathComponent())
        }
        for dir in candidates where FileManager.default.fileExists(atPath: dir.appendingPathComponent("libModelZoo.so").path) {
            return dir
        }
        throw RuntimeError("""
            cannot find the DSL library libModelZoo.so (looked in \(candidates.map(\.path).joined(separator: ", "))).
            Build the package (`swift build`) and run ddepc from its build folder, or set DDEPC_DSL_DIR to that folder.
            """)
    }

    /// How long a model file may take to build its model, by default.
    public static let defaultTimeout: Double = 600

    /// `timeout`: seconds the compiled model file may run (building the
    /// model); a file that loops forever is stopped with its process group.
    public static func evaluate(_ file: URL, batch: Int, size: Int, classes: Int, imageClasses: Int = 10,
                                timeout: Double = defaultTimeout) throws -> Module {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: file.path, isDirectory: &isDirectory) else {
            throw RuntimeError("model file \(file.path) does not exist")
        }
        guard !isDirectory.boolValue else {
            throw RuntimeError("\(file.path) is a folder, not a model file; pass the .swift file that calls ModelFile.main(model)")
        }
        let dsl = try dslDirectory()
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-model-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let cleanup = Interruption.shared.removeOnInterrupt(work)
        defer {
            try? FileManager.default.removeItem(at: work)
            Interruption.shared.forget(cleanup)
        }
        let binary = work.appendingPathComponent("model")
        do {
            try runTool("swiftc", ["-I", dsl.appendingPathComponent("Modules").path, "-L", dsl.path, "-lModelZoo",
                                   "-Xlinker", "-rpath", "-Xlinker", dsl.path, "-module-name", "ModelFile",
                                   file.path, "-o", binary.path])
        } catch let error as ToolError {
            let errors = compilerErrors(error.stderr + error.stdout)
            throw RuntimeError("the model file \(file.path) does not compile:\n"
                               + (errors.isEmpty ? "swiftc exited with status \(error.status) and printed nothing" : errors))
        }
        let ddir = work.appendingPathComponent("model.ddir")
        do {
            try runTool(binary.path, ["--batch", "\(batch)", "--size", "\(size)", "--classes", "\(classes)",
                                      "--image-classes", "\(imageClasses)", "--out", ddir.path], timeout: timeout)
        } catch is ToolTimeout {
            throw RuntimeError("\(file.path) did not finish building the model within \(Int(timeout)) s and was stopped; check it for an endless loop, or allow more time with --model-timeout SECONDS")
        } catch let error as ToolError {
            let message = error.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            throw RuntimeError("the model file failed while building the model:\n\(message.isEmpty ? "exit status \(error.status)" : message)")
        }
        guard let text = try? String(contentsOf: ddir, encoding: .utf8) else {
            throw RuntimeError("\(file.path) ran but did not call ModelFile.main(model); end the file with ModelFile.main(yourModel) so ddepc receives the model")
        }
        return try Parser.parse(text, name: file.lastPathComponent)
    }

    /// The compiler's diagnostics, without the toolchain's driver noise.
    static func compilerErrors(_ text: String) -> String {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let kept = lines.filter { !$0.hasPrefix("error: link command failed") && !$0.contains("<unknown>:0:") }
        return kept.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
