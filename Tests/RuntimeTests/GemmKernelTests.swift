import DDPKernels
import XCTest

/// The GEMM micro-kernels (AVX-512 where the CPU has it, and AVX2 always)
/// through the matmul and convolution kernels, against f64 loops; and the
/// same bits whatever the thread count.
final class GemmKernelTests: XCTestCase {
    /// The ISAs this CPU runs; AVX2 is forced on an AVX-512 machine too.
    let isas: [String] = {
        let candidates: [String] = ["avx2", "avx512"]
        return candidates.filter { ddp_set_isa($0) != 0 }
    }()

    override func tearDown() {
        _ = ddp_set_isa("native")
        ddp_set_thread_limit(Int32(ddp_thread_count()))
    }

    func values(_ count: Int, seed: Int) -> [Float] {
        (0..<count).map { Float(($0 &* 7919 &+ seed &* 104_729) % 2001) / 1000 - 1 }
    }

    func run(_ kernel: (UnsafePointer<UnsafeMutableRawPointer?>?, UnsafePointer<Int64>?, UnsafePointer<Double>?) -> Int32,
             _ buffers: [[Float]], _ ints: [Int64]) -> [[Float]] {
        runKernel(kernel, buffers, ints)
    }

    /// Runs `body` under every ISA and thread count; the thread counts must agree bit for bit.
    func forEachConfiguration(_ what: String, _ body: () -> [Float], check: ([Float]) -> Void) {
        for isa in isas {
            XCTAssertEqual(ddp_set_isa(isa), 1)
            var byThreads: [[Float]] = []
            for threads in Set([1, Int(ddp_thread_count())]).sorted() {
                ddp_set_thread_limit(Int32(threads))
                byThreads.append(body())
            }
            check(byThreads[0])
            XCTAssertEqual(byThreads.first, byThreads.last, "\(what) on \(isa): the thread count changed the result")
        }
    }

