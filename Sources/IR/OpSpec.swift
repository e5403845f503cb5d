/// A value handle used while building or transforming a function.
public struct Value: Hashable, Sendable {
    public var id: ValueID
    public var type: TensorType
    public init(id: ValueID, type: TensorType) {
        self.id = id
        self.type = type
    }
    public var shape: [Int] { type.shape }
    public var rank: Int { type.rank }
}

/// A dense host tensor for the reference interpreter. Every dtype is held in
/// Double (integers used here — labels, seeds — are exact below 2^53).
public struct HostTensor: Hashable, Sendable {
    public var type: TensorType
    public var data: [Double]

    public init(_ type: TensorType, _ data: [Double]) {
        precondition(data.count == type.count, "HostTensor: \(data.count) values for \(type)")
        self.type = type
        self.data = data
    }

    public init(zeros type: TensorType) { self.init(type, [Double](repeating: 0, count: type.count)) }
    public init(scalar: Double, dtype: DType = .f32) { self.init(TensorType(dtype, []), [scalar]) }

    public var shape: [Int] { type.shape }
    public var scalar: Double { data[0] }
}

/// A call of one runtime kernel (see ddp_kernels.h) with buffers named
/// relative to the node.
public struct KernelCall: Hashable, Sendable {
    public enum Buffer: Hashable, Sendable {
        case operand(Int)
        case result
    }

    public var kernel: String
    public var buffers: [Buffer]
    public var ints: [Int]
    public var floats: [Double]
    /// Floats of scratch the kernel borrows from the arena for this call
    /// (its weights scratch, see `lend_scratch` in ddp_kernels.h): at least
    /// what it asks for on every ISA. plan-memory places it with the node's
    /// buffers (`Node.scratchOffset`), where the kernel would otherwise keep
    /// a heap block of that size for the rest of the process.
    public var scratchFloats: Int
    /// The kernel asks for per-thread scratch (im2col columns, Winograd
    /// blocks, GEMM packing), whose size depends on the ISA and the thread
    /// count: plan-memory lends it the arena that nothing holds during the
    /// call (`Node.spare`, see `lend_thread_scratch` in ddp_kernels.h), where
    /// the kernel would otherwise keep heap blocks for the rest of the process.
    public var threadScratch: Bool

    public init(_ kernel: String, _ buffers: [Buffer], ints: [Int] = [], floats: [Double] = [], scratchFloats: Int = 0,
                threadScratch: Bool = false) {
        self.kernel = kernel
        self.buffers = buffers
        self.ints = ints
        self.floats = floats
        self.scratchFloats = scratchFloats
        self.threadScratch = threadScratch
    }
}

extension OpSpec {
    /// The most scratch (floats) one of the op's kernel calls borrows from
    /// the arena (`KernelCall.scratchFloats`); 0 for loops and aliases.
    public func kernelScratchFloats(operands: [TensorType], result: TensorType, attrs: Attributes) -> Int {
        guard case .kernels(let lower) = lowering, let calls = try? lower(operands, result, attrs) else { return 0 }
        return calls.map(\.scratchFloats).max() ?? 0
    }

    /// Whether one of the op's kernel calls asks for per-thread scratch
    /// (`KernelCall.threadScratch`).
    public func kernelsBorrowThreadScratch(operands: [TensorType], result: TensorType, attrs: Attributes) -> Bool {
        guard case .kernels(let lower) = lowering, let calls = try? lower(operands, result, attrs) else { return false }
        return calls.contains { $0.threadScratch }
    }
}

/// How an op becomes code. Backends share this; they only differ in how they
/// render a loop or a call.
public enum Lowering {
    /// A generated loop over the result's elements (operands broadcast).
    case elementwise((Attributes) throws -> ScalarExpr)
    /// The result is operand 0's bytes reinterpreted (reshape): no code.
    case alias
    /// Calls to runtime kernels, in order.
    case kernels((_ operands: [TensorType], _ result: TensorType, _ attrs: Attributes) throws -> [KernelCall])
    /// A runtime kernel fed by a generated loop (a fused reduction): the loop
    /// computes the expression over the operands' elements (all of one shape)
    /// into a small buffer, and the kernel, given the loop first, calls it a
    /// chunk at a time and reduces what it computed. The call's buffers are
    /// the result and then the operands.
    case kernelOverLoop(expr: (Attributes) throws -> ScalarExpr,
                        kernel: (_ operands: [TensorType], _ result: TensorType, _ attrs: Attributes) throws -> KernelCall)
}

/// What a gradient rule sees: the forward node, its operands and result, the
/// incoming gradient (same shape as the result) and a builder to emit into.
public struct GradientContext {
    public let builder: FunctionBuilder
    public let node: Node
    public let operands: [Value]
    public let result: Value
    public let grad: Value
    public var attrs: Attributes { node.attrs }

    public init(builder: FunctionBuilder, node: Node, operands: [Value], result: Value, grad: Value) {
        self.builder = builder
        self.node = node
        self.operands = operands
        self.result = result
        self.grad = grad
    }
}

