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