    func testMatmulAgreesWithF64ForRaggedShapesAndTransposes() {
        // Shapes straddle the micro-tiles (6×16, 12×32), the 256-deep sum
        // blocks, and a product narrower than a panel (n < 16 takes Cᵀ);
        // thin deep products of rows (A·Bᵀ, at most 16×32, at least 128 deep)
        // take dot products on AVX-512, over ragged 4×4 blocks and 16 lanes.
        // A last panel of a few columns (at most 8 of AVX-512's 32, 4 of
        // AVX2's 16) runs down the rows instead (n = 7, 33, 99, 100; 70 on
        // AVX-512), one of at most half a panel on one vector (44 on
        // AVX-512, 70 on AVX2).
        let shapes: [(m: Int, n: Int, k: Int)] = [(1, 1, 1), (5, 7, 3), (13, 33, 257), (40, 9, 300), (70, 100, 600), (205, 99, 513),
                                                  (13, 30, 301), (2, 17, 1000), (16, 32, 128), (24, 44, 200), (19, 70, 150)]
        for (m, n, k) in shapes {
            for (transA, transB) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let batch = 2
                let a = values(batch * m * k, seed: 1), b = values(batch * k * n, seed: 2)
                var expected = [Double](repeating: 0, count: batch * m * n)
                for i in 0..<batch {
                    for r in 0..<m {
                        for c in 0..<n {
                            var sum = 0.0
                            for p in 0..<k {
                                let av = transA == 1 ? a[i * m * k + p * m + r] : a[i * m * k + r * k + p]
                                let bv = transB == 1 ? b[i * k * n + c * k + p] : b[i * k * n + p * n + c]
                                sum += Double(av) * Double(bv)
                            }
                            expected[i * m * n + r * n + c] = sum
                        }
                    }
                }
                let what = "matmul \(m)×\(n)×\(k) trans \(transA)\(transB)"
                forEachConfiguration(what, {
                    run(ddp_matmul, [a, b, [Float](repeating: .nan, count: batch * m * n)],
                        [1, batch, m, k, n, transA, transB, transA == 1 ? m : k, transB == 1 ? k : n, n,
                         m * k, k * n, m * n].map(Int64.init))[2]
                }, check: { got in
                    let worst = zip(got, expected).map { abs(Double($0) - $1) / (1e-5 + 1e-5 * abs($1)) }.max() ?? 0
                    XCTAssertLessThanOrEqual(worst, Double(k) / 10 + 1, what)
                })
            }
        }
    }

    struct ConvCase {
        var n, c, h, w, o, kh, kw, stride, pad, groups: Int
        var oh: Int { (h + 2 * pad - kh) / stride + 1 }
        var ow: Int { (w + 2 * pad - kw) / stride + 1 }
        var ints: [Int64] {
            [n, c, h, w, o, kh, kw, oh, ow, stride, stride, pad, pad, 1, 1, groups].map(Int64.init)
        }
    }

    /// Forward, input gradient and weight gradient against direct f64 sums,
    /// on one image (the GEMMs split over threads) and on several (the images
    /// do); small images share products, large ones (P ≥ 256) do not, and
    /// layers whose weights outweigh the batch's columns (the sixth and
    /// seventh) run as one product over the batch.
    func testConvolutionsAgreeWithF64() {
        let cases = [
            ConvCase(n: 2, c: 3, h: 17, w: 17, o: 5, kh: 3, kw: 3, stride: 1, pad: 1, groups: 1),
            ConvCase(n: 3, c: 5, h: 9, w: 11, o: 7, kh: 3, kw: 3, stride: 1, pad: 1, groups: 1),
            ConvCase(n: 1, c: 24, h: 17, w: 15, o: 40, kh: 3, kw: 3, stride: 2, pad: 1, groups: 1),
            ConvCase(n: 2, c: 16, h: 8, w: 8, o: 33, kh: 1, kw: 1, stride: 1, pad: 0, groups: 1),
            ConvCase(n: 4, c: 6, h: 7, w: 7, o: 4, kh: 3, kw: 3, stride: 1, pad: 1, groups: 2),
            ConvCase(n: 3, c: 20, h: 3, w: 3, o: 40, kh: 3, kw: 3, stride: 1, pad: 1, groups: 1),
            // Images of at most 16 pixels (im2col by one permute per tap with
            // AVX-512): 4×4 as in ResNets' last stage, strided, and a 5×5 kernel.
            ConvCase(n: 3, c: 10, h: 4, w: 4, o: 7, kh: 3, kw: 3, stride: 1, pad: 1, groups: 1),
            ConvCase(n: 2, c: 6, h: 4, w: 4, o: 5, kh: 3, kw: 3, stride: 2, pad: 1, groups: 1),
            ConvCase(n: 2, c: 4, h: 3, w: 5, o: 3, kh: 5, kw: 5, stride: 1, pad: 2, groups: 1),
            ConvCase(n: 2, c: 16, h: 5, w: 4, o: 13, kh: 1, kw: 1, stride: 2, pad: 0, groups: 1),
            // K = 360: the products' sums run over two KC blocks, with B's
            // columns read in place (rows 84 floats apart) and a ragged panel packed.
            ConvCase(n: 2, c: 40, h: 6, w: 7, o: 12, kh: 3, kw: 3, stride: 1, pad: 1, groups: 1),
        ]
        for t in cases {
            let cg = t.c / t.groups, og = t.o / t.groups
            let x = values(t.n * t.c * t.h * t.w, seed: 3), w = values(t.o * cg * t.kh * t.kw, seed: 4)
            let dy = values(t.n * t.o * t.oh * t.ow, seed: 5)
            var y = [Double](repeating: 0, count: dy.count), dx = [Double](repeating: 0, count: x.count)
            var dw = [Double](repeating: 0, count: w.count)
            for n in 0..<t.n {
                for o in 0..<t.o {
                    let g = o / og
                    for i in 0..<t.oh {
                        for j in 0..<t.ow {
                            let yi = ((n * t.o + o) * t.oh + i) * t.ow + j
                            for ci in 0..<cg {
                                let c = g * cg + ci
                                for a in 0..<t.kh {
                                    for b in 0..<t.kw {
                                        let ih = i * t.stride - t.pad + a, iw = j * t.stride - t.pad + b
                                        guard ih >= 0, ih < t.h, iw >= 0, iw < t.w else { continue }
                                        let xi = ((n * t.c + c) * t.h + ih) * t.w + iw
                                        let wi = ((o * cg + ci) * t.kh + a) * t.kw + b
                                        y[yi] += Double(x[xi]) * Double(w[wi])
                                        dx[xi] += Double(dy[yi]) * Double(w[wi])
                                        dw[wi] += Double(dy[yi]) * Double(x[xi])
                                    }
                                }
                            }
                        }
                    }
                }
            }
            func check(_ got: [Float], _ expected: [Double], _ what: String) {
                let worst = zip(got, expected).map { abs(Double($0) - $1) / (1e-4 + 1e-4 * abs($1)) }.max() ?? 0
                XCTAssertLessThanOrEqual(worst, 1, "\(what) \(t)")
            }
            forEachConfiguration("conv2d \(t)", { run(ddp_conv2d, [x, w, [Float](repeating: .nan, count: y.count)], t.ints + [0, 0, 0, 0, 0, 0])[2] },
                                 check: { check($0, y, "conv2d") })
            // The fused epilogue: relu(y·scale[o] + shift[o] + residual).
            let scale = values(t.o, seed: 6), shift = values(t.o, seed: 7), residual = values(y.count, seed: 8)
            let fused = y.indices.map { i -> Double in
                let o = i / (t.oh * t.ow) % t.o
                return max(0, y[i] * Double(scale[o]) + Double(shift[o]) + Double(residual[i]))
            }
            forEachConfiguration("conv2d with epilogue \(t)", {
                run(ddp_conv2d, [x, w, [Float](repeating: .nan, count: y.count), scale, shift, residual], t.ints + [1, 1, 1, 1, 0, 0])[2]
            }, check: { check($0, fused, "conv2d with epilogue") })
            // The batch moments of that result, gathered as it is stored.
            let moments = batchMomentsF64(fused, n: t.n, c: t.o, plane: t.oh * t.ow)
            forEachConfiguration("conv2d with epilogue and moments \(t)", {
                let out = run(ddp_conv2d, [x, w, [Float](repeating: .nan, count: y.count), scale, shift, residual,
                                           [Float](repeating: .nan, count: 2 * t.o)], t.ints + [1, 1, 1, 1, 0, 1])
                return outputAndMoments(out, n: t.n, o: t.o, oh: t.oh, ow: t.ow, "conv2d \(t)")
            }, check: { check($0, fused + moments, "conv2d with epilogue and moments") })
            forEachConfiguration("conv2d_grad_input \(t)", {
                run(ddp_conv2d_grad_input, [dy, w, [Float](repeating: .nan, count: x.count)], t.ints + [0, 0, 0, 0, 0, 0])[2]
            }, check: { check($0, dx, "conv2d_grad_input") })
            // The input gradient's epilogue over x's channels, with the gate of
            // a ReLU's backward: max(0, dx·scale[c] + shift[c] + residual)·[gate > 0].
            let dxScale = values(t.c, seed: 9), dxShift = values(t.c, seed: 10)
            let dxResidual = values(dx.count, seed: 11), gate = values(dx.count, seed: 12)
            let gated = dx.indices.map { i -> Double in
                let c = i / (t.h * t.w) % t.c
                let v = max(0, dx[i] * Double(dxScale[c]) + Double(dxShift[c]) + Double(dxResidual[i]))
                return gate[i] > 0 ? v : 0
            }
            forEachConfiguration("conv2d_grad_input with epilogue \(t)", {
                run(ddp_conv2d_grad_input, [dy, w, [Float](repeating: .nan, count: x.count), dxScale, dxShift, dxResidual, gate],
                    t.ints + [1, 1, 1, 1, 1, 0])[2]
            }, check: { check($0, gated, "conv2d_grad_input with epilogue") })
            forEachConfiguration("conv2d_grad_weight \(t)", { run(ddp_conv2d_grad_weight, [x, dy, [Float](repeating: .nan, count: w.count)], t.ints)[2] },
                                 check: { check($0, dw, "conv2d_grad_weight") })
        }
    }
}
