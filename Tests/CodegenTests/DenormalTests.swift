import DDPKernels
import Foundation
import IR
import Runtime
import Driver
import XCTest

/// Compiled steps run with denormal floats flushed to zero, on the calling
/// thread and on the pool's threads, and the caller keeps its own
/// floating-point mode outside them (ddp_run_entry). The pool's threads take
/// the mode of the thread that starts each region: inside a step, flushed;
/// outside, not, whichever mode the threads were created in.
final class DenormalTests: XCTestCase {
    func testCompiledStepsFlushDenormalsAndTheCallerKeepsItsMode() throws {
        // Long enough that the generated loop is split between the pool's threads.
        let count = 1 << 18
        let b = FunctionBuilder(name: "infer")
        let x = b.argument("x", .f32([count]), role: .input)
        b.output(try b.mul(x, x), name: "y")
        let module = Module(functions: [b.function])
        // 1e-20² = 1e-40 is a denormal float; 1e-3² is not.
        let input = (0..<count).map { $0 % 2 == 0 ? 1e-20 : 1e-3 }
        for backend in Backend.allCases {
            let executor = try compile(module, backend: backend)
            let y = try executor.run("infer", inputs: ["x": HostTensor(.f32([count]), input)])["y"]!.data
            let kept = stride(from: 0, to: count, by: 2).filter { y[$0] != 0 }
            XCTAssertTrue(kept.isEmpty, "\(backend): \(kept.count) denormal products kept, the first at \(kept.first ?? 0)")
            XCTAssertEqual(y[1], Double(Float(1e-3) * Float(1e-3)), "\(backend)")
            XCTAssertEqual(y[count - 1], Double(Float(1e-3) * Float(1e-3)), "\(backend)")
        }

        // Outside a step the pool computes denormals again: bilinear
        // upsampling of a constant 2e-38 (just above the least normal float,
        // 1.18e-38) sums products with fractional weights, most of them
        // denormal; flushed, they would be lost.
        let (n, c, h, w, oh, ow) = (2, 16, 16, 16, 48, 48) // enough for the pool to split the planes
        var source = [Float](repeating: 2e-38, count: n * c * h * w)
        var upsampled = [Float](repeating: 0, count: n * c * oh * ow)
        let ints: [Int64] = [Int64(n), Int64(c), Int64(h), Int64(w), Int64(oh), Int64(ow), 0]
        let status = source.withUnsafeMutableBytes { src in
            upsampled.withUnsafeMutableBytes { dst in
                var buffers: [UnsafeMutableRawPointer?] = [src.baseAddress, dst.baseAddress]
                return buffers.withUnsafeMutableBufferPointer { pointers in
                    ddp_upsample_bilinear(pointers.baseAddress, ints, nil)
                }
            }
        }
        XCTAssertEqual(status, Int32(DDP_OK))
        let plane = oh * ow
        let flushedPlanes = (0..<(n * c)).filter { p in
            upsampled[(p * plane)..<((p + 1) * plane)].contains { abs(Double($0) - 2e-38) > 2e-40 }
        }
        XCTAssertTrue(flushedPlanes.isEmpty, "planes \(flushedPlanes) lost denormal products")
        let tiny = [Float(1e-20)].withUnsafeBufferPointer { $0[0] }
        XCTAssertNotEqual(tiny * tiny, 0, "this thread computes denormals")
    }
}
