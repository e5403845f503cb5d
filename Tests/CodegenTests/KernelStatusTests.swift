import Codegen
import DDPKernels
import Foundation
import IR
import Runtime
import Driver
import XCTest

/// A kernel that cannot do its work returns a status; the generated entry
/// point (both backends) stops at once and returns it, and the runtime
/// reports it instead of handing back stale outputs.
final class KernelStatusTests: XCTestCase {
    func testAFailingKernelStopsTheEntryPointWithItsStatus() throws {
        let b = FunctionBuilder(name: "infer")
        let x = b.argument("x", .f32([1, 2, 5, 5]), role: .input)
        let w = b.argument("w", .f32([3, 2, 3, 3]), role: .param)
        let y = try b.emit("conv2d", [x, w], ["pad": .ints([1, 1])])
        b.output(try b.unary("relu", y), name: "y")
        let module = Module(functions: [b.function])
        var table = Array(UnsafeBufferPointer(start: ddp_kernel_table(), count: Int(ddp_kernel_count.rawValue)))
        table[Int(ddp_kernel_index("conv2d"))] = { _, _, _ in Int32(DDP_ERR_NOMEM) }

        for backend in Backend.allCases {
            let executor = try compile(module, backend: backend)
            let call = try executor.prepare("infer", inputs: ["x": HostTensor(.f32([1, 2, 5, 5]), [Double](repeating: 1, count: 50))])
            XCTAssertNoThrow(try call.run(), "\(backend): the real kernels succeed")
            XCTAssertThrowsError(try table.withUnsafeBufferPointer { try call.run(kernels: $0.baseAddress!) }) { error in
                XCTAssertTrue("\(error)".contains("entry point infer stopped: a kernel could not get its working memory"), "\(backend): \(error)")
            }
        }
    }

    /// An entry point longer than one piece (`LoweredFunction.stepsPerPiece`)
    /// stops as well when a kernel of its first piece fails: the later
    /// pieces run no kernel and the status reaches the caller.
    func testAFailureInAnEarlyPieceStopsTheLaterPieces() throws {
        let b = FunctionBuilder(name: "infer")
        let x = b.argument("x", .f32([1, 2, 5, 5]), role: .input)
        let w = b.argument("w", .f32([3, 2, 3, 3]), role: .param)
        var y = try b.emit("conv2d", [x, w], ["pad": .ints([1, 1])])
        for _ in 0 ..< LoweredFunction.stepsPerPiece + 10 { y = try b.emit("softmax", [y], ["axis": .int(1)]) }
        b.output(y, name: "y")
        let module = Module(functions: [b.function])
        // Counting tables: every kernel's calls are counted, the convolution fails.
        let profiling = Array(UnsafeBufferPointer(start: ddp_profiling_kernel_table(), count: Int(ddp_kernel_count.rawValue)))
        var failing = profiling
        failing[Int(ddp_kernel_index("conv2d"))] = { _, _, _ in Int32(DDP_ERR_NOMEM) }
        let softmax = Int32(ddp_kernel_index("softmax"))
        for backend in Backend.allCases {
            let executor = try compile(module, backend: backend)
            let call = try executor.prepare("infer", inputs: ["x": HostTensor(.f32([1, 2, 5, 5]), [Double](repeating: 1, count: 50))])
            ddp_profile_reset()
            XCTAssertNoThrow(try profiling.withUnsafeBufferPointer { try call.run(kernels: $0.baseAddress!) })
            XCTAssertEqual(ddp_profile_kernel_calls(softmax), Int64(LoweredFunction.stepsPerPiece + 10),
                           "\(backend): every softmax is a kernel call, so the step has more than one piece")
            ddp_profile_reset()
            XCTAssertThrowsError(try failing.withUnsafeBufferPointer { try call.run(kernels: $0.baseAddress!) }) { error in
                XCTAssertTrue("\(error)".contains("entry point infer stopped: a kernel could not get its working memory"), "\(backend): \(error)")
            }
            XCTAssertEqual(ddp_profile_kernel_calls(softmax), 0, "\(backend): no kernel runs after the failed one")
        }
    }

    /// A kernel that fails between a scratch loan and its taking back
    /// leaves no loan behind: a kernel called outside the step afterwards
    /// (the sgemm figure's products) takes none of that arena.
    func testNoScratchLoanOutlivesAFailedEntryPoint() throws {
        let module = try Parser.parse("""
            func @infer(%0: f32[2,16,24,24] input "x", %1: f32[16,16,1,1] param "w", %2: f32[1024,1024] input "z") {
              %3 = conv2d(%0, %1) : f32[2,16,24,24]
              %4 = exp(%2) : f32[1024,1024]
              return %3 as "y", %4 as "e"
            }
            """)
        var table = Array(UnsafeBufferPointer(start: ddp_kernel_table(), count: Int(ddp_kernel_count.rawValue)))
        table[Int(ddp_kernel_index("conv2d"))] = { _, _, _ in Int32(DDP_ERR_NOMEM) }
        for backend in Backend.allCases {
            let executor = try compile(module, backend: backend)
            let inputs = ["x": HostTensor(zeros: .f32([2, 16, 24, 24])), "z": HostTensor(zeros: .f32([1024, 1024]))]
            let call = try executor.prepare("infer", inputs: inputs)
            XCTAssertThrowsError(try table.withUnsafeBufferPointer { try call.run(kernels: $0.baseAddress!) })
            var served: Int64 = 0, missed: Int64 = 0, servedAfter: Int64 = 0
            ddp_thread_scratch_loan_counts(&served, &missed)
            _ = ddp_sgemm_gflops(64, 1)
            ddp_thread_scratch_loan_counts(&servedAfter, &missed)
            XCTAssertEqual(servedAfter, served, "\(backend): the products took no loan")
        }
    }
}
