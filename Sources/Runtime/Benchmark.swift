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

/// Times every entry point of an artifact on synthetic inputs.
public struct BenchmarkResult {
    public var entry: String
    public var secondsPerCall: Double
    public var imagesPerSecond: Double
    public var gflopsPerSecond: Double
    public var arenaBytes: Int
}

public enum Benchmark {
    public static func sgemmPeak(n: Int = 1024, repetitions: Int = 10) -> Double {
        ddp_sgemm_gflops(Int64(n), Int64(repetitions))
    }

    public static func run(_ artifact: Artifact, calls: Int, warmup: Int = 2) throws -> [BenchmarkResult] {
        let executor = try Executor(artifact: artifact)
        executor.store.initialize(seed: 1)
        let module = try Parser.parse(try artifact.finalIR)
        var results: [BenchmarkResult] = []
        for entry in artifact.manifest.layout.entries {
            let function = module.function(named: entry.name)!
            var inputs: [String: HostTensor] = [:]
            for slot in entry.inputs {
                let type = TensorType(DType(rawValue: slot.dtype)!, slot.shape)
                // Images in [-1, 1], labels 0, small Adam scalars: a realistic step.
                let value: Double = slot.name == "x" ? 0.5 : slot.name == "lr" ? 1e-4 : slot.name.hasPrefix("bc") ? 1 : 0
                inputs[slot.name] = HostTensor(type, [Double](repeating: value, count: type.count))
            }
            for _ in 0..<warmup { _ = try executor.run(entry.name, inputs: inputs) }
            let start = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<calls { _ = try executor.run(entry.name, inputs: inputs) }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 / Double(calls)
            results.append(BenchmarkResult(entry: entry.name, secondsPerCall: seconds,
                                           imagesPerSecond: Double(artifact.manifest.batch) / seconds,
                                           gflopsPerSecond: FlopCounter.gemmFlops(function) / seconds / 1e9,
                                           arenaBytes: entry.arenaBytes))
        }
        return results
    }
}
