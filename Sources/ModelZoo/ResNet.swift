import IR

/// An image encoder: x [N, C, H, W] → feature maps, finest first.
public protocol FeatureEncoder: Sendable {
    /// Feature maps (finest first); parameters under `scope`.
    func features(_ x: Tensor, scope: Scope) -> [Tensor]
}

extension FeatureEncoder {
    public func callAsFunction(_ x: Tensor, scope: Scope, file: StaticString = #fileID, line: UInt = #line) -> [Tensor] {
        x.context.at(file, line) { features(x, scope: scope) }
    }
}

extension FeatureEncoder where Self == ResNetEncoder {
    public static var resnet18: ResNetEncoder { ResNetEncoder(depth: 18) }
    public static var resnet34: ResNetEncoder { ResNetEncoder(depth: 34) }
    public static var resnet50: ResNetEncoder { ResNetEncoder(depth: 50) }
    public static var resnet101: ResNetEncoder { ResNetEncoder(depth: 101) }
}

/// torchvision's ResNet without its classifier: stem 7×7/2 conv + BN + ReLU,
/// 3×3/2 max-pool, layer1...layer4 of basic blocks (18, 34) or bottlenecks
/// (50, 101, 152; stride on the 3×3). Features: [stem (1/2), layer1 (1/4),
/// layer2 (1/8), layer3 (1/16), layer4 (1/32)]. Parameter names match
/// torchvision (`conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`,
/// `layer2.0.downsample.0.weight`, ...). `baseWidth` (64 in torchvision)
/// scales every width, so `baseWidth: 8` is a tiny CPU variant. Convs start
/// as torchvision's do (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`,
/// which smp's ResNet encoders inherit), batch norms at weight 1, bias 0.
public struct ResNetEncoder: FeatureEncoder, Hashable {
    public var depth: Int
    public var baseWidth: Int
    public var inChannels: Int

    public init(depth: Int = 50, baseWidth: Int = 64, inChannels: Int = 3) {
        self.depth = depth
        self.baseWidth = baseWidth
        self.inChannels = inChannels
    }

    /// Blocks per stage, or nil for an unsupported depth.
    public var blockCounts: [Int]? {
        switch depth {
        case 18: return [2, 2, 2, 2]
        case 34, 50: return [3, 4, 6, 3]
        case 101: return [3, 4, 23, 3]
        case 152: return [3, 8, 36, 3]
        default: return nil
        }
    }

    public var usesBottleneck: Bool { depth >= 50 }
    public var expansion: Int { usesBottleneck ? 4 : 1 }

    /// Channels of each feature map.
    public var featureChannels: [Int] {
        [baseWidth] + (0..<4).map { (baseWidth << $0) * expansion }
    }

    public func features(_ x: Tensor, scope: Scope) -> [Tensor] {
        let ctx = x.context
        guard let counts = blockCounts, baseWidth > 0 else {
            ctx.fail("unsupported ResNet depth \(depth) or base width \(baseWidth) (depths: 18, 34, 50, 101, 152)")
            return [x]
        }
        let conv1 = Conv2d(scope["conv1"], inChannels, baseWidth, kernel: 7, stride: 2, padding: 3, bias: false, weightInit: .heFanOut)
        let bn1 = BatchNorm2d(scope["bn1"], baseWidth)
        let stem = bn1(conv1(x)).relu()
        var y = MaxPool2d(kernel: 3, stride: 2, padding: 1)(stem)
        var features = [stem]
        var channels = baseWidth
        for (stage, count) in counts.enumerated() {
            let planes = baseWidth << stage
            let layer = scope["layer\(stage + 1)"]
            for index in 0..<count {
                let stride = index == 0 && stage > 0 ? 2 : 1
                if usesBottleneck {
                    y = Bottleneck(layer["\(index)"], channels, planes, stride: stride)(y)
                } else {
                    y = BasicBlock(layer["\(index)"], channels, planes, stride: stride)(y)
                }
                channels = planes * expansion
            }
            features.append(y)
        }
        return features
    }
}

/// torchvision's shortcut: identity, or 1×1 strided conv + BN (`downsample.0/1`)
/// where the shape changes.
func shortcut(_ x: Tensor, _ scope: Scope, _ inChannels: Int, _ outChannels: Int, stride: Int) -> Tensor {
    guard stride != 1 || inChannels != outChannels else { return x }
    let conv = Conv2d(scope["downsample.0"], inChannels, outChannels, kernel: 1, stride: stride, bias: false, weightInit: .heFanOut)
    return BatchNorm2d(scope["downsample.1"], outChannels)(conv(x))
}

/// ResNet basic block: 3×3 (stride) → BN → ReLU → 3×3 → BN, + shortcut, ReLU.
public struct BasicBlock {
    public let scope: Scope
    public var inChannels, planes, stride: Int

    public init(_ scope: Scope, _ inChannels: Int, _ planes: Int, stride: Int = 1) {
        self.scope = scope
        self.inChannels = inChannels
        self.planes = planes
        self.stride = stride
    }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        x.context.at(file, line) {
            let conv1 = Conv2d(scope["conv1"], inChannels, planes, kernel: 3, stride: stride, padding: 1, bias: false, weightInit: .heFanOut)
            let bn1 = BatchNorm2d(scope["bn1"], planes)
            let conv2 = Conv2d(scope["conv2"], planes, planes, kernel: 3, padding: 1, bias: false, weightInit: .heFanOut)
            let bn2 = BatchNorm2d(scope["bn2"], planes)
            var y = bn1(conv1(x)).relu()
            y = bn2(conv2(y))
            let identity = shortcut(x, scope, inChannels, planes, stride: stride)
            return (y + identity).relu()
        }
    }
}

/// ResNet bottleneck (v1.5): 1×1 → BN → ReLU → 3×3 (stride) → BN → ReLU →
/// 1×1 (×4) → BN, + shortcut, ReLU.
public struct Bottleneck {
    public static let expansion = 4
    public let scope: Scope
    public var inChannels, planes, stride: Int

    public init(_ scope: Scope, _ inChannels: Int, _ planes: Int, stride: Int = 1) {
        self.scope = scope
        self.inChannels = inChannels
        self.planes = planes
        self.stride = stride
    }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        x.context.at(file, line) {
            let out = planes * Bottleneck.expansion
            let conv1 = Conv2d(scope["conv1"], inChannels, planes, kernel: 1, bias: false, weightInit: .heFanOut)
            let bn1 = BatchNorm2d(scope["bn1"], planes)
            let conv2 = Conv2d(scope["conv2"], planes, planes, kernel: 3, stride: stride, padding: 1, bias: false, weightInit: .heFanOut)
            let bn2 = BatchNorm2d(scope["bn2"], planes)
            let conv3 = Conv2d(scope["conv3"], planes, out, kernel: 1, bias: false, weightInit: .heFanOut)
            let bn3 = BatchNorm2d(scope["bn3"], out)
            var y = bn1(conv1(x)).relu()
            y = bn2(conv2(y)).relu()
            y = bn3(conv3(y))
            let identity = shortcut(x, scope, inChannels, out, stride: stride)
            return (y + identity).relu()
        }
    }
}
