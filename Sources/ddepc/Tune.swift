import ArgumentParser
import DDPKernels
import Driver
import Foundation
import Passes
import Runtime

struct Tune: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure each convolution algorithm on a model's convolutions on this machine, for `ddepc compile --conv-costs`.",
        discussion: """
            Every 3×3 stride-1 convolution the model's entry points compute (forward, input gradient, weight \
            gradient; filters prepared once for inference) is compiled on its own with im2col + GEMM, Winograd \
            F(2×2,3×3) and F(4×4,3×3), and the three are timed in interleaved rounds at the kernels' ISA and \
            thread count. The table names the machine it was measured on; `ddepc compile --conv-costs FILE` then \
            gives each convolution the algorithm that was fastest here (the built-in tile-count rule's choice \
            where that measured within 3% of the fastest) instead of the rule. \
            Compile for the same --batch and --size: other shapes are not in the table and follow the rule.
            """)

    @ArgumentParser.Argument(help: "MODEL.swift, a zoo name, or GRAPH.ddir") var model: String
    @Option(name: .shortAndLong, help: "The cost table to write (default MODEL.conv-costs.json); only a cost table is replaced.")
    var output: String?
    @OptionGroup var shape: ModelShapeOptions
    @Option(help: "Timed calls of each algorithm on each convolution (the median is kept).") var rounds = 7
    @OptionGroup var kernels: KernelOptions
    @Option(name: .customLong("model-timeout"), help: "Seconds a model file (.swift) may take to build its model before it is stopped.")
    var modelTimeout = ModelFileEvaluator.defaultTimeout

    func validate() throws {
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1 (got \(rounds))") }
        guard modelTimeout > 0, modelTimeout.isFinite else { throw ValidationError("--model-timeout must be a positive number of seconds") }
    }

    func run() throws {
        try reportingErrors {
            try kernels.apply()
            let out = URL(fileURLWithPath: output ?? URL(fileURLWithPath: model).deletingPathExtension().lastPathComponent + ".conv-costs.json")
            // Refuse a file that is not ours before minutes of measuring, not after.
            try ConvCostFile.requireReplaceable(out)
            let module = try loadModule(model, shape: shape, modelTimeout: modelTimeout, verify: true)
            var options = CompileOptions()
            options.batch = shape.batch
            options.size = shape.size
            options.classes = shape.classes
            let convolutions = try ConvTuner.convolutions(of: module, options: options)
            guard !convolutions.isEmpty else {
                throw RuntimeError("\(model) has no 3×3 stride-1 convolution (the only kind with more than one algorithm); there is nothing to tune")
            }
            print("\(convolutions.count) convolutions, \(ConvCostTable.algorithms.count) algorithms each, \(rounds) rounds "
                  + "(\(String(cString: ddp_gemm_isa())), \(ddp_parallel_threads()) threads)")
            print("  " + ConvCostTable.algorithms.map { ($0 + " ms").padding(toLength: 13, withPad: " ", startingAt: 0) }.joined()
                  + "fastest      convolution")
            let table = try ConvTuner.measure(convolutions, rounds: rounds) { convolution, measured in
                let times = ConvCostTable.algorithms.map { String(format: "%9.3f    ", (measured.seconds[$0] ?? 0) * 1000) }.joined()
                print("  " + times + (measured.fastest ?? ConvCostTable.im2col).padding(toLength: 13, withPad: " ", startingAt: 0)
                      + convolution.description)
            }
            try ConvCostFile.write(table, to: out)
            print("wrote \(out.path); compile with `ddepc compile \(model) --batch \(shape.batch) --size \(shape.size) --conv-costs \(out.path)`")
        }
    }
}
