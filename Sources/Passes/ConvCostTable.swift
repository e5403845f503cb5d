import IR

/// What each algorithm took on one machine for the convolutions of a model,
/// as `ddepc tune` measured them: select-conv-algorithm's cost table.
///
/// A convolution is known by what decides its cost: which kernel computes it
/// (forward, input gradient, weight gradient), its input and filter shapes,
/// its padding, and whether its filters are prepared once (inference) or
/// transformed on every call. Its epilogue is left out: the same loop runs
/// after either algorithm.
public struct ConvCostTable: Codable, Equatable, Sendable {
    public static let format = 1
    /// The table's name for the im2col + GEMM kernels (no `algorithm` attribute).
    public static let im2col = "im2col"
    /// Every algorithm a 3×3 stride-1 convolution can run with.
    public static let algorithms = [im2col] + ConvOps.Algorithm.winograd.keys.sorted()

    public typealias Kernel = ConvOps.Kernel

    public struct Convolution: Codable, Hashable, Sendable, CustomStringConvertible {
        public var kernel: Kernel
        /// N, C, H, W of the convolution's input x.
        public var input: [Int]
        /// O, C, 3, 3.
        public var weight: [Int]
        public var pad: [Int]
        /// Filters transformed once by prepare-weights, not on every call.
        public var preparedFilters: Bool

        public init(kernel: Kernel, input: [Int], weight: [Int], pad: [Int], preparedFilters: Bool) {
            self.kernel = kernel
            self.input = input
            self.weight = weight
            self.pad = pad
            self.preparedFilters = preparedFilters
        }

        public var description: String {
            let shape = { (dims: [Int]) in dims.map(String.init).joined(separator: "×") }
            return "\(kernel.rawValue) x \(shape(input)) w \(shape(weight)) pad \(pad.map(String.init).joined(separator: ","))"
                + (preparedFilters ? " (prepared filters)" : "")
        }
    }

    public struct Measurement: Codable, Equatable, Sendable {
        public var convolution: Convolution
        /// Median seconds per call, by algorithm (`ConvCostTable.algorithms`).
        public var seconds: [String: Double]
        public init(convolution: Convolution, seconds: [String: Double]) {
            self.convolution = convolution
            self.seconds = seconds
        }

        /// The algorithm that took least; nil means im2col.
        public var fastest: String? {
            let best = seconds.filter { $0.value > 0 }.min { ($0.value, $0.key) < ($1.value, $1.key) }?.key
            return best == ConvCostTable.im2col ? nil : best
        }

        /// The fastest algorithm, unless `preferred` (nil: im2col) was
        /// within `ConvCostTable.tie` of it: a difference the tuner cannot
        /// tell from the host's noise does not overturn the rule, and two
        /// tunes of one machine then compile alike.
        public func choice(preferring preferred: String?) -> String? {
            guard let best = seconds[fastest ?? ConvCostTable.im2col],
                  let kept = seconds[preferred ?? ConvCostTable.im2col] else { return fastest }
            return kept <= best * (1 + ConvCostTable.tie) ? preferred : fastest
        }
    }

    /// How much slower than the fastest an algorithm may have measured and
    /// still count as a tie (medians of interleaved calls moved by about
    /// this much between tunes on Zen 5).
    public static let tie = 0.03

    public var format = ConvCostTable.format
    /// The kernels' ISA (avx512, avx2) and thread count it was measured at.
    public var isa: String
    public var threads: Int
    /// The CPU's model name, for the reader.
    public var cpu: String
    public var measurements: [Measurement]

    public init(isa: String, threads: Int, cpu: String, measurements: [Measurement]) {
        self.isa = isa
        self.threads = threads
        self.cpu = cpu
        self.measurements = measurements
    }

    /// What was measured of `convolution`, if it was.
    public func measurement(of convolution: Convolution) -> Measurement? {
        measurements.first { $0.convolution == convolution }
    }

    /// The convolution `node` computes, if Winograd can compute it; its
    /// filters prepared when `preparedFilters`.
    public static func convolution(of node: Node, operandTypes: [TensorType], preparedFilters: Bool) -> Convolution? {
        guard let (kernel, input, weight) = ConvOps.winogradConvolution(node, operandTypes: operandTypes) else { return nil }
        let pad = (try? node.attrs.ints("pad")) ?? [0, 0]
        return Convolution(kernel: kernel, input: input, weight: weight, pad: pad, preparedFilters: preparedFilters)
    }
}

extension ConvOps.Kernel: Codable {}
