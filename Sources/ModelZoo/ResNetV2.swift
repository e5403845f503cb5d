import IR

/// The weight-standardized ResNet of R50-ViT-B/16 as TransUNet builds it
/// (`ResNetV2` in its code; BiT-style, but post-activation): root 7×7/2
/// StdConv (pad 3) → GroupNorm → ReLU, then a 3×3/2 max-pool (pad 0), then
/// stages of bottleneck units (1×1 → GN → ReLU → 3×3 with the stage's stride
/// → GN → ReLU → 1×1 → GN, + shortcut, ReLU; the first unit of a stage has a
/// 1×1 StdConv + GN projection). Stage i has width·2^i middle and
/// 4·width·2^i output channels; the first stage keeps the resolution, each
/// later one halves it.
///
/// Features, finest first: the root output (1/2), each stage's output but
/// the last, zero-padded at the bottom and right to its nominal size
/// (1/4, 1/8, ...; the max-pool gives 55 for 56 at 224), and the last
/// stage's output unpadded. Names follow TransUNet: `root.conv.weight`,
/// `root.gn.*`, `body.block{s}.unit{u}.{conv1,conv2,conv3}.weight`,
/// `gn{1,2,3}.*`, `downsample.weight`, `gn_proj.*` (s, u from 1).
public struct ResNetV2Encoder: Hashable, Sendable {
    /// Root width (64 in R50).
    public var width: Int
    /// Units per stage ([3, 4, 9] in R50-ViT-B/16).
    public var units: [Int]
    /// GroupNorm groups (32).
    public var groups: Int
    public var normEps: Double
    public var standardizationEps: Double
    public var inChannels: Int

    public init(width: Int = 64, units: [Int] = [3, 4, 9], groups: Int = 32, normEps: Double = 1e-6,
                standardizationEps: Double = 1e-5, inChannels: Int = 3) {
        self.width = width
        self.units = units
        self.groups = groups
        self.normEps = normEps
        self.standardizationEps = standardizationEps
        self.inChannels = inChannels
    }

    /// Output channels of stage `i`.
    public func stageChannels(_ i: Int) -> Int { width * 4 << i }

    /// Channels of every feature map, finest first.
    public var featureChannels: [Int] { [width] + units.indices.map(stageChannels) }

    /// The total stride of the last feature map.
    public var outputStride: Int { 2 << units.count }

    public func features(_ x: Tensor, scope: Scope) -> [Tensor] {
        let ctx = x.context
        guard x.rank == 4, x.shape[2] == x.shape[3] else {
            ctx.fail("ResNetV2 needs square NCHW images, got \(x.type)")
            return [x]
        }
        guard !units.isEmpty, units.allSatisfy({ $0 > 0 }), width > 0, groups > 0, width % groups == 0 else {
            ctx.fail("ResNetV2: units \(units) must be positive and the width \(width) a multiple of the \(groups) groups")
            return [x]
        }
        let size = x.shape[2]
        let root = scope["root"]
        let stem = GroupNorm(root["gn"], groups: groups, channels: width, eps: normEps)(
            StdConv2d(root["conv"], inChannels, width, kernel: 7, stride: 2, padding: 3, eps: standardizationEps)(x)).relu()
        var y = stem.maxPool2d(kernel: 3, stride: 2, padding: 0)
        var features = [stem]
        var channels = width
        for (stage, count) in units.enumerated() {
            let block = scope["body.block\(stage + 1)"]
            for unit in 0..<count {
                let stride = unit == 0 && stage > 0 ? 2 : 1
                y = bottleneck(y, block["unit\(unit + 1)"], inChannels: channels, middle: width << stage,
                               outChannels: stageChannels(stage), stride: stride)
                channels = stageChannels(stage)
            }
            if stage < units.count - 1 {
                let nominal = size / (4 << stage)
                features.append(y.shape[2] == nominal ? y : y.zeroPad(to: [nominal, nominal]))
            } else {
                features.append(y)
            }
        }
        return features
    }

    func bottleneck(_ x: Tensor, _ scope: Scope, inChannels: Int, middle: Int, outChannels: Int, stride: Int) -> Tensor {
        func conv(_ name: String, _ i: Int, _ o: Int, kernel: Int, stride: Int = 1) -> StdConv2d {
            StdConv2d(scope[name], i, o, kernel: kernel, stride: stride, padding: kernel / 2, eps: standardizationEps)
        }
        func norm(_ name: String, _ c: Int) -> GroupNorm { GroupNorm(scope[name], groups: groups, channels: c, eps: normEps) }
        var residual = x
        if stride != 1 || inChannels != outChannels {
            residual = norm("gn_proj", outChannels)(conv("downsample", inChannels, outChannels, kernel: 1, stride: stride)(x))
        }
        var y = norm("gn1", middle)(conv("conv1", inChannels, middle, kernel: 1)(x)).relu()
        y = norm("gn2", middle)(conv("conv2", middle, middle, kernel: 3, stride: stride)(y)).relu()
        y = norm("gn3", outChannels)(conv("conv3", middle, outChannels, kernel: 1)(y))
        return (y + residual).relu()
    }
}
