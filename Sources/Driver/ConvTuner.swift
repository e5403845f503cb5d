import DDPKernels
import Foundation
import IR
import Passes
import Runtime

/// Measures what each convolution algorithm takes on this machine for the
/// convolutions of a model (`ddepc tune`), giving select-conv-algorithm a
/// cost table instead of its tile-count rule.
///
/// Each convolution is compiled on its own, once per algorithm, as the
/// model's steps would compute it (filters prepared once for inference,
/// transformed per call in training), and the algorithms' calls are
/// interleaved, round after round: a slow phase of the host then slows
/// them all alike.
public enum ConvTuner {
    /// The distinct convolutions select-conv-algorithm would choose an
    /// algorithm for when `module` is compiled with `options`, in the order
    /// the entry points first compute them.
    public static func convolutions(of module: Module, options: CompileOptions) throws -> [ConvCostTable.Convolution] {
        var module = module
        let pipeline = try CompileDriver.pipeline(for: module, optimizer: options.optimizer, dataParallel: options.dataParallel,
                                                  panelRows: options.panelRows ?? Int(ddp_gemm_panel_rows()),
                                                  memoryBudget: options.memoryBudget, momentsInEpilogue: options.momentsInEpilogue)
        let untilSelection = pipeline.prefix { !($0 is SelectConvAlgorithm) }
        var passOptions = PassOptions()
        passOptions.verifyEachPass = false
        try PassManager(Array(untilSelection), options: passOptions).run(&module)
        var seen = Set<ConvCostTable.Convolution>()
        var ordered: [ConvCostTable.Convolution] = []
        for function in module.functions {
            for (_, convolution) in SelectConvAlgorithm.candidates(in: function, weightsPrepared: true)
            where seen.insert(convolution).inserted {
                ordered.append(convolution)
            }
        }
        return ordered
    }

    /// Times every algorithm on every convolution: `rounds` calls of each
    /// after one warm-up call, the median kept. `progress` hears of each
    /// convolution measured.
    public static func measure(_ convolutions: [ConvCostTable.Convolution], rounds: Int, backend: Backend = .c,
                               progress: (ConvCostTable.Convolution, ConvCostTable.Measurement) -> Void = { _, _ in }) throws -> ConvCostTable {
        precondition(rounds >= 1)
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-tune-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let cleanup = Interruption.shared.removeOnInterrupt(work)
        defer {
            try? FileManager.default.removeItem(at: work)
            Interruption.shared.forget(cleanup)
        }

        var source = ""
        for (index, convolution) in convolutions.enumerated() {
            for algorithm in ConvCostTable.algorithms {
                source += calibration(convolution, algorithm: algorithm, name: functionName(index, algorithm)) + "\n"
            }
        }
        var options = CompileOptions()
        options.backend = backend
        options.optimizer = nil
        options.convAlgorithm = .asWritten
        options.source = "ddepc tune"
        let artifactURL = work.appendingPathComponent("convolutions.ddepc")
        _ = try CompileDriver.compile(try Parser.parse(source), to: artifactURL, options: options)

        let executor = try Executor(artifact: try Artifact(directory: artifactURL))
        executor.store.initialize(seed: 1)
        var measurements: [ConvCostTable.Measurement] = []
        for (index, convolution) in convolutions.enumerated() {
            // One convolution's calls at a time: their buffers are freed before the next one's.
            let calls = try ConvCostTable.algorithms.map { algorithm -> Executor.PreparedCall in
                let name = functionName(index, algorithm)
                guard let entry = executor.artifact.manifest.layout.entry(name) else { throw RuntimeError("no entry point \(name)") }
                let inputs = Dictionary(uniqueKeysWithValues: entry.inputs.map { slot in
                    (slot.name, HostTensor(TensorType(.f32, slot.shape), [Double](repeating: 0.5, count: slot.shape.reduce(1, *))))
                })
                return try executor.prepare(name, inputs: inputs)
            }
            for call in calls { try call.run() }
            var seconds = [[Double]](repeating: [], count: calls.count)
            for round in 0..<rounds {
                // Each round starts with another algorithm: none is always the first after a change.
                for offset in 0..<calls.count {
                    let a = (round + offset) % calls.count
                    let start = DispatchTime.now().uptimeNanoseconds
                    try calls[a].run()
                    seconds[a].append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
                }
            }
            let medians = seconds.map { $0.sorted()[$0.count / 2] }
            let measured = ConvCostTable.Measurement(convolution: convolution,
                                                     seconds: Dictionary(uniqueKeysWithValues: zip(ConvCostTable.algorithms, medians)))
            measurements.append(measured)
            progress(convolution, measured)
        }
        return ConvCostTable(isa: String(cString: ddp_gemm_isa()), threads: Int(ddp_parallel_threads()), cpu: cpuModelName(),
                             measurements: measurements)
    }

    static func functionName(_ index: Int, _ algorithm: String) -> String { "conv\(index)_\(algorithm)" }

    /// A function computing `convolution` alone with `algorithm`, as a step
    /// would: a forward convolution with its bias epilogue (filters that are
    /// a weight are prepared once; an input's are transformed per call), or
    /// either gradient.
    static func calibration(_ convolution: ConvCostTable.Convolution, algorithm: String, name: String) -> String {
        let x = convolution.input, w = convolution.weight, pad = convolution.pad
        let y = [x[0], w[0], x[2] + 2 * pad[0] - 2, x[3] + 2 * pad[1] - 2]
        let type = { (shape: [Int]) in "f32[" + shape.map(String.init).joined(separator: ",") + "]" }
        let list = { (values: [Int]) in "[" + values.map(String.init).joined(separator: ",") + "]" }
        var attrs = ["pad=\(list(pad))"]
        if algorithm != ConvCostTable.im2col { attrs.append("\(ConvOps.Algorithm.key)=\"\(algorithm)\"") }
        let filters = "\"\(name)_w\""
        let body: String
        switch convolution.kernel {
        case .forward:
            let role = convolution.preparedFilters ? "param" : "input"
            body = """
                func @\(name)(%0: \(type(x)) input "x", %1: \(type(w)) \(role) \(filters), %2: f32[\(w[0]),1,1] param "\(name)_b") {
                  %3 = fused_conv2d(%0, %1, %2) {\((attrs + ["epilogue=add(in0, in1)"]).sorted().joined(separator: ", "))} : \(type(y))
                """
        case .gradInput:
            body = """
                func @\(name)(%0: \(type(y)) input "dy", %1: \(type(w)) param \(filters)) {
                  %3 = conv2d_grad_input(%0, %1) {\((attrs + ["input_shape=\(list(x))"]).sorted().joined(separator: ", "))} : \(type(x))
                """
        case .gradWeight:
            body = """
                func @\(name)(%0: \(type(x)) input "x", %1: \(type(y)) input "dy") {
                  %3 = conv2d_grad_weight(%0, %1) {\((attrs + ["weight_shape=\(list(w))"]).sorted().joined(separator: ", "))} : \(type(w))
                """
        }
        return body + "\n  return %3 as \"y\"\n}\n"
    }

    /// The CPU's model name from /proc/cpuinfo ("unknown" elsewhere).
    static func cpuModelName() -> String {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
              let colon = line.firstIndex(of: ":") else { return "unknown" }
        return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
}
