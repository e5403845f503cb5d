import IR
import Passes
import TestSupport
import XCTest

/// `--data-parallel`: the allreduce op, sync-batch-norm before autodiff and
/// allreduce-gradients between autodiff and the optimizer, on UNet.small.
final class DataParallelTests: XCTestCase {
    static let dataParallel: [any Pass] = [InferShapes(), SyncBatchNorm(), Autodiff(), AllReduceGradients(), AdamOptimizer()]
    static let singleProcess: [any Pass] = [InferShapes(), Autodiff(), AdamOptimizer()]

    func compiled(_ passes: [any Pass]) throws -> Module {
        var module = UNetSmall.module
        try PassManager(passes).run(&module)
        return module
    }

    /// allreduce: the identity in one process (the interpreter's world), and
    /// its gradient is an allreduce of the incoming gradient.
    func testAllreduceIsTheIdentityInOneProcessAndItsGradientIsAnAllreduce() throws {
        let spec = try OpRegistry.require("allreduce")
        let x = HostTensor(.f32([2, 3]), [1, -2, 3.5, 0, 1e-3, 7])
        XCTAssertEqual(try spec.evaluate([x], [:], x.type), x)
        XCTAssertThrowsError(try spec.checkedType(operands: [TensorType(.i32, [2])], attrs: [:]))

        var module = Module(functions: [try singleOpFunction(spec, operands: [.f32([2, 3])], attrs: [:], withLoss: true)])
        try PassManager([Autodiff()]).run(&module)
        let function = module.functions[0]
        XCTAssertEqual(function.count("allreduce"), 2, Printer.print(module))
        let grad = try XCTUnwrap(function.output(named: "grad:a0"))
        XCTAssertEqual(function.nodesByID[grad.value]?.op, "allreduce", Printer.print(module))
    }

    /// The passes put allreduce where the issue says: on every batch-norm
    /// statistic of a training step, on the gradients in buckets (one
    /// allreduce per concatenated bucket, sliced back) and on the loss;
    /// never in inference.
    func testAllreduceOnBatchStatisticsGradientBucketsAndTheLoss() throws {
        let module = try compiled(Array(Self.dataParallel.prefix(4)))
        XCTAssertEqual(module["infer"]?.count("allreduce"), 0)
        for name in ["pretrain_step", "pretrain_dep_step", "finetune_step"] {
            let function = try XCTUnwrap(module[name])
            let nodes = function.nodesByID
            let norms = function.nodes.filter { $0.op == "batch_norm" && nodes[$0.operands[1]] != nil }
            XCTAssertFalse(norms.isEmpty)
            for norm in norms {
                XCTAssertEqual(nodes[norm.operands[1]]?.op, "allreduce", "\(name): batch mean")
                XCTAssertEqual(nodes[norm.operands[2]]?.op, "allreduce", "\(name): batch variance")
            }
            let grads = function.outputs.filter { $0.name.hasPrefix("grad:") }
            if name != "pretrain_step" { XCTAssertGreaterThan(grads.count, 64, "\(name): enough gradients for two buckets") }
            for grad in grads {
                // reshape(slice(allreduce_wait(allreduce_start(concat(...))))) or allreduce_wait(allreduce_start(g))
                var node = try XCTUnwrap(nodes[grad.value])
                while node.op == "reshape" || node.op == "slice" { node = try XCTUnwrap(nodes[node.operands[0]]) }
                XCTAssertEqual(node.op, "allreduce_wait", "\(name): \(grad.name)")
                XCTAssertEqual(nodes[node.operands[0]]?.op, "allreduce_start", "\(name): \(grad.name)")
            }
            let starts = function.nodes.indices.filter { function.nodes[$0].op == "allreduce_start" }
            let buckets = starts.filter { nodes[function.nodes[$0].operands[0]]?.op == "concat" }
            XCTAssertEqual(buckets.count, (grads.count + 63) / 64, "\(name): buckets of at most 64 gradients")
            // Overlap: the first bucket starts while the backward pass still has work to do.
            guard buckets.count > 1 else { continue }
            let lastBackward = try XCTUnwrap(function.nodes.lastIndex { $0.op == "conv2d_grad_weight" || $0.op == "conv2d_grad_input" })
            XCTAssertLessThan(try XCTUnwrap(starts.first), lastBackward, "\(name): a bucket starts before the backward pass ends")
            XCTAssertGreaterThan(try XCTUnwrap(function.nodes.firstIndex { $0.op == "allreduce_wait" }), lastBackward)
            XCTAssertEqual(nodes[try XCTUnwrap(function.output(named: "loss")).value]?.op, "allreduce")
        }
        // A smaller byte cap makes more, smaller buckets.
        var small = UNetSmall.module
        try PassManager([InferShapes(), Autodiff(), AllReduceGradients(bucketBytes: 4096)]).run(&small)
        let function = try XCTUnwrap(small["finetune_step"])
        for bucket in function.nodes where bucket.op == "allreduce_start" && bucket.type.count > 1024 {
            XCTAssertNotEqual(function.nodesByID[bucket.operands[0]]?.op, "concat", "only a lone gradient exceeds the cap")
        }
        XCTAssertTrue(Printer.print(small).contains("= allreduce_start(%"))
    }

    /// In one process the data-parallel step computes what the plain step
    /// computes: loss, gradient norm and every update (f64 interpreter; the
    /// DDeP step, whose decoder has synchronized batch norms, and which is the
    /// cheapest to interpret).
    func testDataParallelStepEqualsThePlainStepInOneProcess() throws {
        let parallel = try compiled(Self.dataParallel), plain = try compiled(Self.singleProcess)
        // The plain step differentiates batch_norm_train in closed form, the
        // data-parallel one its exposed statistics: equal in exact arithmetic,
        // apart by f64 rounding (measured 1.1e-12 relative).
        let tolerance = 1e-10
        for name in ["pretrain_step"] {
            let p = try XCTUnwrap(parallel[name]), q = try XCTUnwrap(plain[name])
            let arguments = randomArguments(for: p, seed: 11)
            let a = try Interpreter.run(p, arguments: arguments), b = try Interpreter.run(q, arguments: arguments)
            XCTAssertEqual(Set(a.outputs.keys), Set(b.outputs.keys))
            for (key, value) in b.outputs {
                XCTAssertLessThanOrEqual(maxRelativeDifference(a.outputs[key]!.data, value.data), tolerance, "\(name) \(key)")
            }
            XCTAssertEqual(Set(a.updates.keys), Set(b.updates.keys))
            for (key, value) in b.updates {
                XCTAssertLessThanOrEqual(maxRelativeDifference(a.updates[key]!.data, value.data), tolerance, "\(name) \(key)")
            }
        }
    }

    /// Rank r of a data-parallel run draws its images' part of the global
    /// batch's noise: a seed advanced by r·B·C·H·W elements.
    func testAdvancedNoiseSeedContinuesTheStream() {
        for (seed, offset) in [(UInt64(12345), UInt64(0)), (1, 6144), (0xFFFF_FFFF_FFFF, 3 * 224 * 224 * 256), (42, 1)] {
            let shifted = RandomOps.seed(seed, advancedBy: offset)
            for i: UInt64 in [0, 1, 2, 1000] {
                XCTAssertEqual(RandomOps.normal(seed: shifted, index: i), RandomOps.normal(seed: seed, index: offset + i),
                               "seed \(seed) offset \(offset) element \(i)")
            }
        }
    }
}
