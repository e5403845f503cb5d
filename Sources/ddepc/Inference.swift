import ArgumentParser
import Foundation
import Runtime

/// How `eval` and `predict` run a fixed-size model on images of any size.
struct InferenceFlags: ParsableArguments {
    @Option(help: "The artifact to run (default: the one recorded in the checkpoint). Weights are matched by name and shape.")
    var artifact: String?
    @Flag(help: "Also predict the mirrored image and average (test-time flip).") var flip = false
    @Option(help: "Comma-separated scale factors to average, e.g. 0.5,0.75,1.0,1.25,1.5,1.75.") var scales = "1"
    @Option(help: "Resize images so their short side has this many pixels before scaling (default: as they are).")
    var resize: Int?
    @Option(help: "Tile stride in pixels (default: the artifact's input size).") var stride: Int?

    func parsedScales() throws -> [Double] {
        let values = scales.split(separator: ",", omittingEmptySubsequences: false).map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ $0 != nil && $0! > 0 && $0!.isFinite }) else {
            throw ValidationError("--scales expects positive numbers separated by commas, e.g. 0.5,1.0,1.5 (got '\(scales)')")
        }
        return values.map { $0! }
    }

    func validate() throws {
        _ = try parsedScales()
        if let resize, resize <= 0 { throw ValidationError("--resize must be positive") }
        if let stride, stride <= 0 { throw ValidationError("--stride must be positive") }
    }

    var options: InferenceOptions {
        get throws { InferenceOptions(flip: flip, scales: try parsedScales(), resizeShortSide: resize, stride: stride) }
    }

    func session(checkpoint: URL) throws -> InferenceSession {
        let session = try InferenceSession(checkpoint: checkpoint, artifact: artifact.map { URL(fileURLWithPath: $0) })
        for note in session.notes { FileHandle.standardError.write(Data("note: \(note)\n".utf8)) }
        return session
    }
}

/// The inference help shared by eval and predict.
let inferenceDiscussion = """
    CHECKPOINT is a .safetensors checkpoint or a run directory (its newest checkpoint). A checkpoint \
    records the artifact it was trained with (path and IR hash) and runs with it; --artifact picks \
    another (the same model compiled again, e.g. with another --batch or --size: weights are matched \
    by name and shape). The artifact's infer entry point runs at one fixed batch and size S (set by `ddepc compile --batch --size`); images \
    of any size are handled on the host: each is resized bilinearly (--resize, then each of --scales), \
    covered by S×S tiles (--stride; the last tile of a row or column is aligned with the edge, so a \
    1024×2048 Cityscapes image at S = 1024 is two halves), the tiles' logits are averaged where they \
    overlap, resized bilinearly back to the image's size and softmaxed; probabilities are averaged over \
    scales and flips.
    """

/// The images named on the command line (files, or folders searched
/// recursively) and the name each one's outputs take (`NAME_*.png`; a
/// folder's subpaths joined by `_`). Two inputs that would write the same
/// files are refused: `verb` says what the command does with them.
func namedImageInputs(_ paths: [String], verb: String) throws -> [(url: URL, name: String)] {
    var inputs: [(url: URL, name: String)] = []
    for path in paths {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw RuntimeError("\(path): no such file or folder")
        }
        if isDirectory.boolValue {
            let folder = try ImageCollection(directory: URL(fileURLWithPath: path))
            for relative in folder.relativePaths {
                inputs.append((folder.directory.appendingPathComponent(relative),
                               (relative as NSString).deletingPathExtension.replacingOccurrences(of: "/", with: "_")))
            }
        } else {
            let url = URL(fileURLWithPath: path)
            inputs.append((url, url.deletingPathExtension().lastPathComponent))
        }
    }
    var seen: [String: URL] = [:]
    for input in inputs {
        if let other = seen[input.name] {
            throw RuntimeError("\(other.path) and \(input.url.path) would both be written as \(input.name)_*.png; \(verb) them into different folders")
        }
        seen[input.name] = input.url
    }
    return inputs
}
