import IR

// Layers: structs holding their configuration and scope; calling one creates
// its parameters (on first use) and appends its nodes. Names follow PyTorch
// (`weight`, `bias`, `running_mean`, `running_var`).

/// 2-D convolution: weight [O, I/groups, k, k], optional bias [O]. Unless
/// told otherwise both start as PyTorch's `nn.Conv2d` does: weight
/// `kaiming_uniform_(a=√5)` (U(±1/√fan_in)), bias U(±1/√fan_in).
public struct Conv2d {
    public let scope: Scope
    public var inChannels, outChannels, kernel, stride, padding, dilation, groups: Int
    public var bias: Bool
    public var weightInit: InitRule
    public var biasInit: InitRule

    public init(_ scope: Scope, _ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int = 1,
                padding: Int = 0, dilation: Int = 1, groups: Int = 1, bias: Bool = true,
                weightInit: InitRule = .pytorchWeight, biasInit: InitRule? = nil) {
        self.scope = scope
        (self.inChannels, self.outChannels, self.kernel, self.stride) = (inChannels, outChannels, kernel, stride)
        (self.padding, self.dilation, self.groups, self.bias) = (padding, dilation, groups, bias)
        self.weightInit = weightInit
        self.biasInit = biasInit ?? .pytorchBias(fanIn: inChannels / Swift.max(groups, 1) * kernel * kernel)
    }

    public var parameterCount: Int { outChannels * (inChannels / max(groups, 1)) * kernel * kernel + (bias ? outChannels : 0) }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        scope.context.at(file, line) {
            guard groups > 0, inChannels % groups == 0 else {
                scope.context.fail("Conv2d \"\(scope.path)\": groups=\(groups) must divide the \(inChannels) input channels")
                return x
            }
            let w = scope.param("weight", [outChannels, inChannels / groups, kernel, kernel], init: weightInit)
            var attrs: Attributes = [:]
            if stride != 1 { attrs["stride"] = .ints([stride, stride]) }
            if padding != 0 { attrs["pad"] = .ints([padding, padding]) }
            if dilation != 1 { attrs["dilation"] = .ints([dilation, dilation]) }
            if groups != 1 { attrs["groups"] = .int(groups) }
            var y = x.emit("conv2d", [w], attrs)
            if bias {
                let b = scope.param("bias", [outChannels], init: biasInit)
                y = y + b.emit("reshape", [], ["shape": .ints([1, outChannels, 1, 1])])
            }
            return y
        }
    }
}

/// Batch normalization over (N, H, W) per channel, PyTorch semantics.
///
/// Training mode (a trainable scope in a training step): normalizes with the
/// batch mean and biased variance, and updates
/// `running_mean ← (1−m)·running_mean + m·mean`,
/// `running_var ← (1−m)·running_var + m·var·n/(n−1)`.
/// Eval mode (frozen scope, or not training): uses the running statistics.
public struct BatchNorm2d {
    public let scope: Scope
    public var channels: Int
    public var eps: Double
    public var momentum: Double

    public init(_ scope: Scope, _ channels: Int, eps: Double = 1e-5, momentum: Double = 0.1) {
        self.scope = scope
        self.channels = channels
        self.eps = eps
        self.momentum = momentum
    }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        let ctx = scope.context
        return ctx.at(file, line) {
            guard x.rank >= 2, x.channels == channels else {
                ctx.fail("BatchNorm2d \"\(scope.path)\" expects [N, \(channels), ...] input, got \(x.type)")
                return x
            }
            let gamma = scope.param("weight", [channels], init: .ones)
            let beta = scope.param("bias", [channels], init: .zeros)
            let runningMean = scope.state("running_mean", [channels], init: .zeros)
            let runningVar = scope.state("running_var", [channels], init: .ones)
            let attrs: Attributes = ["eps": .float(eps)]
            guard scope.isTraining else {
                return x.emit("batch_norm", [runningMean, runningVar, gamma, beta], attrs)
            }
            // One kernel normalizes with the batch statistics; the running
            // statistics use the same moments as its gradient (built once).
            let moments: (mean: Value, centered: Value, variance: Value)
            do {
                moments = try NormOps.batchMoments(ctx.builder, x.value)
            } catch {
                ctx.fail("BatchNorm2d \"\(scope.path)\": \(error)")
                return x
            }
            let y = x.emit("batch_norm_train", [gamma, beta], attrs)
            let mean = Tensor(moments.mean, ctx), variance = Tensor(moments.variance, ctx)
            let n = Double(x.type.count / channels)
            let unbias = n > 1 ? n / (n - 1) : 1
            ctx.update(runningMean, with: runningMean * (1 - momentum) + mean * momentum)
            ctx.update(runningVar, with: runningVar * (1 - momentum) + variance * (momentum * unbias))
            return y
        }
    }
}

