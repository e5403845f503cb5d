import IR

/// U-Net in the segmentation_models_pytorch convention: a feature encoder
/// (`enc.*`), center = identity, one decoder block per width (`dec.blocks.{i}`):
/// nearest ×2 upsample → concat the skip (the encoder's features from coarse
/// to fine; the last block has none) → two (3×3 conv, no bias + BN + ReLU),
/// named `conv1.0/conv1.1` and `conv2.0/conv2.1`. Heads: 3×3 conv with bias.
///
/// Initialised as smp does: decoder convs `kaiming_uniform_(mode="fan_in",
/// nonlinearity="relu")` (`initialize_decoder`), batch norms 1 and 0, heads
/// (segmentation, denoising, classification) xavier_uniform with zero bias
/// (`initialize_head`); the encoder keeps its own (torchvision's for ResNets).
public struct UNet: SegmentationModel, Sendable {
    public var encoder: any FeatureEncoder
    public var decoderWidths: [Int]

    public init<Encoder: FeatureEncoder>(encoder: Encoder, decoderWidths: [Int] = [256, 128, 64, 32, 16]) {
        self.encoder = encoder
        self.decoderWidths = decoderWidths
    }

    /// A CPU-sized U-Net: ResNet-18 layout at base width 8 (channels 8, 8,
    /// 16, 32, 64), decoder widths [64, 32, 16, 8, 8].
    public static let small = UNet(encoder: ResNetEncoder(depth: 18, baseWidth: 8), decoderWidths: [64, 32, 16, 8, 8])

    /// smp's `initialize_decoder` rule for decoder convs (Kaiming uniform, fan_in, ReLU gain).
    public static let decoderInit = InitRule.kaimingUniform(a: 0)

    /// Each decoder block doubles the resolution.
    public var inputMultiple: Int { 1 << decoderWidths.count }

    public func encode(_ x: Tensor, scope: Scope) -> [Tensor] {
        encoder.features(x, scope: scope)
    }

    public func head(_ x: Tensor, channels: Int, scope: Scope) -> Tensor {
        Conv2d(scope, x.channels, channels, kernel: 3, padding: 1, bias: true, weightInit: .xavier, biasInit: .zeros)(x)
    }

    public func classifier(_ pooled: Tensor, classes: Int, scope: Scope) -> Tensor {
        Linear(scope, pooled.shape.last ?? 1, classes, weightInit: .xavier, biasInit: .zeros)(pooled)
    }

    public func decode(_ features: [Tensor], scope: Scope) -> Tensor {
        guard var x = features.last else { preconditionFailure("UNet: the encoder returned no features") }
        let skips = Array(features.dropLast().reversed())
        guard skips.count <= decoderWidths.count, !decoderWidths.isEmpty else {
            x.context.fail("UNet: the encoder gives \(features.count) feature maps, so the decoder needs at least \(skips.count) widths (has \(decoderWidths.count))")
            return x
        }
        for (i, width) in decoderWidths.enumerated() {
            let skip = i < skips.count ? skips[i] : nil
            x = UNetDecoderBlock(scope["blocks.\(i)"], x.channels, skip?.channels ?? 0, width)(x, skip: skip)
        }
        return x
    }
}

/// One smp U-Net decoder block: nearest ×2 upsample, concat skip, two conv+BN+ReLU.
public struct UNetDecoderBlock {
    public let conv1: Conv2dBNReLU
    public let conv2: Conv2dBNReLU

    public init(_ scope: Scope, _ inChannels: Int, _ skipChannels: Int, _ outChannels: Int) {
        conv1 = Conv2dBNReLU(scope["conv1"], inChannels + skipChannels, outChannels, weightInit: UNet.decoderInit)
        conv2 = Conv2dBNReLU(scope["conv2"], outChannels, outChannels, weightInit: UNet.decoderInit)
    }

    public func callAsFunction(_ x: Tensor, skip: Tensor?, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        x.context.at(file, line) {
            var y = x.upsample(scale: 2)
            if let skip {
                if skip.rank == 4, y.rank == 4, Array(skip.shape[2...]) != Array(y.shape[2...]) {
                    x.context.fail("UNet: upsampled \(y.type) does not match the skip \(skip.type) (the input size must be divisible by the encoder's total stride)")
                }
                y = Tensor.concat([y, skip], axis: 1)
            }
            return conv2(conv1(y))
        }
    }
}
