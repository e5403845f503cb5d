import IR

/// A symbolic tensor: an SSA value of the function being built, plus its
/// context. Operations append typed nodes; none of them throws (see
/// `BuildContext` for how errors surface).
///
/// Methods take `file`/`line` so their nodes point at the model-file line;
/// operators (`+ - * /`) take the location of the enclosing layer call.
public struct Tensor: CustomStringConvertible {
    public let value: Value
    public let context: BuildContext

    public init(_ value: Value, _ context: BuildContext) {
        self.value = value
        self.context = context
    }

    public var type: TensorType { value.type }
    public var shape: [Int] { value.shape }
    public var rank: Int { value.rank }
    public var dtype: DType { value.type.dtype }
    /// Channels of an NCHW tensor (`shape[1]`).
    public var channels: Int { rank > 1 ? shape[1] : 0 }

    public var description: String { "%\(value.id): \(type)" }

    /// Apply any registered op with `self` as its first operand.
    public func apply(_ op: String, _ others: [Tensor] = [], attrs: Attributes = [:],
                      file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        context.at(file, line) { emit(op, others, attrs) }
    }

    func emit(_ op: String, _ others: [Tensor] = [], _ attrs: Attributes = [:]) -> Tensor {
        for other in others where other.context !== context {
            context.fail("\(op): operands come from two different functions")
        }
        return Tensor(context.emit(op, [value] + others.map(\.value), attrs), context)
    }

    /// A scalar constant of this tensor's element type (broadcasts).
    func scalar(_ v: Double) -> Tensor {
        var attrs: Attributes = ["value": .float(v)]
        if dtype != .f32 { attrs["dtype"] = .string(dtype.rawValue) }
        return Tensor(context.emit("constant", [], attrs), context)
    }

    // MARK: Arithmetic (numpy broadcasting)

    public static func + (a: Tensor, b: Tensor) -> Tensor { a.emit("add", [b]) }
    public static func - (a: Tensor, b: Tensor) -> Tensor { a.emit("sub", [b]) }
    public static func * (a: Tensor, b: Tensor) -> Tensor { a.emit("mul", [b]) }
    public static func / (a: Tensor, b: Tensor) -> Tensor { a.emit("div", [b]) }
    public static prefix func - (a: Tensor) -> Tensor { a.emit("neg") }

    public static func + (a: Tensor, b: Double) -> Tensor { a + a.scalar(b) }
    public static func - (a: Tensor, b: Double) -> Tensor { a - a.scalar(b) }
    public static func * (a: Tensor, b: Double) -> Tensor { a * a.scalar(b) }
    public static func / (a: Tensor, b: Double) -> Tensor { a / a.scalar(b) }
    public static func + (a: Double, b: Tensor) -> Tensor { b.scalar(a) + b }
    public static func - (a: Double, b: Tensor) -> Tensor { b.scalar(a) - b }
    public static func * (a: Double, b: Tensor) -> Tensor { b.scalar(a) * b }
    public static func / (a: Double, b: Tensor) -> Tensor { b.scalar(a) / b }

    public func maximum(_ other: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        apply("maximum", [other], file: file, line: line)
    }
    public func minimum(_ other: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        apply("minimum", [other], file: file, line: line)
    }

    // MARK: Activations and unary math

