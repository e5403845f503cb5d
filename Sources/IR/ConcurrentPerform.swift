import Dispatch

/// Runs `body` for 0 ..< iterations on all cores and throws the error of
/// the first iteration, in index order, that threw one (whatever order they
/// ran in): the verifier's per-function checks and the backends' parts.
public func concurrentPerformThrowing(iterations: Int, _ body: (Int) throws -> Void) throws {
    var errors = [Error?](repeating: nil, count: iterations)
    errors.withUnsafeMutableBufferPointer { errors in
        DispatchQueue.concurrentPerform(iterations: iterations) { index in
            do { try body(index) } catch { errors[index] = error }
        }
    }
    if let first = errors.compactMap({ $0 }).first { throw first }
}
