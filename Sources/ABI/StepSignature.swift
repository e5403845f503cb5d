import Foundation

/// What a compiled step's inputs mean, by name, and the optimizer its
/// update computes: what the passes that build a step and the trainer that
/// feeds it must agree on, stated once.
public enum StepSignature {
    // The model's inputs, declared by the DSL's entry points
    // (ModelZoo/Entry.swift, which builds every zoo model's; a test checks
    // them against these).
    /// Images, [B, 3, S, S] in [-1, 1].
    public static let image = "x"
    /// Class indices: per pixel [B, S, S] (segmentation) or per image [B].
    public static let labels = "labels"
    /// The counter-based noise's seed, one i64.
    public static let seed = "seed"
    /// The noisy image is noise_a·x + noise_b·ε (one pair, or one per image).
    public static let noiseA = "noise_a", noiseB = "noise_b"
    /// The denoising head predicts target_noise·ε + target_image·x.
    public static let targetNoise = "target_noise", targetImage = "target_image"

    // The optimizer's inputs, one scalar each (see `AdamSettings`).
    /// The learning rate of this step.
    public static let learningRate = "lr"
    /// 1/(1−β₁ᵗ) and 1/(1−β₂ᵗ) at step t (`AdamSettings.biasCorrections`).
    public static let biasCorrection1 = "bc1", biasCorrection2 = "bc2"
    /// Decoupled weight decay (AdamW).
    public static let weightDecay = "weight_decay"
    /// Decay added to the gradient (classic Adam's L2).
    public static let l2 = "l2"
    /// > 0: gradients scaled to at most this global L2 norm (only in steps
    /// compiled with clipping).
    public static let clipNorm = "clip_norm"

    /// The scalar inputs every step with an optimizer takes.
    public static let optimizerInputs = [learningRate, biasCorrection1, biasCorrection2, weightDecay, l2]
    public static let modelInputs = [image, labels, seed, noiseA, noiseB, targetNoise, targetImage]
    /// Every input a compiled step may take.
    public static let inputs = Set(modelInputs + optimizerInputs + [clipNorm])

    /// The training loss output, and the global gradient norm (before clipping).
    public static let loss = "loss", gradNorm = "grad_norm"
    /// Inference's class scores [B, classes, S, S], and the denoiser's
    /// prediction [B, 3, S, S].
    public static let logits = "logits", prediction = "prediction"
    /// A gradient-only step (compiled without an optimizer) returns each
    /// weight's gradient as the output `grad:<weight>`.
    public static let gradientPrefix = "grad:"
    /// Adam's moments are state `opt.m.<weight>` and `opt.v.<weight>`.
    public static let optimizerStatePrefix = "opt."
}

/// Adam's constants, compiled into a step's update and recorded in its
/// artifact's manifest: the trainer computes the bias corrections it feeds
/// the step from these, never from its own copy.
public struct AdamSettings: Codable, Equatable, Sendable {
    public var beta1: Double
    public var beta2: Double
    public var epsilon: Double

    public init(beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8) {
        (self.beta1, self.beta2, self.epsilon) = (beta1, beta2, epsilon)
    }

    /// bc1 = 1/(1−β₁ᵗ) and bc2 = 1/(1−β₂ᵗ) for step t, counted from 1.
    public func biasCorrections(step t: Int) -> (bc1: Double, bc2: Double) {
        (1 / (1 - pow(beta1, Double(t))), 1 / (1 - pow(beta2, Double(t))))
    }
}
