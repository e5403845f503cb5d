import ArgumentParser
import Foundation
import Runtime

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time an artifact's entry points against this machine's measured sgemm peak.",
        discussion: "Without an artifact, only the sgemm peak is measured. GFLOP/s counts convolution and matmul work only.")

    @ArgumentParser.Argument(help: "Artifact directory (NAME.ddepc).") var artifact: String?
    @Option(help: "Timed calls per entry point (after 2 warm-up calls).") var calls = 10
    @Option(help: "Matrix size n for the n×n×n sgemm peak.") var n = 1024

    func validate() throws {
        guard calls > 0, n > 0 else { throw ValidationError("--calls and --n must be positive") }
    }

    func run() throws {
        try reportingErrors {
            // An artifact that cannot be used is reported before seconds of measuring.
            if let artifact {
                let loaded = try Artifact(directory: URL(fileURLWithPath: artifact))
                for entry in loaded.manifest.layout.entries { try MemoryBudget.require(entry, of: loaded) }
            }
            let peak = Benchmark.sgemmPeak(n: n)
            print(String(format: "sgemm %d×%d×%d peak: %.1f GFLOP/s", n, n, n, peak))
            guard let artifact else { return }
            let loaded = try Artifact(directory: URL(fileURLWithPath: artifact))
            let m = loaded.manifest
            print("\(artifact): \(m.backend) backend, batch \(m.batch), \(m.size)×\(m.size)")
            print("entry                 ms/call   images/s   GFLOP/s  % of peak   arena MB")
            for r in try Benchmark.run(loaded, calls: calls) {
                print(r.entry.padding(toLength: 20, withPad: " ", startingAt: 0)
                      + String(format: "%9.2f  %9.1f  %8.1f  %8.0f%%  %9.1f", r.secondsPerCall * 1000, r.imagesPerSecond,
                               r.gflopsPerSecond, 100 * r.gflopsPerSecond / peak, Double(r.arenaBytes) / 1e6))
            }
        }
    }
}
