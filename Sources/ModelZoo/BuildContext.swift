import IR

/// Everything a model sees while it is traced into one IR function: the
/// builder, whether this is a training step, which parameter prefixes are
/// frozen, the active source location and the first error.
///
/// Errors are collected, not thrown: after the first one every op returns a
/// placeholder (its first operand) and emits nothing, so model code needs no
/// `try`. `finish()` (and so `buildModule`) throws that first error, located
/// at the model-file line that caused it.
public final class BuildContext {
    public let builder: FunctionBuilder
    /// A training step: batch norm under a trainable scope uses batch
    /// statistics and updates its running statistics.
    public let training: Bool
    /// Parameter-name prefixes whose parameters are `.frozen` (e.g. `["enc"]`).
    public let frozenPrefixes: [String]
    public private(set) var firstError: IRError?

    private var parameters: [String: (Value, ArgRole)] = [:]
    /// Whether the active location is a user (non-ModelZoo) line; those win
    /// over the library lines of the layers they call.
    private var locationIsUser = false

    public init(function name: String, training: Bool, frozen: [String] = []) {
        builder = FunctionBuilder(name: name)
        self.training = training
        frozenPrefixes = frozen
    }

    /// The unnamed root scope; models usually get `root["enc"]` etc.
    public var root: Scope { Scope(context: self, path: "") }

    /// Whether a parameter or scope name lies under a frozen prefix.
    public func isFrozen(_ name: String) -> Bool {
        frozenPrefixes.contains { name == $0 || name.hasPrefix($0 + ".") }
    }

    // MARK: Arguments, results

    /// A per-call input argument (`x`, `labels`, `seed`).
    public func input(_ name: String, _ type: TensorType) -> Tensor {
        Tensor(builder.argument(name, type, role: .input), self)
    }

    /// The weight or state argument `name`, created on first use. A second
    /// request must ask for the same shape (it is the same parameter).
    func parameter(_ name: String, _ shape: [Int], role: ArgRole, initRule: InitRule) -> Value {
        if let (existing, existingRole) = parameters[name] {
            if existing.shape != shape {
                fail("parameter \"\(name)\" was created with shape \(existing.shape), now used with shape \(shape)")
            } else if existingRole != role {
                fail("\"\(name)\" was created as \(existingRole), now used as \(role)")
            }
            return existing
        }
        let value = builder.argument(name, .f32(shape), role: role, initRule: initRule)
        parameters[name] = (value, role)
        return value
    }

    public func output(_ tensor: Tensor, name: String) {
        guard firstError == nil else { return }
        builder.output(tensor.value, name: name)
    }

    /// After the call, the `.param`/`.state` argument `target` holds `value`.
    public func update(_ target: Tensor, with value: Tensor) {
        guard firstError == nil else { return }
        builder.update(target.value, with: value.value)
    }

    /// The finished function, or the first error met while building it.
    public func finish() throws -> Function {
        if let firstError { throw firstError }
        return builder.function
    }

    // MARK: Errors

    /// Record an error at the active location (only the first one is kept).
    public func fail(_ message: String) {
        record(IRError(message, loc: builder.currentLoc))
    }

    func record(_ error: IRError) {
        if firstError == nil {
            var error = error
            if error.loc == nil { error.loc = builder.currentLoc }
            firstError = error
        }
    }

    /// Emit one node; on a shape error record it and return a placeholder.
    func emit(_ op: String, _ operands: [Value], _ attrs: Attributes = [:]) -> Value {
        if firstError == nil {
            do {
                return try builder.emit(op, operands, attrs)
            } catch let error as IRError {
                record(error)
            } catch {
                record(IRError("\(op): \(error)"))
            }
        }
        return operands.first ?? Value(id: -1, type: .f32([]))
    }

    // MARK: Source locations

    /// Run `body` with nodes located at `file:line`. A user line (any file
    /// outside ModelZoo) stays in force through the library layers it calls;
    /// a library line replaces only another library line.
    public func at<T>(_ file: StaticString, _ line: UInt, _ body: () throws -> T) rethrows -> T {
        let (loc, isLibrary) = BuildContext.location(file, line)
        let saved = (builder.currentLoc, locationIsUser)
        if !(isLibrary && locationIsUser) {
            builder.currentLoc = loc
            locationIsUser = !isLibrary
        }
        defer { (builder.currentLoc, locationIsUser) = saved }
        return try body()
    }

    /// `#fileID` → a SourceLoc: library files keep `ModelZoo/File.swift`,
    /// user files (model files, tests) show their file name.
    static func location(_ file: StaticString, _ line: UInt) -> (SourceLoc, isLibrary: Bool) {
        let id = file.withUTF8Buffer { String(decoding: $0, as: UTF8.self) }
        let isLibrary = id.hasPrefix("ModelZoo/")
        let shown = isLibrary ? id : String(id.split(separator: "/").last.map(String.init) ?? id)
        return (SourceLoc(file: shown, line: Int(line)), isLibrary)
    }
}
