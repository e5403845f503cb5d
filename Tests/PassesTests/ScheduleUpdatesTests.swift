import IR
import ModelZoo
@testable import Passes
import TestSupport
import XCTest

/// schedule-updates: each weight's Adam step right after its gradient, so
/// gradients are not held to the end of the step; the same values, every
/// update still in place; with clipping, nothing can move.
final class ScheduleUpdatesTests: XCTestCase {
    /// UNet.small's fine-tuning step, optimized and fused as the pipeline
    /// leaves it before schedule-updates.
    func step(clipping: Bool) throws -> Function {
        let config = EntryConfig(batch: 2, size: 32, classes: 2, entries: [.finetuneStep])
        var module = try buildModule(UNet.small, config: config)
        let pipeline = PassManager.standardPipeline(optimizer: AdamOptimizer(clipping: clipping))
        try PassManager(Array(pipeline.prefix { !($0 is ScheduleUpdates) })).run(&module)
        return module.functions[0]
    }

    /// Position of the first node writing a weight's new value, and of the last weight-gradient kernel.
    func positions(_ function: Function) -> (firstUpdate: Int, lastGradient: Int) {
        let updated = Set(function.updates.filter { u in function.args.contains { $0.id == u.target && $0.role == .param } }.map(\.value))
        let firstUpdate = function.nodes.firstIndex { updated.contains($0.id) }!
        let lastGradient = function.nodes.lastIndex { $0.op == "conv2d_grad_weight" }!
        return (firstUpdate, lastGradient)
    }

    func testUpdatesFollowTheirGradientsAndComputeTheSame() throws {
        let before = try step(clipping: false)
        var after = before
        XCTAssertTrue(ScheduleUpdates().schedule(&after))
        try Verifier.verify(Module(functions: [after]))
        XCTAssertEqual(Set(after.nodes.map(\.id)), Set(before.nodes.map(\.id)), "nodes move, none is added or lost")
        XCTAssertGreaterThan(positions(before).firstUpdate, positions(before).lastGradient, "the optimizer appends its updates")
        XCTAssertLessThan(positions(after).firstUpdate, positions(after).lastGradient, "a weight is updated before the backward pass ends")

        var planned = (before, after)
        let reports = (PlanMemory().plan(&planned.0), PlanMemory().plan(&planned.1))
        XCTAssertEqual(reports.1.inPlaceUpdates, reports.0.inPlaceUpdates, "every update is still computed in place")
        XCTAssertLessThan(Double(reports.1.lowerBoundBytes), 0.9 * Double(reports.0.lowerBoundBytes),
                          "gradients die where they are made: \(reports.0.lowerBoundBytes) → \(reports.1.lowerBoundBytes) bytes")

        var rng = TestRNG(seed: 5)
        var arguments: [String: HostTensor] = [:]
        for (i, arg) in before.args.enumerated() {
            let sample = sampleTensor(arg.type, op: "add", operand: i, rng: &rng)
            // Labels of class 1, second moments as Adam keeps them (not negative).
            arguments[arg.name] = arg.name == "labels" ? HostTensor(arg.type, [Double](repeating: 1, count: arg.type.count))
                : arg.name.hasPrefix("opt.v.") ? HostTensor(arg.type, sample.data.map(abs)) : sample
        }
        for name in ["bc1", "bc2"] { arguments[name] = HostTensor(scalar: 1) }
        let want = try Interpreter.run(before, arguments: arguments), got = try Interpreter.run(after, arguments: arguments)
        XCTAssertEqual(got.outputs, want.outputs)
        XCTAssertFalse(want.updates.isEmpty)
        for (name, value) in want.updates {
            XCTAssertFalse(value.data.contains { $0.isNaN }, name)
            XCTAssertTrue(got.updates[name] == value, "\(name) is computed the same")
        }
    }

    func testWithClippingEveryUpdateWaitsForTheLastGradient() throws {
        var function = try step(clipping: true)
        _ = ScheduleUpdates().schedule(&function)
        XCTAssertGreaterThan(positions(function).firstUpdate, positions(function).lastGradient, "the clipping scale needs every gradient")
    }
}
