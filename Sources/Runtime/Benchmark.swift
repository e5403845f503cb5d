import ABI
import DDPKernels
import Foundation
import IR

/// What the compiler knows of a step that a benchmark reports beside its
/// times: its counted FLOPs, and its kernel calls in the order the compiled
/// code makes them (each with the printed node it computes and, on the
/// node's own kernel call, the node's counted FLOPs; 0 on the scratch loans
/// made around it and on the calls of nodes without counted FLOPs).
public struct StepFacts {
    public typealias KernelCall = (kernel: String, node: String, flops: Double)
    public var flops: Double
    public var kernelCalls: [KernelCall]
    public init(flops: Double, kernelCalls: [KernelCall] = []) {
        self.flops = flops
        self.kernelCalls = kernelCalls
    }
}

/// One entry point's timing: every call's wall time after warm-up, and with
/// profiling the time per kernel over the same calls.
public struct BenchmarkResult {
    public typealias TimedCall = (kernel: String, node: String, flops: Double, seconds: Double)
    public var entry: String
    public var callSeconds: [Double]
    public var batch: Int
    public var flops: Double
    public var arenaBytes: Int
    /// Kernel name → (seconds, calls) summed over the timed calls; empty
    /// unless profiled.
    public var kernels: [(name: String, seconds: Double, calls: Int)] = []
    /// Each kernel call of a step, in order: its kernel, the printed node it
    /// computes, the FLOPs counted for it (StepFacts) and its median time
    /// over the timed calls; empty unless profiled (or when the calls did
    /// not follow the lowered code's order).
    public var calls: [TimedCall] = []

    public var medianSeconds: Double { callSeconds.sorted()[callSeconds.count / 2] }
    public var minimumSeconds: Double { callSeconds.min() ?? 0 }
    public var imagesPerSecond: Double { Double(batch) / medianSeconds }
    public var gflopsPerSecond: Double { flops / medianSeconds / 1e9 }
}

public enum Benchmark {
    /// The fp32 FMA peak of this machine at the kernels' ISA and thread count.
    public static func fmaPeak() -> (gflops: Double, isa: String, threads: Int) {
        let gflops = ddp_fma_peak_gflops(0.3)
        return (gflops, String(cString: ddp_gemm_isa()), Int(ddp_parallel_threads()))
    }

    public static func sgemmPeak(n: Int = 1024, repetitions: Int = 10) -> Double {
        ddp_sgemm_gflops(Int64(n), Int64(repetitions))
    }

    /// Peak resident set of this process so far, in bytes.
    public static func peakResidentBytes() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return usage.ru_maxrss * 1024
    }

    /// The entry points `entries` names (nil: all), checked against the artifact.
    public static func entries(_ entries: [String]?, of artifact: Artifact) throws -> [String] {
        let layouts = artifact.manifest.layout.entries
        if let entries, let unknown = entries.first(where: { name in !layouts.contains { $0.name == name } }) {
            throw RuntimeError("the artifact has no entry point '\(unknown)'; it has \(layouts.map(\.name).joined(separator: ", "))")
        }
        return layouts.map(\.name).filter { entries?.contains($0) ?? true }
    }

    /// Times entry points on synthetic inputs. Buffers are allocated and
    /// inputs written once, before the warm-up: each timed call is the
    /// compiled step alone. `facts` come from the artifact's IR, read before
    /// (the parsed module is the compiler's, not the step's: held through
    /// the calls it would count in the peak RSS a training process is
    /// compared by); with `profile`, their kernel calls name each call.
    public static func run(_ artifact: Artifact, facts: [String: StepFacts], calls: Int, warmup: Int = 2,
                           profile: Bool = false) throws -> [BenchmarkResult] {
        let timed = artifact.manifest.layout.entries.filter { facts[$0.name] != nil }
        ddp_release_free_heap() // the IR's pages go back to the system
        let executor = try Executor(artifact: artifact)
        executor.store.initialize(seed: 1)
        var results: [BenchmarkResult] = []
        for entry in timed {
            let call = try executor.prepare(entry.name, inputs: syntheticInputs(entry))
            ddp_release_free_heap() // the inputs' f64 copies (4.8 MB at 224 px), written into the call's io
            for _ in 0..<warmup { try call.run() }
            let kernels = profile ? ddp_profiling_kernel_table()! : ddp_kernel_table()!
            ddp_profile_reset()
            // The step's kernel calls as the compiled code makes them, to log each one.
            let expectedCalls = facts[entry.name]?.kernelCalls ?? []
            if profile { _ = ddp_profile_log_calls(Int64(expectedCalls.count * calls)) }
            defer { _ = ddp_profile_log_calls(0) }
            var seconds: [Double] = []
            for _ in 0..<calls {
                let start = DispatchTime.now().uptimeNanoseconds
                try call.run(kernels: kernels)
                seconds.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
            var result = BenchmarkResult(entry: entry.name, callSeconds: seconds, batch: artifact.manifest.batch,
                                         flops: facts[entry.name]?.flops ?? 0, arenaBytes: entry.arenaBytes)
            if profile {
                for index in 0..<Int32(ddp_kernel_count.rawValue) where ddp_profile_kernel_calls(index) > 0 {
                    result.kernels.append((String(cString: ddp_kernel_name(index)), ddp_profile_kernel_seconds(index) / Double(calls),
                                           Int(ddp_profile_kernel_calls(index)) / calls))
                }
                result.calls = perCall(expectedCalls, calls: calls)
            }
            results.append(result)
        }
        return results
    }

    /// Images in [-1, 1], labels 0, small Adam scalars: a realistic step.
    static func syntheticInputs(_ entry: BufferLayout.Entry) -> [String: HostTensor] {
        var inputs: [String: HostTensor] = [:]
        for slot in entry.inputs {
            let type = TensorType(DType(rawValue: slot.dtype)!, slot.shape)
            let value: Double = switch slot.name {
            case StepSignature.image: 0.5
            case StepSignature.learningRate: 1e-4
            case StepSignature.biasCorrection1, StepSignature.biasCorrection2: 1
            default: 0
            }
            inputs[slot.name] = HostTensor(type, [Double](repeating: value, count: type.count))
        }
        return inputs
    }

    /// The logged calls matched position by position to `expected` (one
    /// step's calls), each position's median over the `calls` steps; empty
    /// if the log does not hold exactly those calls.
    static func perCall(_ expected: [StepFacts.KernelCall], calls: Int) -> [BenchmarkResult.TimedCall] {
        let perStep = expected.count
        guard perStep > 0, ddp_profile_logged_calls() == Int64(perStep * calls) else { return [] }
        var result: [BenchmarkResult.TimedCall] = []
        for (position, call) in expected.enumerated() {
            var times: [Double] = []
            for step in 0..<calls {
                let i = Int64(step * perStep + position)
                guard let name = ddp_kernel_name(ddp_profile_logged_kernel(i)), String(cString: name) == call.kernel else { return [] }
                times.append(ddp_profile_logged_seconds(i))
            }
            result.append((call.kernel, call.node, call.flops, times.sorted()[times.count / 2]))
        }
        return result
    }
}
