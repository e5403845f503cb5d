import IR

/// A weight-standardized 2-D convolution (BiT, and TransUNet's ResNet): the
/// weight is normalized per output channel before every use,
///
///     w' = (w − mean(w)) / √(var(w) + eps)   over (in, kh, kw), biased var,
///
/// built from reduce_mean, sub, mul and rsqrt, so its gradient is theirs.
/// TransUNet computes it with eps 1e-5 (timm's StdConv2d uses 1e-8).
public struct StdConv2d {
    public let scope: Scope
    public var inChannels, outChannels, kernel, stride, padding: Int
    public var bias: Bool
    public var eps: Double

    public init(_ scope: Scope, _ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int = 1,
                padding: Int = 0, bias: Bool = false, eps: Double = 1e-5) {
        self.scope = scope
        (self.inChannels, self.outChannels, self.kernel, self.stride) = (inChannels, outChannels, kernel, stride)
        (self.padding, self.bias, self.eps) = (padding, bias, eps)
    }

    /// The standardized weight w' (shape [O, I, k, k]).
    public static func standardize(_ w: Tensor, eps: Double) -> Tensor {
        let mean = w.mean(axes: [1, 2, 3], keepDims: true)
        let centered = w - mean
        let variance = (centered * centered).mean(axes: [1, 2, 3], keepDims: true)
        return centered * (variance + eps).rsqrt()
    }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        scope.context.at(file, line) {
            // nn.Conv2d's default (TransUNet's StdConv2d subclasses it).
            let w = scope.param("weight", [outChannels, inChannels, kernel, kernel], init: .pytorchWeight)
            var attrs: Attributes = [:]
            if stride != 1 { attrs["stride"] = .ints([stride, stride]) }
            if padding != 0 { attrs["pad"] = .ints([padding, padding]) }
            var y = x.emit("conv2d", [StdConv2d.standardize(w, eps: eps)], attrs)
            if bias {
                let b = scope.param("bias", [outChannels], init: .pytorchBias(fanIn: inChannels * kernel * kernel))
                y = y + b.emit("reshape", [], ["shape": .ints([1, outChannels, 1, 1])])
            }
            return y
        }
    }
}
