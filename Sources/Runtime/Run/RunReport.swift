import Foundation

/// A run directory read back: its configuration, per-step metrics,
/// checkpoints and evaluation, summarized as text and drawn as a loss curve.
public struct RunReport {
    public struct Point: Equatable {
        public var step: Int
        public var loss: Double
        public var lr: Double
        public var imagesPerSecond: Double
        public var seconds: Double
    }

    public let run: URL
    public let points: [Point]
    public let config: [String: Any]

    public init(run: URL) throws {
        self.run = run
        let metrics = run.appendingPathComponent("metrics.jsonl")
        guard let text = try? String(contentsOf: metrics, encoding: .utf8) else {
            throw RuntimeError("\(metrics.path) does not exist or cannot be read; is \(run.path) a training run directory?")
        }
        var points: [Point] = []
        for line in text.split(separator: "\n") {
            // A line cut short by a crash is skipped; the others must parse.
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let step = (object["step"] as? NSNumber)?.intValue, let loss = (object["loss"] as? NSNumber)?.doubleValue else { continue }
            points.append(Point(step: step, loss: loss, lr: (object["lr"] as? NSNumber)?.doubleValue ?? .nan,
                                imagesPerSecond: (object["images_per_s"] as? NSNumber)?.doubleValue ?? .nan,
                                seconds: (object["seconds"] as? NSNumber)?.doubleValue ?? 0))
        }
        self.points = points
        let configData = try? Data(contentsOf: run.appendingPathComponent("config.json"))
        config = configData.flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
    }

    /// Exponential moving average of the losses (smoothing 0.9, bias-corrected).
    public var smoothedLosses: [Double] {
        var average = 0.0, weight = 0.0
        return points.map { p in
            average = 0.9 * average + 0.1 * p.loss
            weight = 0.9 * weight + 0.1
            return average / weight
        }
    }

    public func summary() -> String {
        var lines = ["run \(run.path)"]
        if let mode = config["mode"] { lines.append("  mode \(mode), artifact \(config["artifact"] ?? "?")") }
        if let data = config["images"] ?? config["data"] {
            var text = "  data \(data), \(config["examples"] ?? "?") images"
            if let fraction = config["labelFraction"] { text += " (label fraction \(fraction))" }
            lines.append(text)
        }
        guard let first = points.first, let last = points.last else {
            lines.append("  no steps logged yet")
            return lines.joined(separator: "\n") + "\n"
        }
        let total = (config["steps"] as? NSNumber)?.intValue
        lines.append("  steps \(last.step)\(total.map { " of \($0)" } ?? "")" + (last.step == total ? " (finished)" : ""))
        let best = points.min { $0.loss < $1.loss }!
        let tail = Array(points.suffix(max(1, points.count / 10)))
        lines.append(String(format: "  loss %.5f (step %d) → %.5f (step %d); lowest %.5f at step %d; mean of the last %d steps %.5f",
                            first.loss, first.step, last.loss, last.step, best.loss, best.step, tail.count,
                            tail.map(\.loss).reduce(0, +) / Double(tail.count)))
        let rates = points.map(\.imagesPerSecond).filter(\.isFinite).sorted()
        let seconds = points.map(\.seconds).reduce(0, +)
        if !rates.isEmpty {
            lines.append(String(format: "  %.1f images/s (median); %@ in the logged steps", rates[rates.count / 2], ProgressReporter.duration(seconds)))
        }
        let checkpoints = CheckpointDirectory(run: run).checkpoints().map { "\($0.step)" }
        lines.append("  checkpoints at steps: " + (checkpoints.isEmpty ? "none" : checkpoints.joined(separator: ", ")))
        if let data = try? Data(contentsOf: run.appendingPathComponent("eval.json")),
           let eval = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let miou = eval["mIoU"] as? NSNumber {
            lines.append(String(format: "  eval: mIoU %.2f %% on %@ images", 100 * miou.doubleValue, "\(eval["images"] ?? "?")"))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The loss curve as an SVG document: the raw losses, their moving
    /// average, axes with ticks; a log scale when the losses span more than
    /// two decades.
    public func svg(width: Int = 800, height: Int = 420) -> String {
        let left = 70.0, right = 20.0, top = 36.0, bottom = 48.0
        let plotW = Double(width) - left - right, plotH = Double(height) - top - bottom
        let finite = points.filter { $0.loss.isFinite }
        let losses = finite.map(\.loss)
        let lo = losses.min() ?? 0, hi = losses.max() ?? 1
        let logScale = lo > 0 && hi / lo > 100
        func yValue(_ v: Double) -> Double { logScale ? log10(v) : v }
        var y0 = yValue(lo), y1 = yValue(hi)
        if y1 - y0 < 1e-12 { y0 -= 0.5; y1 += 0.5 }
        let pad = (y1 - y0) * 0.05
        y0 -= pad
        y1 += pad
        let s0 = Double(finite.first?.step ?? 0), s1 = Double(max(finite.last?.step ?? 1, (finite.first?.step ?? 0) + 1))
        func px(_ step: Double) -> Double { left + (step - s0) / (s1 - s0) * plotW }
        func py(_ v: Double) -> Double { top + (1 - (yValue(v) - y0) / (y1 - y0)) * plotH }
        func f(_ x: Double) -> String { String(format: "%.1f", x) }
        func path(_ values: [Double]) -> String {
            zip(finite, values).map { "\(f(px(Double($0.step)))),\(f(py($1)))" }.joined(separator: " ")
        }
        var svg = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)" viewBox="0 0 \(width) \(height)" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(f(left))" y="20" font-size="14">\(xmlEscape("loss — \(run.lastPathComponent) (\(config["mode"] ?? "training"))"))</text>
        <rect x="\(f(left))" y="\(f(top))" width="\(f(plotW))" height="\(f(plotH))" fill="none" stroke="#888"/>

        """
        for i in 0...4 {
            let v = y0 + (y1 - y0) * Double(i) / 4
            let y = top + (1 - Double(i) / 4) * plotH
            let label = logScale ? String(format: "%.3g", pow(10, v)) : String(format: "%.4g", v)
            svg += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + plotW))\" y2=\"\(f(y))\" stroke=\"#eee\"/>"
            svg += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(label)</text>\n"
            let step = s0 + (s1 - s0) * Double(i) / 4
            let x = left + plotW * Double(i) / 4
            svg += "<text x=\"\(f(x))\" y=\"\(f(top + plotH + 18))\" text-anchor=\"middle\">\(Int(step.rounded()))</text>\n"
        }
        svg += "<text x=\"\(f(left + plotW / 2))\" y=\"\(height - 8)\" text-anchor=\"middle\">step</text>\n"
        svg += "<text transform=\"translate(16 \(f(top + plotH / 2))) rotate(-90)\" text-anchor=\"middle\">loss\(logScale ? " (log scale)" : "")</text>\n"
        if !finite.isEmpty {
            let smooth = RunReport(points: finite, run: run, config: config).smoothedLosses
            svg += "<polyline fill=\"none\" stroke=\"#9ecae1\" stroke-width=\"1\" points=\"\(path(losses))\"/>\n"
            svg += "<polyline fill=\"none\" stroke=\"#08519c\" stroke-width=\"2\" points=\"\(path(smooth))\"/>\n"
        }
        svg += "</svg>\n"
        return svg
    }

    private init(points: [Point], run: URL, config: [String: Any]) {
        self.points = points
        self.run = run
        self.config = config
    }
}

func xmlEscape(_ text: String) -> String {
    text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}
