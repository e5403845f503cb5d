/// SSA value number, unique within a function (`%12`).
public typealias ValueID = Int

/// What a function argument is. Trainable parameters get gradients; frozen
/// ones never do; state is mutable non-trainable data (optimizer moments,
/// normalization running statistics); inputs are per-call data.
public enum ArgRole: String, CaseIterable, Sendable {
    case input, param, frozen, state

    /// Parameters and frozen parameters share the runtime's weight buffer.
    public var isWeight: Bool { self == .param || self == .frozen }
}

/// How the runtime initializes a weight or state buffer.
public enum InitRule: Hashable, CustomStringConvertible, Sendable {
    case zeros, ones
    /// He/Kaiming normal over fan_in: std = sqrt(2 / fan_in), fan_in = prod(shape[1...]).
    case he
    /// Kaiming normal over fan_out for ReLU (`kaiming_normal_(mode="fan_out",
    /// nonlinearity="relu")`, torchvision's ResNet convs): std = sqrt(2 / fan_out),
    /// fan_out = shape[0]·prod(shape[2...]).
    case heFanOut
    /// Kaiming uniform over fan_in with leaky-ReLU slope `a`: bound =
    /// sqrt(6 / ((1 + a²)·fan_in)). a = √5 is PyTorch's default for Conv and
    /// Linear weights (bound 1/√fan_in); a = 0 is `nonlinearity="relu"`
    /// (smp's decoder convs; bound √(6/fan_in)).
    case kaimingUniform(a: Double)
    /// Xavier/Glorot uniform: bound = sqrt(6 / (fan_in + fan_out)).
    case xavier
    /// Uniform on [-bound, bound] (PyTorch's default bias: bound = 1/√fan_in of its weight).
    case uniform(Double)
    /// Normal with a given standard deviation.
    case normal(Double)

    /// PyTorch's `nn.Conv2d`/`nn.Linear` weight default (`kaiming_uniform_(a=√5)`).
    public static let pytorchWeight = InitRule.kaimingUniform(a: 5.0.squareRoot())

    /// PyTorch's `nn.Conv2d`/`nn.Linear` bias default for a weight with `fanIn` inputs.
    public static func pytorchBias(fanIn: Int) -> InitRule { .uniform(1 / Double(Swift.max(fanIn, 1)).squareRoot()) }

    /// fan_in and fan_out of a weight of `shape`, as PyTorch computes them
    /// (receptive field = prod(shape[2...])); at least 1.
    public static func fans(_ shape: [Int]) -> (fanIn: Int, fanOut: Int) {
        let receptive = shape.dropFirst(2).reduce(1, *)
        let fanIn = shape.count >= 2 ? shape[1] * receptive : (shape.first ?? 1)
        let fanOut = (shape.first ?? 1) * receptive
        return (Swift.max(fanIn, 1), Swift.max(fanOut, 1))
    }

    /// The standard deviation of the values this rule draws for `shape` (0 for constants).
    public func standardDeviation(shape: [Int]) -> Double {
        let (fanIn, fanOut) = InitRule.fans(shape)
        switch self {
        case .zeros, .ones: return 0
        case .he: return (2 / Double(fanIn)).squareRoot()
        case .heFanOut: return (2 / Double(fanOut)).squareRoot()
        case .kaimingUniform(let a): return (2 / ((1 + a * a) * Double(fanIn))).squareRoot()
        case .xavier: return (2 / Double(fanIn + fanOut)).squareRoot()
        case .uniform(let bound): return bound / 3.0.squareRoot()
        case .normal(let std): return std
        }
    }

    /// The bound of a uniform rule for `shape` (nil for the others).
    public func uniformBound(shape: [Int]) -> Double? {
        let (fanIn, fanOut) = InitRule.fans(shape)
        switch self {
        case .kaimingUniform(let a): return (6 / ((1 + a * a) * Double(fanIn))).squareRoot()
        case .xavier: return (6 / Double(fanIn + fanOut)).squareRoot()
        case .uniform(let bound): return bound
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .zeros: return "zeros"
        case .ones: return "ones"
        case .he: return "he"
        case .heFanOut: return "he_fan_out"
        case .kaimingUniform(let a): return "kaiming_uniform(\(a))"
        case .xavier: return "xavier"
        case .uniform(let bound): return "uniform(\(bound))"
        case .normal(let std): return "normal(\(std))"
        }
    }

    public init?(text: String) {
        switch text {
        case "zeros": self = .zeros
        case "ones": self = .ones
        case "he": self = .he
        case "he_fan_out": self = .heFanOut
        case "xavier": self = .xavier
        default:
            func argument(_ prefix: String) -> Double? {
                guard text.hasPrefix(prefix + "("), text.hasSuffix(")"),
                      let value = Double(text.dropFirst(prefix.count + 1).dropLast()), value.isFinite, value >= 0 else { return nil }
                return value
            }
            if let std = argument("normal") { self = .normal(std) }
            else if let a = argument("kaiming_uniform") { self = .kaimingUniform(a: a) }
            else if let bound = argument("uniform") { self = .uniform(bound) }
            else { return nil }
        }
    }
}

