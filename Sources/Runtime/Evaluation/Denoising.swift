import ABI
import Foundation

/// What a denoising-pretrained model does to a noisy image: the noise it is
/// given, what it predicts, and the clean image it implies.
///
/// For scaled noise x̃ = a·x + b·ε (a = √γ, b = √(1−γ)) or simple noise
/// x̃ = x + σ·ε (a = 1, b = σ), a head trained on the ε target predicts ε̂ and
/// the denoised image is x̂ = (x̃ − b·ε̂)/a; one trained on the x target
/// predicts x̂ itself (and ε̂ = (x̃ − a·x̂)/b). `noiseMSE` = mean (ε̂ − ε)² is
/// the training loss of the ε target: 1 is what predicting zero scores (ε has
/// unit variance), so 1 − noiseMSE is the fraction of the noise variance the
/// model removes.
public struct DenoisingResult {
    /// [3, S, S] planes in [-1, 1] (not clipped).
    public var clean, noisy, denoised: [Float]
    public var noiseMSE: Double
    /// PSNR (dB, for a [-1, 1] range) of the noisy and the denoised image against the clean one.
    public var noisyPSNR, denoisedPSNR: Double

    public var noiseVarianceRemoved: Double { 1 - noiseMSE }
}

public final class Denoiser {
    public let session: InferenceSession
    public let a, b: Double
    public let target: DenoiseTargetKind

    public init(session: InferenceSession, noise: NoiseKind, sigma: Double, target: DenoiseTargetKind) {
        self.session = session
        self.target = target
        switch noise {
        case .scaled:
            let gamma = 1 / (1 + sigma * sigma)
            (a, b) = (gamma.squareRoot(), (1 - gamma).squareRoot())
        case .simple:
            (a, b) = (1, sigma)
        }
    }

    /// Denoises S×S crops [3, S, S] (values in [-1, 1]), the session's batch at
    /// a time; ε is drawn from `seed` (one stream per image, by its index).
    public func denoise(_ images: [[Float]], seed: UInt64) throws -> [DenoisingResult] {
        let (batch, size) = (session.batch, session.size)
        let plane = 3 * size * size
        precondition(images.allSatisfy { $0.count == plane }, "denoise: every image must be [3, \(size), \(size)]")
        var results: [DenoisingResult] = []
        for start in stride(from: 0, to: images.count, by: batch) {
            let chunk = Array(images[start..<min(start + batch, images.count)])
            var noises: [[Float]] = []
            var input = [Float](repeating: 0, count: batch * plane)
            for (i, image) in chunk.enumerated() {
                var rng = SplitMix64(seed: seed &+ UInt64(start + i) &* 0x9E37_79B9_7F4A_7C15)
                let noise = (0..<plane).map { _ in Float(Self.gaussian(&rng)) }
                noises.append(noise)
                for k in 0..<plane { input[i * plane + k] = Float(a) * image[k] + Float(b) * noise[k] }
            }
            let prediction = try session.output(input, StepSignature.prediction)
            for (i, clean) in chunk.enumerated() {
                let noisy = Array(input[(i * plane)..<((i + 1) * plane)])
                let predicted = Array(prediction[(i * plane)..<((i + 1) * plane)])
                let (denoised, epsHat): ([Float], [Float])
                switch target {
                case .eps:
                    epsHat = predicted
                    denoised = (0..<plane).map { (noisy[$0] - Float(b) * predicted[$0]) / Float(a) }
                case .x:
                    denoised = predicted
                    epsHat = (0..<plane).map { (noisy[$0] - Float(a) * predicted[$0]) / Float(b) }
                }
                func mse(_ u: [Float], _ v: [Float]) -> Double {
                    zip(u, v).reduce(0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) } / Double(u.count)
                }
                func psnr(_ u: [Float]) -> Double {
                    let clipped = u.map { min(max($0, -1), 1) }
                    return 10 * log10(4 / max(mse(clipped, clean), 1e-12))
                }
                results.append(DenoisingResult(clean: clean, noisy: noisy, denoised: denoised, noiseMSE: mse(epsHat, noises[i]),
                                               noisyPSNR: psnr(noisy), denoisedPSNR: psnr(denoised)))
            }
        }
        return results
    }

    /// A standard normal draw (Box–Muller).
    static func gaussian(_ rng: inout SplitMix64) -> Double {
        let u1 = Double((rng.next() >> 11) + 1) * 0x1p-53, u2 = Double(rng.next() >> 11) * 0x1p-53
        return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
    }

    /// The centre S×S crop of `image` after resizing its short side to
    /// `shortSide` (default S: the whole image's short side; bilinear), as
    /// [3, S, S] in [-1, 1].
    public static func centreCrop(_ image: Image, size: Int, shortSide: Int? = nil) -> [Float] {
        let scale = Double(max(shortSide ?? size, size)) / Double(min(image.width, image.height))
        let w = max(size, Int((Double(image.width) * scale).rounded())), h = max(size, Int((Double(image.height) * scale).rounded()))
        let planes = image.normalizedPlanes(width: w, height: h)
        let (x0, y0) = ((w - size) / 2, (h - size) / 2)
        var out = [Float](repeating: 0, count: 3 * size * size)
        for c in 0..<3 {
            for y in 0..<size {
                for x in 0..<size { out[(c * size + y) * size + x] = planes[(c * h + y0 + y) * w + x0 + x] }
            }
        }
        return out
    }

    /// [3, S, S] planes in [-1, 1] → an RGB image, each pixel repeated `zoom`×`zoom`.
    public static func image(_ planes: [Float], size: Int, zoom: Int = 1) throws -> Image {
        let side = size * zoom
        var pixels = [UInt8](repeating: 0, count: side * side * 3)
        for y in 0..<side {
            for x in 0..<side {
                for c in 0..<3 {
                    let v = (planes[(c * size + y / zoom) * size + x / zoom] + 1) * 127.5
                    pixels[(y * side + x) * 3 + c] = UInt8(min(max(v.rounded(), 0), 255))
                }
            }
        }
        return try Image(width: side, height: side, channels: 3, pixels: pixels)
    }

    /// Clean | noisy | denoised side by side, with a `gap` of white between.
    public static func panel(_ result: DenoisingResult, size: Int, zoom: Int, gap: Int = 4) throws -> Image {
        let parts = try [result.clean, result.noisy, result.denoised].map { try image($0, size: size, zoom: zoom) }
        let side = size * zoom, width = 3 * side + 2 * gap
        var pixels = [UInt8](repeating: 255, count: width * side * 3)
        for (k, part) in parts.enumerated() {
            for y in 0..<side {
                let row = (y * width + k * (side + gap)) * 3
                pixels.replaceSubrange(row..<(row + side * 3), with: part.pixels[(y * side * 3)..<((y + 1) * side * 3)])
            }
        }
        return try Image(width: width, height: side, channels: 3, pixels: pixels)
    }
}
