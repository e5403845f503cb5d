import DDPKernels
import XCTest

/// The kernels that split their work over the pool's threads once it is
/// large enough (reduce, permute, copy_region, max pooling, nearest
/// upsampling), on sizes past that threshold: the same bits at one thread and
/// at all of them, and the reductions against f64 sums.
final class ParallelKernelTests: XCTestCase {
    override func tearDown() {
        ddp_set_thread_limit(Int32(ddp_thread_count()))
    }

    func values(_ count: Int, seed: Int) -> [Float] {
        (0..<count).map { Float(($0 &* 7919 &+ seed &* 104_729) % 2001) / 1000 - 1 }
    }

    /// Runs the kernel at one thread and at every thread; returns the
    /// one-thread result after checking that the two agree bit for bit.
    func sameAtEveryThreadCount(_ what: String, _ body: () -> [Float], file: StaticString = #filePath, line: UInt = #line) -> [Float] {
        var results: [[Float]] = []
        for threads in [1, Int(ddp_thread_count())] {
            ddp_set_thread_limit(Int32(threads))
            results.append(body())
        }
        XCTAssertEqual(results[0].map(\.bitPattern), results[1].map(\.bitPattern), "\(what): the thread count changed the result",
                       file: file, line: line)
        return results[0]
    }

    func testReductionsOverEveryAxisPattern() {
        let shape = [4, 24, 17, 33]
        let x = values(shape.reduce(1, *), seed: 1)
        // Leading axes (a bias gradient), trailing (row sums), alternating (batch-norm moments), all.
        let patterns: [[Int]] = [[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1]]
        for reduced in patterns {
            for kind in 0...2 {
                let outCount = zip(shape, reduced).map { $1 == 1 ? 1 : $0 }.reduce(1, *)
                let got = sameAtEveryThreadCount("reduce kind \(kind) over \(reduced)") {
                    runKernel(ddp_reduce, [x, [Float](repeating: .nan, count: outCount)],
                              ([kind, 4] + shape + reduced).map(Int64.init))[1]
                }
                var want = [Double](repeating: kind == 2 ? -.infinity : 0, count: outCount)
                let strides = [shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1]
                let kept = zip(shape, reduced).map { $1 == 1 ? 1 : $0 }
                let outStrides = [kept[1] * kept[2] * kept[3], kept[2] * kept[3], kept[3], 1]
                for i in 0..<x.count {
                    var o = 0
                    for d in 0..<4 where reduced[d] == 0 { o += (i / strides[d] % shape[d]) * outStrides[d] }
                    want[o] = kind == 2 ? max(want[o], Double(x[i])) : want[o] + Double(x[i])
                }
                if kind == 1 {
                    let n = Double(zip(shape, reduced).map { $1 == 1 ? $0 : 1 }.reduce(1, *))
                    want = want.map { $0 / n }
                }
                let worst = zip(got, want).map { abs(Double($0) - $1) / max(1, abs($1)) }.max() ?? 0
                XCTAssertLessThanOrEqual(worst, 1e-6, "reduce kind \(kind) over \(reduced)")
            }
        }
    }

    /// A reduction to one value goes in pieces of a fixed size: a NaN in a
    /// later piece still makes the maximum NaN, and an infinity the sum's.
    func testReductionsToOneValueKeepNaNAndInfinityFromEveryPiece() {
        let count = 100_000
        for (kind, special, isWanted): (Int, Float, (Float) -> Bool) in [(2, .nan, { $0.isNaN }), (0, .infinity, { $0 == .infinity }),
                                                                         (1, -.infinity, { $0 == -.infinity })] {
            var x = values(count, seed: 3)
            x[count - 5] = special
            let got = sameAtEveryThreadCount("reduce kind \(kind) of \(count) values") {
                runKernel(ddp_reduce, [x, [.nan]], [Int64(kind), 1, Int64(count), 1])[1]
            }
            XCTAssertTrue(isWanted(got[0]), "kind \(kind): \(got[0])")
        }
    }