public struct Argument: Hashable, Sendable {
    public var id: ValueID
    public var type: TensorType
    public var role: ArgRole
    /// Stable name: `x`, `enc.stem.conv.weight`, `opt.m.dec.head.weight`.
    public var name: String
    public var initRule: InitRule?

    public init(id: ValueID, type: TensorType, role: ArgRole, name: String, initRule: InitRule? = nil) {
        self.id = id
        self.type = type
        self.role = role
        self.name = name
        self.initRule = initRule
    }
}

public struct Node: Hashable, Sendable {
    public var id: ValueID
    public var op: String
    public var operands: [ValueID]
    public var attrs: Attributes
    public var type: TensorType
    public var loc: SourceLoc?
    /// Byte offset of the result in the activation arena, set by plan-memory.
    public var arenaOffset: Int?
    /// The argument whose storage the result overwrites instead (an update
    /// computed in place, see `InPlaceAnalysis`), set by plan-memory.
    public var inPlaceOf: ValueID?
    /// Byte offset in the arena of the scratch its kernels borrow during
    /// the call (`KernelCall.scratchFloats`), set by plan-memory.
    public var scratchOffset: Int?
    /// Bytes of the arena that nothing holds during the call, lent to its
    /// kernels' per-thread scratch (`KernelCall.threadScratch`), set by
    /// plan-memory.
    public var spare: Range<Int>?

    public init(id: ValueID, op: String, operands: [ValueID], attrs: Attributes = [:],
                type: TensorType, loc: SourceLoc? = nil, arenaOffset: Int? = nil) {
        self.id = id
        self.op = op
        self.operands = operands
        self.attrs = attrs
        self.type = type
        self.loc = loc
        self.arenaOffset = arenaOffset
    }
}

/// A named result of a function.
public struct Output: Hashable, Sendable {
    public var value: ValueID
    public var name: String
    public init(value: ValueID, name: String) {
        self.value = value
        self.name = name
    }
}

/// `update %target = %value`: after the call, the parameter or state argument
/// `target` holds `value` (optimizer steps, running statistics).
public struct Update: Hashable, Sendable {
    public var target: ValueID
    public var value: ValueID
    public init(target: ValueID, value: ValueID) {
        self.target = target
        self.value = value
    }
}

/// A function: arguments, nodes in schedule order (always topological), outputs
/// and in-place updates.
public struct Function: Hashable, Sendable {
    public var name: String
    public var args: [Argument]
    public var nodes: [Node]
    public var outputs: [Output]
    public var updates: [Update]
    /// Activation arena size in bytes, set by plan-memory.
    public var arenaBytes: Int?

    public init(name: String, args: [Argument] = [], nodes: [Node] = [], outputs: [Output] = [],
                updates: [Update] = [], arenaBytes: Int? = nil) {
        self.name = name
        self.args = args
        self.nodes = nodes
        self.outputs = outputs
        self.updates = updates
        self.arenaBytes = arenaBytes
    }

    /// The next unused value number. (By index, without copying a node or
    /// an array: the planner's tables ask for it on every count.)
    public var nextID: ValueID {
        var largest = -1
        for index in args.indices where args[index].id > largest { largest = args[index].id }
        for index in nodes.indices where nodes[index].id > largest { largest = nodes[index].id }
        return largest + 1
    }

    /// Types of every value, arguments and nodes.
    public var types: [ValueID: TensorType] {
        var types: [ValueID: TensorType] = [:]
        types.reserveCapacity(args.count + nodes.count)
        for arg in args { types[arg.id] = arg.type }
        for index in nodes.indices { types[nodes[index].id] = nodes[index].type } // by index: no copy of each node
        return types
    }

    public func argument(named name: String) -> Argument? { args.first { $0.name == name } }
    public func output(named name: String) -> Output? { outputs.first { $0.name == name } }

    /// Values the function's results depend on directly.
    public var rootValues: [ValueID] { outputs.map(\.value) + updates.map(\.value) }
}

/// A compilation unit: the entry points of one model.
public struct Module: Hashable, Sendable {
    public var functions: [Function]
    public init(functions: [Function] = []) { self.functions = functions }

    public func function(named name: String) -> Function? { functions.first { $0.name == name } }

    public subscript(name: String) -> Function? {
        get { function(named: name) }
        set {
            if let index = functions.firstIndex(where: { $0.name == name }) {
                if let newValue { functions[index] = newValue } else { functions.remove(at: index) }
            } else if let newValue {
                functions.append(newValue)
            }
        }
    }
}
