import IR

/// TransUNet's hybrid encoder: a weight-standardized ResNet (`ResNetV2Encoder`)
/// whose last map is embedded as 1×1 patches (`patch_embeddings`, a 1×1 conv
/// with bias), plus a learned position embedding (`position_embeddings`,
/// [1, tokens, hidden], no class token), then pre-LayerNorm transformer
/// blocks (`layer.{i}`) and a final LayerNorm (`encoder_norm`, eps 1e-6).
/// The position embedding starts at zeros, as in TransUNet's `Embeddings`.
public struct TransUNetEncoder: Hashable, Sendable {
    public var resnet: ResNetV2Encoder
    public var hidden, layers, heads, mlpDim: Int

    public init(resnet: ResNetV2Encoder, hidden: Int, layers: Int, heads: Int, mlpDim: Int) {
        self.resnet = resnet
        self.hidden = hidden
        self.layers = layers
        self.heads = heads
        self.mlpDim = mlpDim
    }

    /// R50-ViT-B/16: ResNet units (3, 4, 9) at width 64, 12 blocks of 768
    /// hidden, 12 heads, MLP 3072; tokens on the 1/16 map.
    public static let r50ViTB16 = TransUNetEncoder(resnet: ResNetV2Encoder(width: 64, units: [3, 4, 9]),
                                                   hidden: 768, layers: 12, heads: 12, mlpDim: 3072)
    /// CPU-sized: two ResNet stages (2, 2 units, width 32), tokens on the 1/8
    /// map, 4 blocks of 256 hidden, 8 heads, MLP 1024.
    public static let small = TransUNetEncoder(resnet: ResNetV2Encoder(width: 32, units: [2, 2]),
                                               hidden: 256, layers: 4, heads: 8, mlpDim: 1024)
    /// Test-sized (parity fixtures): two one-unit stages at width 16 with
    /// 8 groups, 2 blocks of 64 hidden, 4 heads, MLP 128.
    public static let tiny = TransUNetEncoder(resnet: ResNetV2Encoder(width: 16, units: [1, 1], groups: 8),
                                              hidden: 64, layers: 2, heads: 4, mlpDim: 128)

    /// Feature maps, finest first: the ResNet's skips, then the transformer's
    /// tokens as a map [B, hidden, S/stride, S/stride].
    public func features(_ x: Tensor, scope: Scope) -> [Tensor] {
        let ctx = x.context
        var maps = resnet.features(x, scope: scope)
        let last = maps.removeLast()
        guard last.rank == 4 else { return maps + [last] }
        let (b, h, w) = (last.shape[0], last.shape[2], last.shape[3])
        let patches = Conv2d(scope["patch_embeddings"], last.channels, hidden, kernel: 1)(last)
        var tokens = patches.reshape([b, hidden, h * w]).permute([0, 2, 1])
        tokens = tokens + scope.param("position_embeddings", [1, h * w, hidden], init: .zeros)
        for i in 0..<layers {
            tokens = TransformerBlock(scope["layer.\(i)"], dim: hidden, heads: heads, mlpDim: mlpDim)(tokens)
        }
        tokens = LayerNorm(scope["encoder_norm"], hidden, eps: 1e-6)(tokens)
        guard ctx.firstError == nil else { return maps + [tokens] }
        return maps + [tokens.permute([0, 2, 1]).reshape([b, hidden, h, w])]
    }
}

/// TransUNet (Chen et al. 2021) as its official code builds it: the hybrid
/// encoder (`enc.*`), then the cascaded upsampler (`dec.*`): `conv_more`
/// (3×3 conv + BN + ReLU from the hidden size to `decoderWidths[0]`), then
/// one block per further width (`blocks.{i}`): bilinear ×2 upsample
/// (align_corners=True) → concat the skip (ResNet features from coarse to
/// fine; the last block has none) → two (3×3 conv, no bias + BN + ReLU),
/// named `conv1.0/conv1.1`, `conv2.0/conv2.1`. Heads: 3×3 conv with bias.
/// Decoder and heads keep PyTorch's layer defaults (the official code does
/// not re-initialise them).
///
/// The encoder's total stride is 2^(stages+1), so a model with three ResNet
/// stages needs five decoder widths (four upsampling blocks).
public struct TransUNet: SegmentationModel, Sendable {
    public var encoder: TransUNetEncoder
    public var decoderWidths: [Int]

    /// Decoder widths: `official` is the TransUNet paper's (head 512, blocks
    /// 256, 128, 64, 16); `ddep1x` is DDeP's default [1024, 512, 256, 128,
    /// 64] (first entry the `conv_more` width), `ddep2x` and `ddep3x` scale it.
    public enum DecoderPreset: String, CaseIterable, Sendable {
        case official, ddep1x, ddep2x, ddep3x

        public var widths: [Int] {
            switch self {
            case .official: return [512, 256, 128, 64, 16]
            case .ddep1x: return [1024, 512, 256, 128, 64]
            case .ddep2x: return [2048, 1024, 512, 256, 128]
            case .ddep3x: return [3072, 1536, 768, 384, 192]
            }
        }
    }

    public init(_ encoder: TransUNetEncoder = .r50ViTB16, decoderWidths: [Int] = DecoderPreset.official.widths) {
        self.encoder = encoder
        self.decoderWidths = decoderWidths
    }

    public init(_ encoder: TransUNetEncoder = .r50ViTB16, decoder: DecoderPreset) {
        self.init(encoder, decoderWidths: decoder.widths)
    }

    /// R50-ViT-B/16 with the official decoder.
    public static let r50ViTB16 = TransUNet()
    /// CPU-sized (input 128 in demos): `TransUNetEncoder.small`, decoder [256, 128, 64, 32].
    public static let small = TransUNet(.small, decoderWidths: [256, 128, 64, 32])
    /// Test-sized (input 32 in the parity fixtures): `TransUNetEncoder.tiny`, decoder [32, 16, 16, 8].
    public static let tiny = TransUNet(.tiny, decoderWidths: [32, 16, 16, 8])

    public var inputMultiple: Int { encoder.resnet.outputStride }

    public func encode(_ x: Tensor, scope: Scope) -> [Tensor] {
        encoder.features(x, scope: scope)
    }

    public func decode(_ features: [Tensor], scope: Scope) -> Tensor {
        guard var x = features.last else { preconditionFailure("TransUNet: the encoder returned no features") }
        let skips = Array(features.dropLast().reversed())
        guard decoderWidths.count == skips.count + 2 else {
            x.context.fail("TransUNet: an encoder with \(skips.count) skip maps needs \(skips.count + 2) decoder widths (conv_more and \(skips.count + 1) blocks), got \(decoderWidths)")
            return x
        }
        x = Conv2dBNReLU(scope["conv_more"], x.channels, decoderWidths[0])(x)
        for (i, width) in decoderWidths.dropFirst().enumerated() {
            let skip = i < skips.count ? skips[i] : nil
            let block = scope["blocks.\(i)"]
            var y = x.upsample(scale: 2, mode: .bilinear(alignCorners: true))
            if let skip { y = Tensor.concat([y, skip], axis: 1) }
            x = Conv2dBNReLU(block["conv2"], width, width)(Conv2dBNReLU(block["conv1"], y.channels, width)(y))
        }
        return x
    }
}