    func testPermuteAndCopyRegion() {
        let shape = [3, 40, 17, 29]
        let x = values(shape.reduce(1, *), seed: 2)
        let permuted = sameAtEveryThreadCount("permute") {
            runKernel(ddp_permute, [x, [Float](repeating: .nan, count: x.count)], ([4] + shape + [2, 0, 3, 1]).map(Int64.init))[1]
        }
        // y[a][b][c][d] = x[b][d][a][c] for the permutation [2, 0, 3, 1].
        for (a, b, c, d) in [(0, 0, 0, 0), (16, 2, 28, 39), (7, 1, 13, 5)] {
            XCTAssertEqual(permuted[((a * 3 + b) * 29 + c) * 40 + d], x[((b * 40 + d) * 17 + a) * 29 + c])
        }
        // Every other row of a [3, 40, 17, 29] tensor into the middle of a larger one.
        let dstShape = [3, 40, 20, 29], count = [3, 40, 9, 29]
        let ints = [4] + shape + dstShape + [0, 0, 0, 0] + [1, 1, 2, 1] + [0, 0, 5, 0] + count
        let copied = sameAtEveryThreadCount("copy_region") {
            runKernel(ddp_copy_region, [x, [Float](repeating: 0, count: dstShape.reduce(1, *))], ints.map(Int64.init))[1]
        }
        for (n, c, r, w) in [(0, 0, 0, 0), (2, 39, 8, 28), (1, 17, 4, 3)] {
            XCTAssertEqual(copied[((n * 40 + c) * 20 + 5 + r) * 29 + w], x[((n * 40 + c) * 17 + 2 * r) * 29 + w])
        }
        XCTAssertEqual(copied[((1 * 40 + 3) * 20 + 2) * 29 + 7], 0, "outside the box stays untouched")
    }

    func testPoolingAndNearestUpsampling() {
        let (n, c, h, w) = (2, 48, 33, 30)
        let x = values(n * c * h * w, seed: 3)
        // 3×3 windows, stride 2, padding 1.
        let oh = (h + 2 - 3) / 2 + 1, ow = (w + 2 - 3) / 2 + 1
        let pool = [n, c, h, w, oh, ow, 3, 3, 2, 2, 1, 1].map(Int64.init)
        let pooled = sameAtEveryThreadCount("max_pool2d") {
            runKernel(ddp_max_pool2d, [x, [Float](repeating: .nan, count: n * c * oh * ow)], pool)[1]
        }
        XCTAssertEqual(pooled[0], max(x[0], x[1], x[w], x[w + 1]))
        let dy = values(n * c * oh * ow, seed: 4)
        let dx = sameAtEveryThreadCount("max_pool2d_grad") {
            runKernel(ddp_max_pool2d_grad, [x, dy, [Float](repeating: .nan, count: x.count)], pool)[2]
        }
        XCTAssertEqual(Double(dx.reduce(0, +)), Double(dy.reduce(0, +)), accuracy: 1e-2, "every window passes its gradient on")
        let up = [n, c, h, w, 2 * h, 2 * w].map(Int64.init)
        let upsampled = sameAtEveryThreadCount("upsample_nearest") {
            runKernel(ddp_upsample_nearest, [x, [Float](repeating: .nan, count: 4 * x.count)], up)[1]
        }
        XCTAssertEqual(upsampled[(5 * 2 * h + 7) * 2 * w + 9], x[(5 * h + 3) * w + 4])
        let back = sameAtEveryThreadCount("upsample_nearest_grad") {
            runKernel(ddp_upsample_nearest_grad, [upsampled, [Float](repeating: .nan, count: x.count)], up)[1]
        }
        XCTAssertEqual(back[(5 * h + 3) * w + 4], 4 * x[(5 * h + 3) * w + 4], accuracy: 1e-6)
    }
}
