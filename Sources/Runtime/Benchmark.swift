import Codegen
import DDPKernels
import Foundation
import IR

/// Floating-point work of the GEMM-shaped ops, the part that can approach
/// the machine's peak (everything else is memory-bound and not counted).
public enum FlopCounter {
    public static func gemmFlops(_ function: Function) -> Double {
        let types = function.types
        var flops = 0.0
        for node in function.nodes {
            switch node.op {
            case "conv2d":
                // 2 · output elements · (C/groups · KH · KW)
                let w = types[node.operands[1]]!.shape
                flops += 2 * Double(node.type.count) * Double(w[1] * w[2] * w[3])
            case "conv2d_grad_input":
                let dy = types[node.operands[0]]!.shape, w = types[node.operands[1]]!.shape
                flops += 2 * Double(dy.reduce(1, *)) * Double(w[1] * w[2] * w[3])
            case "conv2d_grad_weight":
                let dy = types[node.operands[1]]!.shape, w = node.type.shape
                flops += 2 * Double(dy.reduce(1, *)) * Double(w[1] * w[2] * w[3])
            case "matmul":
                let a = types[node.operands[0]]!.shape
                let transA = node.attrs["transpose_a"] == .bool(true)
                let k = transA ? a[a.count - 2] : a[a.count - 1]
                flops += 2 * Double(node.type.count) * Double(k)
            default:
                break
            }
        }
        return flops
    }
}

/// One entry point's timing: every call's wall time after warm-up, and with
/// profiling the time per kernel over the same calls.
public struct BenchmarkResult {
    public var entry: String
    public var callSeconds: [Double]
    public var batch: Int
    public var flops: Double
    public var arenaBytes: Int
    /// Kernel name → (seconds, calls) summed over the timed calls; empty
    /// unless profiled.
    public var kernels: [(name: String, seconds: Double, calls: Int)] = []

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

    /// Times entry points on synthetic inputs. Buffers are allocated and
    /// inputs written once, before the warm-up: each timed call is the
    /// compiled step alone.
    public static func run(_ artifact: Artifact, entries: [String]? = nil, calls: Int, warmup: Int = 2,
                           profile: Bool = false) throws -> [BenchmarkResult] {
        let executor = try Executor(artifact: artifact)
        executor.store.initialize(seed: 1)
        let module = try Parser.parse(try artifact.finalIR)
        let layouts = artifact.manifest.layout.entries
        if let entries, let unknown = entries.first(where: { name in !layouts.contains { $0.name == name } }) {
            throw RuntimeError("the artifact has no entry point '\(unknown)'; it has \(layouts.map(\.name).joined(separator: ", "))")
        }
        var results: [BenchmarkResult] = []
        for entry in layouts where entries?.contains(entry.name) ?? true {
            let function = module.function(named: entry.name)!
            var inputs: [String: HostTensor] = [:]
            for slot in entry.inputs {
                let type = TensorType(DType(rawValue: slot.dtype)!, slot.shape)
                // Images in [-1, 1], labels 0, small Adam scalars: a realistic step.
                let value: Double = slot.name == "x" ? 0.5 : slot.name == "lr" ? 1e-4 : slot.name.hasPrefix("bc") ? 1 : 0
                inputs[slot.name] = HostTensor(type, [Double](repeating: value, count: type.count))
            }
            let call = try executor.prepare(entry.name, inputs: inputs)
            for _ in 0..<warmup { try call.run() }
            let kernels = profile ? ddp_profiling_kernel_table()! : ddp_kernel_table()!
            ddp_profile_reset()
            var seconds: [Double] = []
            for _ in 0..<calls {
                let start = DispatchTime.now().uptimeNanoseconds
                try call.run(kernels: kernels)
                seconds.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
            var result = BenchmarkResult(entry: entry.name, callSeconds: seconds, batch: artifact.manifest.batch,
                                         flops: FlopCounter.gemmFlops(function), arenaBytes: entry.arenaBytes)
            if profile {
                for index in 0..<Int32(ddp_kernel_count.rawValue) where ddp_profile_kernel_calls(index) > 0 {
                    result.kernels.append((String(cString: ddp_kernel_name(index)), ddp_profile_kernel_seconds(index) / Double(calls),
                                           Int(ddp_profile_kernel_calls(index)) / calls))
                }
            }
            results.append(result)
        }
        return results
    }
}
