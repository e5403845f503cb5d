import ArgumentParser
import DDPKernels
import Driver
import Foundation
import Runtime

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time an artifact's entry points against this machine's measured FMA peak.",
        discussion: """
            Each entry point runs on synthetic inputs with its buffers allocated once and its weights prepared \
            once (prepare_infer, as ddepc eval and predict do; it is timed as an entry point of its own); the \
            timed calls are the compiled step alone. GFLOP/s counts convolution and matmul work only, as a \
            direct convolution does it (a Winograd convolution does less, so its rate is an effective one and can pass the peak), \
            and is compared with the fp32 FMA peak measured on the spot at the kernels' ISA and thread count. \
            Without an artifact, only the peaks are measured.
            """)

    @ArgumentParser.Argument(help: "Artifact directory (NAME.ddepc).") var artifact: String?
    @Option(help: "Time only this entry point (repeatable).") var entry: [String] = []
    @Option(help: "Timed calls per entry point (after 2 warm-up calls).") var calls = 10
    @Option(help: "Matrix size n for the n×n×n sgemm figure.") var n = 1024
    @OptionGroup var kernels: KernelOptions
    @Flag(help: "Also report the time per kernel (a timed kernel table; parallel_loop is the large generated loops, the rest the small ones and copies) and the slowest calls with the IR node each computes and, for convolutions and matmuls, its GFLOP/s.") var profile = false
    @Option(help: "With --profile, how many of the slowest calls to list.") var slowest = 12

    func validate() throws {
        guard calls >= 1 else { throw ValidationError("--calls must be at least 1 (got \(calls))") }
        guard n >= 1 else { throw ValidationError("--n must be at least 1 (got \(n))") }
        guard slowest >= 0 else { throw ValidationError("--slowest must be 0 or more (got \(slowest))") }
    }

    func run() throws {
        try reportingErrors {
            // An artifact that cannot be used is reported before seconds of measuring.
            let loaded = try artifact.map { try Artifact(directory: URL(fileURLWithPath: $0)) }
            if let loaded {
                for entry in loaded.manifest.layout.entries { try MemoryBudget.require(entry, of: loaded) }
            }
            try kernels.apply()
            let peak = Benchmark.fmaPeak()
            print(String(format: "fp32 FMA peak: %.1f GFLOP/s (%@, %d threads, measured now)", peak.gflops, peak.isa, peak.threads))
            print(String(format: "sgemm %d×%d×%d: %.1f GFLOP/s", n, n, n, Benchmark.sgemmPeak(n: n)))
            guard let artifact, let loaded else { return }
            let m = loaded.manifest
            print("\(artifact): \(m.backend) backend, batch \(m.batch), \(m.size)×\(m.size), \(calls) calls each")
            print("entry                median ms    min ms   images/s   GFLOP/s  % of peak   arena MB")
            let timed = try Benchmark.entries(entry.isEmpty ? nil : entry, of: loaded)
            let facts = try StepFacts.read(loaded, entries: timed, kernelCalls: profile)
            let results = try Benchmark.run(loaded, facts: facts, calls: calls, profile: profile)
            for r in results {
                print(r.entry.padding(toLength: 20, withPad: " ", startingAt: 0)
                      + String(format: "%10.2f %9.2f  %9.1f  %8.1f  %8.0f%%  %9.1f", r.medianSeconds * 1000, r.minimumSeconds * 1000,
                               r.imagesPerSecond, r.gflopsPerSecond, 100 * r.gflopsPerSecond / peak.gflops, Double(r.arenaBytes) / 1e6))
            }
            print(String(format: "peak RSS of this process: %.1f MB", Double(Benchmark.peakResidentBytes()) / 1e6))
            var lent: Int64 = 0, heap: Int64 = 0
            ddp_thread_scratch_loan_counts(&lent, &heap)
            print("per-thread scratch lent from the arena: \(lent) requests served, \(heap) too large for the loan (heap)")
            guard profile else { return }
            for r in results {
                let total = r.callSeconds.reduce(0, +) / Double(r.callSeconds.count)
                let inKernels = r.kernels.reduce(0) { $0 + $1.seconds }
                print("\n\(r.entry): \(String(format: "%.2f", total * 1000)) ms per call (mean, profiled)")
                print("  kernel                     ms/call  calls   share")
                for k in r.kernels.sorted(by: { $0.seconds > $1.seconds }) {
                    print("  " + k.name.padding(toLength: 24, withPad: " ", startingAt: 0)
                          + String(format: "%9.2f %6d  %5.1f%%", k.seconds * 1000, k.calls, 100 * k.seconds / total))
                }
                print("  " + "small loops, copies".padding(toLength: 24, withPad: " ", startingAt: 0)
                      + String(format: "%9.2f %6@  %5.1f%%", (total - inKernels) * 1000, "", 100 * (total - inKernels) / total))
                guard !r.calls.isEmpty else { continue }
                print("\n  slowest calls (median ms over the timed calls; GFLOP/s as a direct convolution counts them;"
                      + " the node each computes, from final.ddir)")
                for c in r.calls.sorted(by: { $0.seconds > $1.seconds }).prefix(slowest) {
                    let rate = c.flops > 0 && c.seconds > 0 ? String(format: "%7.1f", c.flops / c.seconds / 1e9) : ""
                    print(String(format: "  %7.2f  %5.1f%%  ", c.seconds * 1000, 100 * c.seconds / total)
                          + rate.padding(toLength: 7, withPad: " ", startingAt: 0) + "  "
                          + c.kernel.padding(toLength: 28, withPad: " ", startingAt: 0) + " " + Self.brief(c.node))
                }
            }
        }
    }

    /// A printed node without its arena offset, at most 150 characters.
    static func brief(_ node: String) -> String {
        let text = node.replacingOccurrences(of: #"( scratch| spare)? @%?[0-9]+( size [0-9]+)?"#, with: "", options: .regularExpression)
        return text.count > 150 ? String(text.prefix(149)) + "…" : text
    }
}
