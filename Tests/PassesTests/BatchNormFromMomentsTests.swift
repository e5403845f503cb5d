import IR
@testable import Passes
import TestSupport
import XCTest

/// batch-norm-from-moments: each training batch norm of a step becomes a
/// loop over the centered tensor its step already computes, with the same
/// value.
final class BatchNormFromMomentsTests: XCTestCase {
    func testEveryTrainingBatchNormBecomesALoopOverTheCenteredTensor() throws {
        var module = Module(functions: [try UNetSmall.function("finetune_step")])
        try runPasses([Autodiff.name, AdamOptimizer.name, FoldConstants.name, CSE.name, DCE.name], on: &module)
        let before = module.functions[0]
        let batchNorms = before.nodes.filter { $0.op == "batch_norm_train" }
        XCTAssertGreaterThan(batchNorms.count, 4)
        XCTAssertEqual(try runPasses([BatchNormFromMoments.name], on: &module), [true])
        let after = module.functions[0]
        XCTAssertEqual(after.count("batch_norm_train"), 0, "every one had its moments")
        let position = Dictionary(uniqueKeysWithValues: after.nodes.enumerated().map { ($1.id, $0) })
        let original = before.nodesByID
        for norm in batchNorms {
            // The batch norm's id now names the last of its new nodes, which
            // follow the moments in the schedule.
            let end = try XCTUnwrap(position[norm.id])
            var start = end
            while start > 0, original[after.nodes[start - 1].id] == nil { start -= 1 }
            let moments = try XCTUnwrap(NormOps.existingBatchMoments(of: norm.operands[0], in: before,
                                                                     before: before.nodes.firstIndex(of: norm)!))
            let momentNodes = before.nodes.filter { node in
                [moments.mean, moments.centered, moments.variance].contains(node.id)
                    || (node.op == "reshape" && node.operands == [moments.mean])
                    || (node.op == "mul" && node.operands == [moments.centered, moments.centered])
            }
            let types = before.types
            let args = norm.operands.map { Argument(id: $0, type: types[$0]!, role: .input, name: "v\($0)") }
            let reference = Function(name: "norm", args: args, nodes: [norm], outputs: [Output(value: norm.id, name: "y")])
            let rewritten = Function(name: "rewritten", args: args, nodes: momentNodes + Array(after.nodes[start...end]),
                                     outputs: [Output(value: norm.id, name: "y")])
            try Verifier.verify(rewritten)
            let arguments = randomArguments(for: reference, seed: UInt64(norm.id))
            let expected = try Interpreter.run(reference, arguments: arguments).outputs["y"]!
            let got = try Interpreter.run(rewritten, arguments: arguments).outputs["y"]!
            // Against the output's scale: an output near zero (x − mean ≈ −β/γ·σ)
            // differs relatively more in the last bits of two f64 orders.
            let scale = expected.data.map(abs).max()!
            let worst = zip(got.data, expected.data).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(worst, 1e-13 * scale, "%\(norm.id)")
        }
    }

    /// Without the moments in the step (written by hand), the kernel stays.
    func testABatchNormWithoutMomentsIsLeftAlone() throws {
        var module = try Parser.parse("""
            func @f(%0: f32[2,3,4,4] input "x", %1: f32[3] param "g", %2: f32[3] param "b") {
              %3 = batch_norm_train(%0, %1, %2) {eps=1e-05} : f32[2,3,4,4]
              return %3 as "y"
            }
            """)
        XCTAssertEqual(try runPasses([BatchNormFromMoments.name], on: &module), [false])
    }
}
