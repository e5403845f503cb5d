import DDPKernels
import XCTest

/// Max pooling against a window-by-window reference on inputs full of ties,
/// signed zeros, infinities and NaNs: the kernel finds each window's maximum
/// in two passes (down the columns, then along the row), and must still pick
/// the first maximal element in row-major order, which is where the gradient
/// goes and what PyTorch picks.
final class PoolingKernelTests: XCTestCase {
    struct Window {
        var kh, kw, sh, sw, ph, pw: Int
    }

    /// Index of the first maximal element of each window (NaN is maximal), or
    /// -1 for a window wholly in padding.
    func referenceArgmax(_ x: [Float], planes: Int, h: Int, w: Int, oh: Int, ow: Int, _ k: Window) -> [Int] {
        var result: [Int] = []
        for p in 0..<planes {
            for i in 0..<oh {
                for j in 0..<ow {
                    var best = -1
                    for a in 0..<k.kh {
                        for b in 0..<k.kw {
                            let ih = i * k.sh - k.ph + a, iw = j * k.sw - k.pw + b
                            guard ih >= 0, ih < h, iw >= 0, iw < w else { continue }
                            let at = (p * h + ih) * w + iw
                            if best < 0 || x[at] > x[best] || (x[at].isNaN && !x[best].isNaN) { best = at }
                        }
                    }
                    result.append(best)
                }
            }
        }
        return result
    }

    func testMaxPoolingPicksTheFirstMaximumInRowMajorOrder() {
        let shapes: [(n: Int, c: Int, h: Int, w: Int, Window)] = [
            (2, 3, 9, 11, Window(kh: 3, kw: 3, sh: 2, sw: 2, ph: 1, pw: 1)),
            (1, 4, 8, 8, Window(kh: 2, kw: 2, sh: 2, sw: 2, ph: 0, pw: 0)),
            (2, 2, 7, 10, Window(kh: 3, kw: 2, sh: 1, sw: 3, ph: 1, pw: 1)),
            (1, 2, 5, 5, Window(kh: 5, kw: 5, sh: 1, sw: 1, ph: 2, pw: 2)),
            (1, 2, 3, 40, Window(kh: 1, kw: 4, sh: 1, sw: 4, ph: 0, pw: 2)),
        ]
        let specials: [Float] = [.nan, -0.0, 0.0, -.infinity, .infinity]
        for (index, shape) in shapes.enumerated() {
            let k = shape.4
            let oh = (shape.h + 2 * k.ph - k.kh) / k.sh + 1, ow = (shape.w + 2 * k.pw - k.kw) / k.sw + 1
            let planes = shape.n * shape.c
            // Few distinct values, so most windows hold ties.
            let x: [Float] = (0..<planes * shape.h * shape.w).map { i in
                let r = (i &* 2_654_435_761 &+ index) % 23
                return r < specials.count ? specials[r] : Float(r % 4)
            }
            let dy: [Float] = (0..<planes * oh * ow).map { Float($0 % 13) + 0.5 }
            let ints = [shape.n, shape.c, shape.h, shape.w, oh, ow, k.kh, k.kw, k.sh, k.sw, k.ph, k.pw].map(Int64.init)
            let argmax = referenceArgmax(x, planes: planes, h: shape.h, w: shape.w, oh: oh, ow: ow, k)
            let y = runKernel(ddp_max_pool2d, [x, [Float](repeating: 7, count: dy.count)], ints)[1]
            for (o, at) in argmax.enumerated() {
                let want = at >= 0 ? x[at] : -Float.infinity
                XCTAssertTrue(y[o].bitPattern == want.bitPattern || (y[o].isNaN && want.isNaN),
                              "shape \(index), output \(o): \(y[o]) is not \(want)")
            }
            var wantDx = [Float](repeating: 0, count: x.count)
            for (o, at) in argmax.enumerated() where at >= 0 { wantDx[at] += dy[o] }
            let dx = runKernel(ddp_max_pool2d_grad, [x, dy, [Float](repeating: 7, count: x.count)], ints)[2]
            let misplaced = dx.indices.first { dx[$0].bitPattern != wantDx[$0].bitPattern }
            XCTAssertNil(misplaced, "shape \(index): the gradient at \(misplaced ?? 0) is \(dx[misplaced ?? 0]), not \(wantDx[misplaced ?? 0])")
        }
    }
}
