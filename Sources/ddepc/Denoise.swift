import ArgumentParser
import Foundation
import Runtime


struct Denoise: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a denoising-pretrained model does: noisy, denoised and clean images, and the noise variance it removes.",
        discussion: """
            CHECKPOINT is a DDeP/DeP checkpoint or run directory; its artifact's `denoise` entry point runs the \
            denoising head (artifacts compiled before it existed need compiling again; pass that one with \
            --artifact). Each image is resized so its short side is the artifact's size S and its centre S×S \
            crop is noised as in training (--noise, --sigma and --target default to the run's own), with ε drawn \
            from --seed (--resize N takes the crop from the image resized to a short side of N instead). For each input NAME.ext, writes DIR/NAME_clean.png, NAME_noisy.png, NAME_denoised.png \
            and NAME_panel.png (the three side by side, enlarged --zoom times), and prints the mean squared \
            error of the predicted noise (1.0 is what predicting zero scores, so 1 − it is the fraction of the \
            noise variance removed) and the PSNR of the noisy and the denoised image. Existing files are not \
            overwritten.
            """)

    @Argument(help: "Checkpoint (.safetensors) or run directory.") var checkpoint: String
    @Argument(help: "Images (PNG/JPEG) or folders of images.") var images: [String]
    @Option(name: .shortAndLong, help: "Output directory.") var output: String
    @Option(help: "The artifact to run (default: the one recorded in the checkpoint).") var artifact: String?
    @Option(help: "Noise: scaled or simple (default: the run's).") var noise: NoiseKind?
    @Option(help: "Noise level σ (default: the run's, else 0.22).") var sigma: Double?
    @Option(help: "What the head was trained to predict: eps or x (default: the run's).") var target: DenoiseTargetKind?
    @Option(help: "Seed of the noise.") var seed: UInt64 = 1
    @Option(help: "Resize images so their short side has this many pixels before taking the centre crop (default: the artifact's size, i.e. the whole image; training crops photos as they are, so their own size matches training).")
    var resize: Int?
    @Option(help: "Enlargement of the side-by-side panel (default: to about 256 px).") var zoom: Int?

    func validate() throws {
        guard !images.isEmpty else { throw ValidationError("give at least one image or folder") }
        if let sigma, !(sigma > 0 && sigma.isFinite) { throw ValidationError("--sigma must be a positive number") }
        if let zoom, !(1...32).contains(zoom) { throw ValidationError("--zoom must be 1...32") }
        if let resize, resize <= 0 { throw ValidationError("--resize must be positive") }
    }

    func run() throws {
        try reportingErrors {
            let inputs = try namedImageInputs(images, verb: "denoise")
            let out = URL(fileURLWithPath: output)
            let suffixes = ["clean", "noisy", "denoised", "panel"]
            for input in inputs {
                for suffix in suffixes {
                    let file = out.appendingPathComponent("\(input.name)_\(suffix).png")
                    if FileManager.default.fileExists(atPath: file.path) {
                        throw RuntimeError("\(file.path) exists; choose another -o (nothing was overwritten)")
                    }
                }
            }
            let session = try InferenceSession(checkpoint: try resolveCheckpoint(checkpoint),
                                               artifact: artifact.map { URL(fileURLWithPath: $0) }, entry: "denoise")
            for note in session.notes { FileHandle.standardError.write(Data("note: \(note)\n".utf8)) }
            let config = session.metadata["config"].flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] } ?? [:]
            if let mode = session.metadata["mode"], mode != TrainMode.ddep.rawValue, mode != TrainMode.dep.rawValue {
                FileHandle.standardError.write(Data("note: \(session.checkpoint.lastPathComponent) is a \(mode) checkpoint: its denoising head was never trained\n".utf8))
            }
            let noise = self.noise ?? (config["noise"] as? String).flatMap(NoiseKind.init(rawValue:)) ?? .scaled
            let target = self.target ?? (config["target"] as? String).flatMap(DenoiseTargetKind.init(rawValue:)) ?? .eps
            let recordedSigma = (config["gamma"] as? NSNumber).map { g in noise == .scaled ? (1 / g.doubleValue - 1).squareRoot() : .nan }
            let sigma = self.sigma ?? (config["sigma"] as? NSNumber)?.doubleValue ?? recordedSigma.flatMap { $0.isFinite ? $0 : nil } ?? 0.22
            let denoiser = Denoiser(session: session, noise: noise, sigma: sigma, target: target)
            let size = session.size
            let crops = try inputs.map { Denoiser.centreCrop(try Image.load($0.url).rgb(), size: size, shortSide: resize) }
            let results = try denoiser.denoise(crops, seed: seed)
            try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
            let zoom = self.zoom ?? max(1, 256 / size)
            print(String(format: "%@ noise, σ = %.3g, %@ target, %d×%d crops", noise.rawValue, sigma, target.rawValue, size, size))
            for (input, result) in zip(inputs, results) {
                let base = out.appendingPathComponent(input.name).path
                try Denoiser.image(result.clean, size: size).writePNG(to: URL(fileURLWithPath: base + "_clean.png"))
                try Denoiser.image(result.noisy, size: size).writePNG(to: URL(fileURLWithPath: base + "_noisy.png"))
                try Denoiser.image(result.denoised, size: size).writePNG(to: URL(fileURLWithPath: base + "_denoised.png"))
                try Denoiser.panel(result, size: size, zoom: zoom).writePNG(to: URL(fileURLWithPath: base + "_panel.png"))
                print(String(format: "%@: noise MSE %.3f (%.0f%% of the noise variance removed), PSNR %.1f → %.1f dB",
                             input.name, result.noiseMSE, 100 * result.noiseVarianceRemoved, result.noisyPSNR, result.denoisedPSNR))
            }
            let mean = results.reduce(0) { $0 + $1.noiseMSE } / Double(max(results.count, 1))
            print(String(format: "mean noise MSE %.3f over %d images: %.0f%% of the noise variance removed; %@_{clean,noisy,denoised,panel}.png",
                         mean, results.count, 100 * (1 - mean), out.path + "/NAME"))
        }
    }
}
