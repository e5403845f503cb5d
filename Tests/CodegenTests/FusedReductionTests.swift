import DDPKernels
import Foundation
import IR
import Passes
import Runtime
import Driver
import TestSupport
import XCTest

/// fuse-reductions end to end: a reduction of an elementwise expression
/// becomes one fused_reduce, whose generated loop the reduce_loop kernel runs
/// a chunk at a time. Against the f64 interpreter on the unfused function,
/// with inner runs longer than a chunk (reduced and kept), on both backends
/// bit for bit, and at one thread and at all of them bit for bit.
final class FusedReductionTests: XCTestCase {
    override func tearDown() {
        ddp_set_thread_limit(Int32(ddp_thread_count()))
    }

    struct Case {
        var op: String
        var shape: [Int]
        var axes: [Int]
        var keepDims = false
    }

    func testFusedReductionsAgreeWithTheInterpreterAcrossBackendsAndThreads() throws {
        let cases = [
            Case(op: "reduce_mean", shape: [2, 3, 70, 70], axes: [0, 2, 3]),  // batch-norm moments: runs of 4900 reduced
            Case(op: "reduce_sum", shape: [3, 5000], axes: [0], keepDims: true),  // a kept run of 5000
            Case(op: "reduce_max", shape: [4, 9, 33], axes: [2]),
            Case(op: "reduce_sum", shape: [5, 7], axes: [0, 1]),  // to a scalar
        ]
        for c in cases {
            let b = FunctionBuilder(name: "f")
            let x = b.argument("x", .f32(c.shape), role: .input), y = b.argument("y", .f32(c.shape), role: .input)
            // (x − 0.25)·y + exp(y), the kind of chain a batch norm's gradient reduces.
            let chain = try b.add(try b.mul(try b.sub(x, try b.constant(0.25, like: x)), y), try b.unary("exp", y))
            b.output(try b.reduce(c.op, chain, axes: c.axes, keepDims: c.keepDims), name: "r")
            let module = Module(functions: [b.function])

            var fused = module
            try PassManager(PassManager.standardPipeline(optimizer: nil)).run(&fused)
            let reductions = fused.functions[0].nodes.filter { $0.op == "fused_reduce" }
            XCTAssertEqual(reductions.count, 1, "\(c): \(Printer.print(fused))")
            XCTAssertEqual(fused.functions[0].nodes.count, 1, "\(c): the chain is computed inside the reduction")

            let count = c.shape.reduce(1, *)
            let inputs = ["x": HostTensor(.f32(c.shape), (0..<count).map { Double(Float(sin(Double($0) * 0.37))) }),
                          "y": HostTensor(.f32(c.shape), (0..<count).map { Double(Float(cos(Double($0) * 0.11))) })]
            let expected = try Interpreter.run(module.functions[0], arguments: inputs).outputs["r"]!
            var byBackend: [[Double]] = []
            for backend in Backend.allCases {
                let executor = try compile(module, backend: backend)
                var byThreads: [[Double]] = []
                for threads in Set([1, Int(ddp_thread_count())]).sorted() {
                    ddp_set_thread_limit(Int32(threads))
                    byThreads.append(try executor.run("f", inputs: inputs)["r"]!.data)
                }
                XCTAssertEqual(byThreads.first, byThreads.last, "\(c) on \(backend): the thread count changed the result")
                let got = byThreads[0]
                XCTAssertEqual(got.count, expected.data.count)
                let worst = closeness(got, expected.data, atol: 1e-5, rtol: 1e-5)
                XCTAssertLessThanOrEqual(worst, 1, "\(c) on \(backend): \(got.prefix(4)) vs \(expected.data.prefix(4))")
                byBackend.append(got)
            }
            XCTAssertEqual(byBackend.first, byBackend.last, "\(c): the C and LLVM code differ")
        }
    }

    /// What the pass leaves alone: a producer something else reads (fusing
    /// would compute it twice) and a producer with a broadcast operand.
    func testProducersThatAreNeededOrBroadcastStay() throws {
        let b = FunctionBuilder(name: "f")
        let x = b.argument("x", .f32([4, 6]), role: .input), bias = b.argument("bias", .f32([6]), role: .input)
        let shared = try b.mul(x, x)
        b.output(try b.sum(shared, axes: [1]), name: "sum")
        b.output(shared, name: "squares")
        b.output(try b.sum(try b.add(x, bias), axes: [0]), name: "broadcast")
        var module = Module(functions: [b.function])
        try PassManager(PassManager.standardPipeline(optimizer: nil)).run(&module)
        XCTAssertFalse(module.functions[0].nodes.contains { $0.op == "fused_reduce" }, Printer.print(module))
    }
}
