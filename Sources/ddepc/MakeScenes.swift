import ArgumentParser
import Foundation
import Runtime

struct MakeScenes: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "make-scenes",
        abstract: "Compose a labeled segmentation set from Fashion-MNIST objects (images/, masks/, classes.txt).")

    @Option(name: .customLong("fashion-mnist"), help: "Folder with the Fashion-MNIST idx .gz files.")
    var fashionMNIST = FashionMNIST.defaultDirectory.path
    @Option(help: "Which Fashion-MNIST split the objects come from: train or test.") var split = "train"
    @Option(help: "Number of scenes.") var count = 200
    @Option(help: "Scene side in pixels.") var size = 64
    @Option(help: "Seed for object choice and placement.") var seed: UInt64 = 1
    @Option(name: .shortAndLong, help: "Output folder (new or empty).") var output: String

    func validate() throws {
        guard count > 0, size >= 16 else { throw ValidationError("--count must be positive and --size at least 16") }
        guard split == "train" || split == "test" else { throw ValidationError("--split must be train or test") }
    }

    func run() throws {
        try reportingErrors {
            var composer = SceneComposer()
            composer.size = size
            try composer.requireMemory()
            let source = try FashionMNIST(directory: URL(fileURLWithPath: fashionMNIST), split: split == "train" ? .train : .test)
            try composer.write(from: source, count: count, seed: seed, to: URL(fileURLWithPath: output))
            print("wrote \(count) scenes of \(size)×\(size) px with \(SceneComposer.classNames.count) classes to \(output)")
        }
    }
}
