import DDPKernels
import Foundation
import IR
import Runtime
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
}
