import IR

/// A fixed, parameter-free map from ddepc's input convention (RGB scaled to
/// [-1, 1], see the data pipeline) to the one an imported encoder was
/// trained on. It is part of the graph (slices, scalar multiply-adds and a
/// concat, visible in `dump-ir`), so every entry point — training,
/// evaluation, prediction — feeds the encoder the same numbers.
public enum InputNormalization: Hashable, Sendable {
    /// Caffe's VGG/HED convention: BGR order, 0–255, minus a per-channel mean
    /// (given in BGR order): `v_bgr[c] = 127.5·(x[2−c] + 1) − mean[c]`.
    case caffeBGR(mean: [Double])

    /// The BGR means of HED's Caffe model (and of Caffe's ImageNet VGG16).
    public static let hed = InputNormalization.caffeBGR(mean: [104.00699, 116.66877, 122.67892])

    public func callAsFunction(_ x: Tensor) -> Tensor {
        switch self {
        case .caffeBGR(let mean):
            guard x.rank == 4, x.channels == 3, mean.count == 3 else {
                x.context.fail("Caffe BGR input normalization needs [N, 3, H, W] RGB images and 3 means, got \(x.type)")
                return x
            }
            let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3])
            let channels = (0..<3).map { c in
                x.slice(start: [0, 2 - c, 0, 0], end: [n, 3 - c, h, w]) * 127.5 + (127.5 - mean[c])
            }
            return Tensor.concat(channels, axis: 1)
        }
    }
}

/// torchvision's VGG feature stack without its classifier, as
/// segmentation_models_pytorch's VGG encoders use it: blocks of 3×3 convs
/// (padding 1, bias) each followed by ReLU, a 2×2 max-pool before every
/// block but the first, and one after the last. Parameters are named by
/// their index in torchvision's `features` (`features.0.weight`,
/// `features.2.*`, `features.5.*`, ... for VGG16), so torchvision and smp
/// checkpoints map by name.
///
/// Features, finest first: each block's output (the first at full
/// resolution, then 1/2 ... 1/16) and the final pool (1/32). Unlike smp's
/// U-Net, which drops the first of them, ddepc's U-Net uses the full-resolution
/// block as the last decoder block's skip.
///
/// Convs start as torchvision's VGG does: `kaiming_normal_(mode="fan_out",
/// nonlinearity="relu")`, bias 0. An optional fixed `inputNormalization`
/// turns ddepc's [-1, 1] RGB into what imported weights expect
/// (`InputNormalization.hed` for `ddepc import-weights --format hed-vgg16`).
public struct VGGEncoder: FeatureEncoder, Hashable {
    /// Output channels of each block (VGG16: 64, 128, 256, 512, 512).
    public var widths: [Int]
    /// Convs per block (VGG16: 2, 2, 3, 3, 3).
    public var convs: [Int]
    public var inputNormalization: InputNormalization?
    public var inChannels: Int

    public init(widths: [Int] = [64, 128, 256, 512, 512], convs: [Int] = [2, 2, 3, 3, 3],
                inputNormalization: InputNormalization? = nil, inChannels: Int = 3) {
        self.widths = widths
        self.convs = convs
        self.inputNormalization = inputNormalization
        self.inChannels = inChannels
    }

    /// VGG16 expecting HED's input convention (Caffe BGR, 0–255, mean subtracted).
    public static let vgg16HED = VGGEncoder(inputNormalization: .hed)

    /// Channels of each feature map, finest first.
    public var featureChannels: [Int] { widths + (widths.last.map { [$0] } ?? []) }

    /// torchvision `features` index of conv `j` of block `b` (ReLUs and pools count).
    public func featureIndex(block: Int, conv: Int) -> Int {
        var index = 0
        for b in 0..<block { index += 2 * convs[b] + 1 }
        return index + 2 * conv
    }

    public func features(_ x: Tensor, scope: Scope) -> [Tensor] {
        let ctx = x.context
        guard !widths.isEmpty, widths.count == convs.count, widths.allSatisfy({ $0 > 0 }), convs.allSatisfy({ $0 > 0 }) else {
            ctx.fail("VGG: widths \(widths) and convs per block \(convs) must be positive and of one length")
            return [x]
        }
        guard x.rank == 4, x.channels == inChannels else {
            ctx.fail("VGG expects [N, \(inChannels), H, W] images, got \(x.type)")
            return [x]
        }
        var y = inputNormalization.map { $0(x) } ?? x
        var channels = inChannels
        var features: [Tensor] = []
        for (block, width) in widths.enumerated() {
            if block > 0 { y = y.maxPool2d(kernel: 2, stride: 2) }
            for conv in 0..<convs[block] {
                let name = "features.\(featureIndex(block: block, conv: conv))"
                y = Conv2d(scope[name], channels, width, kernel: 3, padding: 1, bias: true,
                           weightInit: .heFanOut, biasInit: .zeros)(y).relu()
                channels = width
            }
            features.append(y)
        }
        features.append(y.maxPool2d(kernel: 2, stride: 2))
        return features
    }
}

extension UNet {
    /// U-Net on VGG16 with HED's input convention, smp's decoder widths
    /// (256, 128, 64, 32, 16), the full-resolution block as the last skip:
    /// `ddepc import-weights --format hed-vgg16` fills its encoder.
    public static let vgg16 = UNet(encoder: VGGEncoder.vgg16HED)

    /// Test-sized (parity fixtures, quick runs): VGG16's layout at 1/8 width
    /// (8, 16, 32, 64, 64) with HED's input convention, decoder [32, 16, 8, 8, 8].
    public static let vgg16Tiny = UNet(encoder: VGGEncoder(widths: [8, 16, 32, 64, 64], inputNormalization: .hed),
                                       decoderWidths: [32, 16, 8, 8, 8])
}
