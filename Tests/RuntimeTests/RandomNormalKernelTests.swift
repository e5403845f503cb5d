import DDPKernels
import XCTest

/// random_normal takes log and cos of whole vectors from glibc's vector math
/// library; every value must still be ddp_normal_at's (the generator the
/// reference interpreter re-implements) rounded to float.
final class RandomNormalKernelTests: XCTestCase {
    func testEveryValueIsTheReferenceGeneratorsRoundedToFloat() {
        let count = (1 << 20) + 5 // a tail past the vector loop
        for seed: Int64 in [0, 7, -3, 123_456_789] {
            var seedValue = seed
            var values = [Float](repeating: .nan, count: count)
            let status = withUnsafeMutablePointer(to: &seedValue) { s in
                values.withUnsafeMutableBufferPointer { y in
                    let buffers: [UnsafeMutableRawPointer?] = [UnsafeMutableRawPointer(s), UnsafeMutableRawPointer(y.baseAddress)]
                    let ints: [Int64] = [Int64(count)]
                    return buffers.withUnsafeBufferPointer { b in
                        ints.withUnsafeBufferPointer { i in ddp_random_normal(b.baseAddress, i.baseAddress, nil) }
                    }
                }
            }
            XCTAssertEqual(status, 0)
            var differing: [Int] = []
            for i in 0..<count where values[i] != Float(ddp_normal_at(UInt64(bitPattern: seed), UInt64(i))) { differing.append(i) }
            XCTAssertEqual(differing.count, 0, "seed \(seed): values \(differing.prefix(5)) differ from ddp_normal_at")
        }
    }
}
