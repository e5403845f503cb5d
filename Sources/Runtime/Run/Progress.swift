import Foundation

/// Training progress for people: on a terminal one bar redrawn in place,
/// otherwise plain lines (every `every` steps, and the first and last step):
///
///     step  120/1000  loss 0.01234  lr 1.00e-03  12.3 img/s  eta 1m23s
public final class ProgressReporter {
    public let totalSteps: Int
    public let batch: Int
    public let interactive: Bool
    public let every: Int
    let write: (String) -> Void
    private var secondsPerStep: Double?
    private var drawn = false

    public init(totalSteps: Int, batch: Int, interactive: Bool, every: Int = 10, write: @escaping (String) -> Void) {
        self.totalSteps = totalSteps
        self.batch = batch
        self.interactive = interactive
        self.every = max(1, every)
        self.write = write
    }

    /// Whether standard output is a terminal.
    public static var standardOutputIsTerminal: Bool { isatty(STDOUT_FILENO) != 0 }

    /// Reports a finished step (1-based) that took `seconds`.
    public func update(step: Int, loss: Double, lr: Double, seconds: Double, first: Bool) {
        // A moving average, so the estimate settles after the first slow steps.
        secondsPerStep = secondsPerStep.map { 0.9 * $0 + 0.1 * seconds } ?? seconds
        let rate = Double(batch) / max(secondsPerStep ?? seconds, 1e-9)
        let left = Double(totalSteps - step) * (secondsPerStep ?? seconds)
        let text = String(format: "step %4d/%d  loss %.5f  lr %.2e  %.1f img/s  eta %@", step, totalSteps, loss, lr, rate,
                          Self.duration(left))
        if interactive {
            let width = 24, filled = totalSteps > 0 ? width * step / totalSteps : width
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
            write("\r\u{1B}[K\(bar) " + text + (step == totalSteps ? "\n" : ""))
            drawn = step != totalSteps
        } else if first || step == totalSteps || step % every == 0 {
            write(text + "\n")
        }
    }

    /// Ends the bar's line before other output.
    public func interrupt() {
        if drawn { write("\n") }
        drawn = false
    }

    /// `1h02m`, `3m07s`, `12s`.
    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "?" }
        let s = Int(seconds.rounded())
        if s >= 3600 { return String(format: "%dh%02dm", s / 3600, s % 3600 / 60) }
        if s >= 60 { return String(format: "%dm%02ds", s / 60, s % 60) }
        return "\(s)s"
    }
}
