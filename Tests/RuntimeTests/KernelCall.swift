import DDPKernels
import XCTest

/// Runs a runtime kernel on copies of the given buffers and returns every
/// buffer afterwards; fails the test when the kernel reports an error.
func runKernel(_ kernel: (UnsafePointer<UnsafeMutableRawPointer?>?, UnsafePointer<Int64>?, UnsafePointer<Double>?) -> Int32,
               _ buffers: [[Float]], _ ints: [Int64], floats: [Double] = [],
               file: StaticString = #filePath, line: UInt = #line) -> [[Float]] {
    var buffers = buffers
    let pointers = buffers.indices.map { i in
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(buffers[i].count, 1))
        p.initialize(from: buffers[i], count: buffers[i].count)
        return p
    }
    defer { pointers.forEach { $0.deallocate() } }
    let raw: [UnsafeMutableRawPointer?] = pointers.map { UnsafeMutableRawPointer($0) }
    let status = raw.withUnsafeBufferPointer { b in
        ints.withUnsafeBufferPointer { i in floats.withUnsafeBufferPointer { f in kernel(b.baseAddress, i.baseAddress, f.baseAddress) } }
    }
    XCTAssertEqual(status, 0, "kernel status", file: file, line: line)
    for i in buffers.indices { buffers[i] = Array(UnsafeBufferPointer(start: pointers[i], count: buffers[i].count)) }
    return buffers
}

/// The per-channel mean and biased variance of an [N, C, plane] tensor in
/// f64, as batch_moments lays them out: C means, then C variances.
func batchMomentsF64(_ y: [Double], n: Int, c: Int, plane: Int) -> [Double] {
    var mean = [Double](repeating: 0, count: c), variance = [Double](repeating: 0, count: c)
    let count = Double(n * plane)
    for ch in 0..<c {
        var values: [Double] = []
        for i in 0..<n {
            let start = (i * c + ch) * plane
            values += y[start..<(start + plane)]
        }
        let m = values.reduce(0, +) / count
        mean[ch] = m
        variance[ch] = values.reduce(0.0) { sum, v in sum + (v - m) * (v - m) } / count
    }
    return mean + variance
}

/// A forward convolution's output and the batch moments its epilogue
/// gathered (`out[2]` and the last buffer), after checking that they are the
/// bits batch_moments computes from that output.
func outputAndMoments(_ out: [[Float]], n: Int, o: Int, oh: Int, ow: Int, _ what: String,
                      file: StaticString = #filePath, line: UInt = #line) -> [Float] {
    let separate = runKernel(ddp_batch_moments, [out[2], [Float](repeating: .nan, count: 2 * o)],
                             [n, o, oh, ow].map(Int64.init), file: file, line: line)[1]
    XCTAssertEqual(out.last!, separate, "\(what): the epilogue's moments are not batch_moments' bits", file: file, line: line)
    return out[2] + out.last!
}
