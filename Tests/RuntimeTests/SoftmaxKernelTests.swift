import DDPKernels
import Foundation
import XCTest

/// Softmax over contiguous rows (attention's last axis) runs on the
/// vectorized exponential: checked against f64 over a wide range of inputs,
/// with the extremes that must not turn into NaN, and NaN that must stay.
final class SoftmaxKernelTests: XCTestCase {
    func reference(_ row: [Float], log: Bool) -> [Double] {
        let m = Double(row.max()!)
        let sum = row.reduce(0.0) { $0 + Foundation.exp(Double($1) - m) }
        return row.map { log ? Double($0) - m - Foundation.log(sum) : Foundation.exp(Double($0) - m) / sum }
    }

    func testContiguousRowsAgreeWithF64() {
        let dim = 203  // not a multiple of the vector width
        let rows = 5
        // Row r spans ±(10·r + 1): from nearly uniform to nearly one-hot.
        var x: [Float] = []
        for r in 0..<rows {
            let spread = Double(10 * r + 1)
            for d in 0..<dim { x.append(Float(sin(Double(d) * 0.37 + Double(r)) * spread)) }
        }
        for log in [false, true] {
            let y = runKernel(log ? ddp_log_softmax : ddp_softmax, [x, [Float](repeating: .nan, count: x.count)], [Int64(rows), Int64(dim), 1])[1]
            for r in 0..<rows {
                let expected = reference(Array(x[(r * dim)..<((r + 1) * dim)]), log: log)
                for d in 0..<dim {
                    let got = Double(y[r * dim + d]), want = expected[d]
                    let scale: Double = log ? max(abs(want), 1) : abs(want)
                    XCTAssertEqual(got, want, accuracy: 1e-6 * scale + 1e-12,
                                   "row \(r), element \(d) (\(log ? "log_" : "")softmax)")
                }
            }
        }
    }

    func testExtremesStayFiniteAndNaNPropagates() {
        let row: [Float] = [-1e30, 0, 88, -88, 1e30, -.infinity]
        let y = runKernel(ddp_softmax, [row, [Float](repeating: .nan, count: row.count)], [1, Int64(row.count), 1])[1]
        XCTAssertEqual(y[4], 1, accuracy: 1e-6, "the largest element takes all the mass")
        XCTAssertTrue(y.allSatisfy { $0.isFinite && $0 >= 0 }, "\(y)")
        let withNaN: [Float] = [0, .nan, 1]
        let z = runKernel(ddp_softmax, [withNaN, [Float](repeating: 0, count: 3)], [1, 3, 1])[1]
        XCTAssertTrue(z.contains { $0.isNaN }, "a NaN input shows in the output: \(z)")
    }
}