    public func relu(file: StaticString = #fileID, line: UInt = #line) -> Tensor { apply("relu", file: file, line: line) }
    public func gelu(file: StaticString = #fileID, line: UInt = #line) -> Tensor { apply("gelu", file: file, line: line) }
    public func sigmoid(file: StaticString = #fileID, line: UInt = #line) -> Tensor { apply("sigmoid", file: file, line: line) }
    public func tanh(file: StaticString = #fileID, line: UInt = #line) -> Tensor { apply("tanh", file: file, line: line) }
    public func exp(file: StaticString = #fileID, line: UInt = #line) -> Tensor { apply("exp", file: file, line: line) }
    public func log(file: StaticString = #fileID, line: UInt = #line) -> Tensor { apply("log", file: file, line: line) }
    public func sqrt(file: StaticString = #fileID, line: UInt = #line) -> Tensor { apply("sqrt", file: file, line: line) }
    public func rsqrt(file: StaticString = #fileID, line: UInt = #line) -> Tensor { apply("rsqrt", file: file, line: line) }
    public func squared(file: StaticString = #fileID, line: UInt = #line) -> Tensor { apply("mul", [self], file: file, line: line) }

    public func softmax(axis: Int = -1, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        apply("softmax", attrs: ["axis": .int(axis)], file: file, line: line)
    }
    public func logSoftmax(axis: Int = -1, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        apply("log_softmax", attrs: ["axis": .int(axis)], file: file, line: line)
    }

    // MARK: Reductions

    public func sum(axes: [Int], keepDims: Bool = false, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        reduce("reduce_sum", axes, keepDims, file, line)
    }
    public func mean(axes: [Int], keepDims: Bool = false, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        reduce("reduce_mean", axes, keepDims, file, line)
    }
    public func max(axes: [Int], keepDims: Bool = false, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        reduce("reduce_max", axes, keepDims, file, line)
    }
    private func reduce(_ op: String, _ axes: [Int], _ keepDims: Bool, _ file: StaticString, _ line: UInt) -> Tensor {
        var attrs: Attributes = ["axes": .ints(axes)]
        if keepDims { attrs["keepdims"] = .bool(true) }
        return apply(op, attrs: attrs, file: file, line: line)
    }

    // MARK: Shape

    /// Same elements, new shape (no node when the shape is unchanged).
    public func reshape(_ shape: [Int], file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        shape == self.shape ? self : apply("reshape", attrs: ["shape": .ints(shape)], file: file, line: line)
    }
    public func permute(_ perm: [Int], file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        apply("permute", attrs: ["perm": .ints(perm)], file: file, line: line)
    }
    public func broadcast(to shape: [Int], file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        shape == self.shape ? self : apply("broadcast_to", attrs: ["shape": .ints(shape)], file: file, line: line)
    }
    /// The box `start..<end`.
    public func slice(start: [Int], end: [Int], file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        apply("slice", attrs: ["start": .ints(start), "end": .ints(end)], file: file, line: line)
    }
    /// Constant padding, `low`/`high` per axis.
    public func pad(low: [Int], high: [Int], value: Double = 0, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        var attrs: Attributes = ["low": .ints(low), "high": .ints(high)]
        if value != 0 { attrs["value"] = .float(value) }
        return apply("pad", attrs: attrs, file: file, line: line)
    }
    /// An NCHW map zero-padded at the bottom and right to `size` = [H, W]
    /// (TransUNet's skip features: `feat[:, :, :h, :w] = x`).
    public func zeroPad(to size: [Int], file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        guard rank == 4, size.count == 2, size[0] >= shape[2], size[1] >= shape[3] else {
            return context.at(file, line) {
                context.fail("zeroPad(to: \(size)) needs an NCHW tensor no larger than the size, got \(type)")
                return self
            }
        }
        if Array(shape[2...]) == size { return self }
        return pad(low: [0, 0, 0, 0], high: [0, 0, size[0] - shape[2], size[1] - shape[3]], file: file, line: line)
    }

    /// Tensors joined along `axis` (channels by default).
    public static func concat(_ tensors: [Tensor], axis: Int = 1, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        guard let first = tensors.first else { preconditionFailure("Tensor.concat of no tensors") }
        if tensors.count == 1 { return first }
        return first.apply("concat", Array(tensors.dropFirst()), attrs: ["axis": .int(axis)], file: file, line: line)
    }

    // MARK: Linear algebra, pooling, resizing

    /// Batched `self · other` (other may be a shared 2-D matrix).
    public func matmul(_ other: Tensor, transposeA: Bool = false, transposeB: Bool = false,
                       file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        var attrs: Attributes = [:]
        if transposeA { attrs["transpose_a"] = .bool(true) }
        if transposeB { attrs["transpose_b"] = .bool(true) }
        return apply("matmul", [other], attrs: attrs, file: file, line: line)
    }

    public func maxPool2d(kernel: Int, stride: Int? = nil, padding: Int = 0,
                          file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        apply("max_pool2d", attrs: Tensor.poolAttrs(kernel, stride ?? kernel, padding), file: file, line: line)
    }
    public func avgPool2d(kernel: Int, stride: Int? = nil, padding: Int = 0,
                          file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        apply("avg_pool2d", attrs: Tensor.poolAttrs(kernel, stride ?? kernel, padding), file: file, line: line)
    }
    static func poolAttrs(_ k: Int, _ s: Int, _ p: Int) -> Attributes {
        ["kernel": .ints([k, k]), "stride": .ints([s, s]), "pad": .ints([p, p])]
    }

    public enum ResizeMode: Sendable {
        /// PyTorch 'nearest': src = ⌊dst·in/out⌋.
        case nearest
        case bilinear(alignCorners: Bool)
    }

    /// Resize an NCHW tensor to `size` = [H, W].
    public func resize(to size: [Int], mode: ResizeMode = .nearest,
                       file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        switch mode {
        case .nearest:
            return apply("upsample_nearest", attrs: ["size": .ints(size)], file: file, line: line)
        case .bilinear(let alignCorners):
            return apply("upsample_bilinear", attrs: ["size": .ints(size), "align_corners": .bool(alignCorners)],
                         file: file, line: line)
        }
    }

    /// Upsample an NCHW tensor by an integer factor.
    public func upsample(scale: Int, mode: ResizeMode = .nearest,
                         file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        guard rank == 4 else {
            return context.at(file, line) {
                context.fail("upsample needs an NCHW tensor, got \(type)")
                return self
            }
        }
        return resize(to: [shape[2] * scale, shape[3] * scale], mode: mode, file: file, line: line)
    }

    // MARK: Losses

    /// mean((self − target)²), a scalar.
    public func mse(_ target: Tensor, file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        apply("mse", [target], file: file, line: line)
    }
    /// Pixel-wise cross-entropy of logits [N,C,...] against integer labels [N,...].
    public func crossEntropy(_ labels: Tensor, ignoreIndex: Int = 255,
                             file: StaticString = #fileID, line: UInt = #line) -> Tensor {
        apply("cross_entropy", [labels], attrs: ["ignore_index": .int(ignoreIndex)], file: file, line: line)
    }
}
