import Foundation

/// What the denoising head learns to predict (a run-time choice: the steps
/// take target_noise and target_image inputs).
public enum DenoiseTargetKind: String, CaseIterable, Codable, Sendable {
    /// The noise ε (the paper's better choice without an input-to-output skip).
    case eps
    /// The clean image x.
    case x
}

/// A user-facing runtime error: what went wrong, where, and what to do.
public struct RuntimeError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "error: \(message)" }
}