/// One op, defined in one place: its name, printed form, attributes, shape
/// rule, gradient rule, reference evaluation and lowering.
public struct OpSpec {
    public typealias TypeRule = (_ operands: [TensorType], _ attrs: Attributes) throws -> TensorType
    public typealias Evaluate = (_ operands: [HostTensor], _ attrs: Attributes, _ result: TensorType) throws -> HostTensor
    /// Returns one gradient per operand (nil: no gradient flows there). A
    /// gradient may have a broadcast shape; autodiff reduces it to the operand's.
    public typealias GradientRule = (GradientContext) throws -> [Value?]
    /// Floating-point operations of one instance (multiply and add counted
    /// apart); nil for ops that are memory-bound rather than compute-bound.
    public typealias FlopRule = (_ operands: [TensorType], _ result: TensorType, _ attrs: Attributes) -> Double

    public let name: String
    /// One line: the printed form and what it computes.
    public let doc: String
    /// Allowed operand counts.
    public let arity: ClosedRange<Int>
    /// Attributes every instance must carry.
    public let requiredAttributes: [String]
    public let inferType: TypeRule
    public let evaluate: Evaluate
    /// nil: not differentiable (integer or random results).
    public let gradient: GradientRule?
    public let lowering: Lowering
    /// Sample instances for the op registry test: operand types and attributes.
    public let examples: [(operands: [TensorType], attrs: Attributes)]
    /// The op's arithmetic (benchmarks report GFLOP/s from it).
    public let flops: FlopRule?
    /// Operands of the result's type whose bytes the kernel may write the
    /// result over (it reads each part of them before writing that part):
    /// plan-memory then places the result there when nothing reads the
    /// operand afterwards. The init's `overwritesOperand` names one operand
    /// for every instance (a batch norm's x); a rule of its own may depend on
    /// the instance (a Winograd convolution's residual and gate, read element
    /// for element as it stores the result). nil: none.
    public typealias OverwriteRule = (_ operands: [TensorType], _ result: TensorType, _ attrs: Attributes) -> [Int]
    public let overwritableOperands: OverwriteRule?
    /// Recomputing the result costs about what storing and reading it back
    /// does (data movement: resampling, concatenation): `rematerialize` may
    /// compute it again where it is needed late instead of holding it.
    public let rematerializable: Bool
    /// The result is a few passes over the operands (a normalization, a
    /// softmax): `rematerialize` may compute it again where its operands are
    /// held anyway, as it does an elementwise loop's.
    public let recomputable: Bool

    public init(name: String, doc: String, arity: ClosedRange<Int>, requiredAttributes: [String] = [],
                inferType: @escaping TypeRule, evaluate: @escaping Evaluate,
                gradient: GradientRule?, lowering: Lowering,
                examples: [(operands: [TensorType], attrs: Attributes)], flops: FlopRule? = nil,
                overwritesOperand: Int? = nil, overwritableOperands: OverwriteRule? = nil, rematerializable: Bool = false,
                recomputable: Bool = false) {
        self.name = name
        self.doc = doc
        self.arity = arity
        self.requiredAttributes = requiredAttributes
        self.inferType = inferType
        self.evaluate = evaluate
        self.gradient = gradient
        self.lowering = lowering
        self.examples = examples
        self.flops = flops
        precondition(overwritesOperand == nil || overwritableOperands == nil, "\(name): one overwrite rule")
        self.overwritableOperands = overwritableOperands ?? overwritesOperand.map { k in { _, _, _ in [k] } }
        self.rematerializable = rematerializable
        self.recomputable = recomputable
    }

    /// Check operand count and required attributes, then apply the shape rule.
    public func checkedType(operands: [TensorType], attrs: Attributes) throws -> TensorType {
        guard arity.contains(operands.count) else {
            let expected = arity.lowerBound == arity.upperBound ? "\(arity.lowerBound)" : "\(arity.lowerBound)...\(arity.upperBound)"
            throw IRError("\(name) takes \(expected) operands, got \(operands.count)")
        }
        for key in requiredAttributes where attrs[key] == nil {
            throw IRError("\(name) needs attribute '\(key)'")
        }
        return try inferType(operands, attrs)
    }
}

/// Every op ddepc knows. Generic code (printer, parser, CSE, DCE, verifier,
/// interpreter) looks ops up here and never switches over op names.
public enum OpRegistry {
    public static let all: [OpSpec] = ElementwiseOps.all + ShapeOps.all + ReductionOps.all
        + ConvOps.all + FusedConvOps.all + WinogradFilterOps.all + PoolOps.all + UpsampleOps.all + NormOps.all + BatchMomentsOps.all + MatMulOps.all
        + SoftmaxOps.all + LossOps.all + RandomOps.all + CollectiveOps.all

    private static let byName: [String: OpSpec] = Dictionary(all.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })

    public static func spec(_ name: String) -> OpSpec? { byName[name] }

    public static func require(_ name: String) throws -> OpSpec {
        guard let spec = byName[name] else { throw IRError("unknown op '\(name)'") }
        return spec
    }
}
