import ArgumentParser
import Foundation
import Runtime

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Segment images: colour-coded mask PNGs, overlays on the inputs, and class-id PNGs.",
        discussion: inferenceDiscussion + """


        For each input NAME.ext, writes DIR/NAME_mask.png (PASCAL VOC colours), DIR/NAME_overlay.png \
        (the mask blended over the image) and DIR/NAME_labels.png (8-bit class ids). Folders are searched \
        recursively; their files are named by their path inside the folder, with / replaced by _.
        """)

    @Argument(help: "Checkpoint (.safetensors) or run directory.") var checkpoint: String
    @Argument(help: "Images (PNG/JPEG) or folders of images.") var images: [String]
    @Option(name: .shortAndLong, help: "Output directory.") var output: String
    @OptionGroup var inference: InferenceFlags
    @Option(help: "Opacity of the mask colours in the overlay (0...1).") var alpha = 0.5

    func validate() throws {
        guard (0...1).contains(alpha) else { throw ValidationError("--alpha must be in [0, 1]") }
        guard !images.isEmpty else { throw ValidationError("give at least one image or folder") }
    }

    func run() throws {
        try reportingErrors {
            let inputs = try namedImageInputs(images, verb: "predict")
            let session = try inference.session(checkpoint: try resolveCheckpoint(checkpoint))
            let predictor = SegmentationPredictor(session: session, options: try inference.options)
            let out = URL(fileURLWithPath: output)
            try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
            for input in inputs {
                let image = try Image.load(input.url).rgb()
                // A large image at a small model size is thousands of calls: say so before the wait.
                let calls = predictor.calls(width: image.width, height: image.height)
                if calls >= 1000 {
                    FileHandle.standardError.write(Data("note: \(input.url.path) is \(image.width)×\(image.height) px: \(calls) calls of the \(session.size)×\(session.size) model; this takes a while (--resize makes it smaller)\n".utf8))
                }
                let mask = try predictor.predict(image)
                try Palette.colorize(mask).writePNG(to: out.appendingPathComponent(input.name + "_mask.png"))
                try Palette.overlay(mask, on: image, alpha: alpha).writePNG(to: out.appendingPathComponent(input.name + "_overlay.png"))
                try mask.image.writePNG(to: out.appendingPathComponent(input.name + "_labels.png"))
                let counts = Dictionary(grouping: mask.labels, by: { $0 }).mapValues(\.count)
                let top = counts.sorted { $0.value > $1.value }.prefix(3)
                    .map { String(format: "class %d %.0f%%", Int($0.key), 100 * Double($0.value) / Double(mask.labels.count)) }
                print("\(input.url.path) → \(out.appendingPathComponent(input.name).path)_{mask,overlay,labels}.png (\(top.joined(separator: ", ")))")
            }
        }
    }
}
