import IR

/// A hierarchical name for parameters: `root["enc"]["layer1"]["0"]` names
/// `enc.layer1.0.*`. Parameters are function arguments created on first use;
/// they are `.frozen` under a frozen prefix of the context, else `.param`.
public struct Scope {
    public let context: BuildContext
    /// Dotted path ("" for the root).
    public let path: String

    public init(context: BuildContext, path: String) {
        self.context = context
        self.path = path
    }

    /// The scope `path.name` (`name` may itself be dotted: "conv1.0").
    public func child(_ name: String) -> Scope {
        Scope(context: context, path: qualified(name))
    }

    /// Shorthand for `child(name)`.
    public subscript(_ name: String) -> Scope { child(name) }

    /// The full name of `leaf` in this scope.
    public func qualified(_ leaf: String) -> String { path.isEmpty ? leaf : path + "." + leaf }

    /// Whether this scope lies under a frozen prefix.
    public var isFrozen: Bool { context.isFrozen(path) }

    /// Training-mode behaviour (batch statistics) applies here.
    public var isTraining: Bool { context.training && !isFrozen }

    /// The weight `path.name` (`.param`, or `.frozen` under a frozen prefix).
    public func param(_ name: String, _ shape: [Int], init rule: InitRule) -> Tensor {
        let full = qualified(name)
        let role: ArgRole = context.isFrozen(full) ? .frozen : .param
        return Tensor(context.parameter(full, shape, role: role, initRule: rule), context)
    }

    /// Mutable non-trainable data `path.name` (running statistics): `.state`.
    public func state(_ name: String, _ shape: [Int], init rule: InitRule) -> Tensor {
        Tensor(context.parameter(qualified(name), shape, role: .state, initRule: rule), context)
    }
}