/// Group normalization with a per-channel affine (weight ones, bias zeros).
public struct GroupNorm {
    public let scope: Scope
    public var groups, channels: Int
    public var eps: Double

    public init(_ scope: Scope, groups: Int, channels: Int, eps: Double = 1e-5) {
        self.scope = scope
        self.groups = groups
        self.channels = channels
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        scope.context.at(file, line) {
            let gamma = scope.param("weight", [channels], init: .ones)
            let beta = scope.param("bias", [channels], init: .zeros)
            return x.emit("group_norm", [gamma, beta], ["groups": .int(groups), "eps": .float(eps)])
        }
    }
}

/// Fully connected layer on the last axis: weight [out, in], bias [out];
/// by default PyTorch's `nn.Linear` init (weight U(±1/√in), bias U(±1/√in)).
public struct Linear {
    public let scope: Scope
    public var inFeatures, outFeatures: Int
    public var bias: Bool
    public var weightInit: InitRule
    public var biasInit: InitRule

    public init(_ scope: Scope, _ inFeatures: Int, _ outFeatures: Int, bias: Bool = true,
                weightInit: InitRule = .pytorchWeight, biasInit: InitRule? = nil) {
        self.scope = scope
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.bias = bias
        self.weightInit = weightInit
        self.biasInit = biasInit ?? .pytorchBias(fanIn: inFeatures)
    }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        scope.context.at(file, line) {
            let w = scope.param("weight", [outFeatures, inFeatures], init: weightInit)
            var y = x.emit("matmul", [w], ["transpose_b": .bool(true)])
            if bias { y = y + scope.param("bias", [outFeatures], init: biasInit) }
            return y
        }
    }
}

/// max(x, 0).
public struct ReLU {
    public init() {}
    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        x.relu(file: file, line: line)
    }
}

/// 2-D max pooling (stride defaults to the kernel size).
public struct MaxPool2d {
    public var kernel, stride, padding: Int
    public init(kernel: Int, stride: Int? = nil, padding: Int = 0) {
        self.kernel = kernel
        self.stride = stride ?? kernel
        self.padding = padding
    }
    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        x.maxPool2d(kernel: kernel, stride: stride, padding: padding, file: file, line: line)
    }
}

/// conv (no bias) → BatchNorm → ReLU, named `0` (conv) and `1` (BN) like
/// smp's `Conv2dReLU`; the conv weight starts by `weightInit` (PyTorch's default
/// unless the model's reference implementation re-initialises it).
public struct Conv2dBNReLU {
    public let conv: Conv2d
    public let norm: BatchNorm2d

    public init(_ scope: Scope, _ inChannels: Int, _ outChannels: Int, kernel: Int = 3, stride: Int = 1, padding: Int? = nil,
                weightInit: InitRule = .pytorchWeight) {
        conv = Conv2d(scope["0"], inChannels, outChannels, kernel: kernel, stride: stride,
                      padding: padding ?? kernel / 2, bias: false, weightInit: weightInit)
        norm = BatchNorm2d(scope["1"], outChannels)
    }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        norm(conv(x, file: file, line: line), file: file, line: line).emit("relu")
    }
}

/// Layer normalization over the last axis (PyTorch `nn.LayerNorm(dim)`):
/// `weight` ones, `bias` zeros.
public struct LayerNorm {
    public let scope: Scope
    public var dim: Int
    public var eps: Double

    public init(_ scope: Scope, _ dim: Int, eps: Double = 1e-5) {
        self.scope = scope
        self.dim = dim
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        scope.context.at(file, line) {
            let gamma = scope.param("weight", [dim], init: .ones)
            let beta = scope.param("bias", [dim], init: .zeros)
            return x.emit("layer_norm", [gamma, beta], ["eps": .float(eps)])
        }
    }
}
