import ArgumentParser
import Foundation
import Runtime

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate a checkpoint on a labeled set: mIoU, per-class IoU, pixel accuracy, confusion matrix.",
        discussion: inferenceDiscussion + """


        Prints the tables and writes JSON (--json; default eval.json in the checkpoint's run directory). \
        \(EvaluationReport.convention).
        """)

    @Argument(help: "Checkpoint (.safetensors) or run directory.") var checkpoint: String
    @Option(help: "Labeled data set (generic images/ + masks/, Cityscapes, ADE20K or Pascal Context layout).") var data: String
    @OptionGroup var labeled: LabeledDataOptions
    @OptionGroup var inference: InferenceFlags
    @Option(help: "Write the results as JSON here.") var json: String?
    @Option(help: "Evaluate only the first N images (in name order).") var limit: Int?

    func validate() throws {
        if let limit, limit <= 0 { throw ValidationError("--limit must be positive") }
    }

    func run() throws {
        try reportingErrors {
            let checkpointURL = try resolveCheckpoint(checkpoint)
            let session = try inference.session(checkpoint: checkpointURL)
            var dataset = try LabeledDataset(root: URL(fileURLWithPath: data), layout: labeled.layout, split: labeled.split ?? "val",
                                             classes: session.classes)
            guard dataset.classes == session.classes else {
                throw RuntimeError("\(data) has \(dataset.classes) classes but the model predicts \(session.classes)")
            }
            if let limit, limit < dataset.count { dataset = try dataset.restricted(to: dataset.samples.prefix(max(limit, 1)).map(\.name)) }
            let options = try inference.options
            let predictor = SegmentationPredictor(session: session, options: options)
            let interactive = isatty(STDERR_FILENO) != 0
            let matrix = try evaluate(predictor, on: dataset) { done, total in
                if interactive {
                    FileHandle.standardError.write(Data("\r\u{1B}[Kevaluated \(done)/\(total) images\(done == total ? "\n" : "")".utf8))
                } else if done == total || done % max(1, total / 10) == 0 {
                    FileHandle.standardError.write(Data("evaluated \(done)/\(total) images\n".utf8))
                }
            }
            let details = ["checkpoint": checkpointURL.path, "artifact": session.artifact.directory.path, "data": data,
                           "layout": dataset.layout.rawValue, "split": dataset.split, "flip": "\(options.flip)",
                           "scales": options.scales.map { "\($0)" }.joined(separator: ","),
                           "resize": options.resizeShortSide.map(String.init) ?? "none",
                           "tile": "\(session.size)", "stride": "\(options.stride ?? session.size)"]
            let report = EvaluationReport(matrix: matrix, classNames: dataset.classNames, images: dataset.count, details: details)
            print(report.table(), terminator: "")
            let output = json.map { URL(fileURLWithPath: $0) } ?? runDirectory(of: checkpointURL).appendingPathComponent("eval.json")
            try writeAtomically(try report.json(), to: output)
            print("wrote \(output.path)")
        }
    }
}

/// The run directory a checkpoint belongs to (RUN for RUN/checkpoints/X), else its folder.
func runDirectory(of checkpoint: URL) -> URL {
    let folder = checkpoint.resolvingSymlinksInPath().deletingLastPathComponent()
    return folder.lastPathComponent == "checkpoints" ? folder.deletingLastPathComponent() : folder
}
