import DDPKernels
import IR
import XCTest

/// The Winograd F(4×4, 3×3) and F(2×2, 3×3) kernels (forward with its fused
/// epilogue, and both gradients) against f64 sums: ragged tiles at the image's edges,
/// padding 0, 1 and 2, images smaller than a tile, several blocks of tiles;
/// under both ISAs, with the same bits at every thread count; and geometries
/// they cannot compute refused.
final class WinogradKernelTests: XCTestCase {
    override func tearDown() {
        _ = ddp_set_isa("native")
        ddp_set_thread_limit(Int32(ddp_thread_count()))
    }

    /// The input gradient's last arguments without a gathered input: the
    /// gather's flags (none) and its images per group. Left out, the kernel
    /// read whatever followed the arguments and, where that was not zero,
    /// refused the call as a malformed gather (in full test runs only).
    static let noGather: [Int64] = [0, 0, 0, 0, 0, 0]

    struct Case {
        var n, c, h, w, o, ph, pw: Int
        var oh: Int { h + 2 * ph - 2 }
        var ow: Int { w + 2 * pw - 2 }
        var ints: [Int64] { [n, c, h, w, o, 3, 3, oh, ow, 1, 1, ph, pw, 1, 1, 1].map(Int64.init) }
    }

    let cases = [
        Case(n: 2, c: 5, h: 13, w: 10, o: 7, ph: 1, pw: 1),
        Case(n: 1, c: 4, h: 9, w: 6, o: 3, ph: 0, pw: 2),
        Case(n: 3, c: 16, h: 4, w: 4, o: 8, ph: 1, pw: 1),
        Case(n: 2, c: 3, h: 2, w: 3, o: 2, ph: 2, pw: 1),
        // Enough tiles for several blocks per thread, channels past a GEMM panel.
        Case(n: 2, c: 40, h: 33, w: 29, o: 37, ph: 1, pw: 1),
        // Rows of more than 16 tiles (and F(2×2)'s of more than 32): the
        // input and gradient rows are split 16 tiles at a time.
        Case(n: 1, c: 3, h: 6, w: 70, o: 2, ph: 1, pw: 2),
        // Rows of exactly 16 tiles (F(2×2): 32): the spare column after the
        // last tile is split alone, from padding and from the row itself.
        Case(n: 1, c: 3, h: 6, w: 64, o: 2, ph: 1, pw: 1),
        Case(n: 1, c: 2, h: 5, w: 66, o: 3, ph: 0, pw: 0),
        // Too few tiles for a block per thread, output channels for several
        // panels a thread: the threads share the blocks, split by channels.
        Case(n: 2, c: 48, h: 8, w: 8, o: 40, ph: 1, pw: 1),
        Case(n: 3, c: 20, h: 4, w: 5, o: 64, ph: 1, pw: 0),
    ]

    func values(_ count: Int, seed: Int) -> [Float] {
        (0..<count).map { Float(($0 &* 7919 &+ seed &* 104_729) % 2001) / 1000 - 1 }
    }

    /// y = conv(x, w) and dx, dw = conv's VJPs of dy, in f64.
    func reference(_ t: Case, x: [Float], w: [Float], dy: [Float]) -> (y: [Double], dx: [Double], dw: [Double]) {
        var y = [Double](repeating: 0, count: t.n * t.o * t.oh * t.ow), dx = [Double](repeating: 0, count: x.count)
        var dw = [Double](repeating: 0, count: w.count)
        for n in 0..<t.n {
            for o in 0..<t.o {
                for i in 0..<t.oh {
                    for j in 0..<t.ow {
                        let yi = ((n * t.o + o) * t.oh + i) * t.ow + j
                        for c in 0..<t.c {
                            for a in 0..<3 {
                                for b in 0..<3 {
                                    let ih = i - t.ph + a, iw = j - t.pw + b
                                    guard ih >= 0, ih < t.h, iw >= 0, iw < t.w else { continue }
                                    let xi = ((n * t.c + c) * t.h + ih) * t.w + iw, wi = ((o * t.c + c) * 3 + a) * 3 + b
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
        return (y, dx, dw)
    }

    /// Worst error relative to the largest magnitude of the expected values.
    func error(_ got: [Float], _ want: [Double]) -> Double {
        let scale = want.map(abs).max() ?? 1
        return zip(got, want).map { abs(Double($0) - $1) }.max()! / max(scale, 1e-30)
    }

    /// Runs `body` under every ISA and thread count: the results must agree
    /// bit for bit across thread counts and stay within `bound` of the f64
    /// values. F(4×4, 3×3)'s transforms (entries up to 8 and 1/24) round more
    /// than the direct sum: measured on these cases the error stays under
    /// 6e-6 of the output's largest magnitude, and on unet-r18's and
    /// TransUNet's layers (up to 1024 channels) under 2e-5. F(2×2, 3×3)
    /// stays under 1e-6 on those layers.
    func check(_ what: String, bound: Double, want: [Double], _ body: () -> [Float]) {
        for isa in ["avx2", "avx512"] where ddp_set_isa(isa) != 0 {
            var byThreads: [[Float]] = []
            for threads in Set([1, Int(ddp_thread_count())]).sorted() {
                ddp_set_thread_limit(Int32(threads))
                byThreads.append(body())
            }
            XCTAssertLessThanOrEqual(error(byThreads[0], want), bound, "\(what) on \(isa)")
            XCTAssertEqual(byThreads.first, byThreads.last, "\(what) on \(isa): the thread count changed the result")
        }
    }

    func testForwardAndBothGradientsAgreeWithF64() {
        for (t, tile) in cases.flatMap({ t in [(t, 4), (t, 2)] }) {
            let bound = tile == 4 ? 2e-5 : 2e-6
            let x = values(t.n * t.c * t.h * t.w, seed: 3), w = values(t.o * t.c * 9, seed: 4)
            let dy = values(t.n * t.o * t.oh * t.ow, seed: 5)
            let want = reference(t, x: x, w: w, dy: dy)
            check("conv2d_winograd F(\(tile)) \(t)", bound: bound, want: want.y) {
                runKernel(ddp_conv2d_winograd, [x, w, [Float](repeating: .nan, count: want.y.count)], t.ints + [0, 0, 0, 0, 0, 0, Int64(tile), 0, 0, 0, 0, 0])[2]
            }
            check("conv2d_grad_input_winograd F(\(tile)) \(t)", bound: bound, want: want.dx) {
                runKernel(ddp_conv2d_grad_input_winograd, [dy, w, [Float](repeating: .nan, count: x.count)], t.ints + [0, 0, 0, 0, 0, 0, Int64(tile)] + Self.noGather)[2]
            }
            check("conv2d_grad_weight_winograd F(\(tile)) \(t)", bound: bound, want: want.dw) {
                runKernel(ddp_conv2d_grad_weight_winograd, [x, dy, [Float](repeating: .nan, count: w.count)], t.ints + [Int64(tile), 0, 0, 0, 0, 0])[2]
            }
        }
    }

    func testTheEpilogueIsAppliedToEveryOutput() {
        let t = cases[0]
        let x = values(t.n * t.c * t.h * t.w, seed: 6), w = values(t.o * t.c * 9, seed: 7)
        let scale = values(t.o, seed: 8), shift = values(t.o, seed: 9), residual = values(t.n * t.o * t.oh * t.ow, seed: 10)
        let conv = reference(t, x: x, w: w, dy: residual).y
        let plane = t.oh * t.ow
        let want = conv.indices.map { i -> Double in
            let o = i / plane % t.o
            return max(conv[i] * Double(scale[o]) + Double(shift[o]) + Double(residual[i]), 0)
        }
        for tile: Int64 in [4, 2] {
            check("conv2d_winograd F(\(tile)) with scale, shift, residual, relu", bound: 2e-5, want: want) {
                runKernel(ddp_conv2d_winograd, [x, w, [Float](repeating: .nan, count: conv.count), scale, shift, residual],
                          t.ints + [1, 1, 1, 1, 0, 0, tile, 0, 0, 0, 0, 0])[2]
            }
        }
        // With the batch moments of that result gathered as it is stored:
        // the same bits as batch_moments over it (and, by check, at every thread count).
        let moments = batchMomentsF64(want, n: t.n, c: t.o, plane: t.oh * t.ow)
        for tile: Int64 in [4, 2] {
            check("conv2d_winograd F(\(tile)) with epilogue and moments", bound: 2e-5, want: want + moments) {
                let out = runKernel(ddp_conv2d_winograd, [x, w, [Float](repeating: .nan, count: conv.count), scale, shift, residual,
                                                          [Float](repeating: .nan, count: 2 * t.o)], t.ints + [1, 1, 1, 1, 0, 1, tile, 0, 0, 0, 0, 0])
                return outputAndMoments(out, n: t.n, o: t.o, oh: t.oh, ow: t.ow, "conv2d_winograd F(\(tile))")
            }
        }
        // The input gradient's: a residual summed in, then a ReLU's backward
        // gate, (dx + residual)·[gate > 0] (the gate a full tensor of x's shape).
        let dy = values(t.n * t.o * t.oh * t.ow, seed: 11)
        let dx = reference(t, x: x, w: w, dy: dy).dx
        let summand = values(dx.count, seed: 12), gate = values(dx.count, seed: 13)
        let gated = dx.indices.map { i in gate[i] > 0 ? dx[i] + Double(summand[i]) : 0 }
        for tile: Int64 in [4, 2] {
            check("conv2d_grad_input_winograd F(\(tile)) with residual and gate", bound: 2e-5, want: gated) {
                runKernel(ddp_conv2d_grad_input_winograd, [dy, w, [Float](repeating: .nan, count: dx.count), summand, gate],
                          t.ints + [0, 0, 1, 0, 1, 0, tile] + Self.noGather)[2]
            }
        }
    }

    /// A NaN reaching the epilogue's ReLU (here from the residual) gives 0
    /// in the Winograd kernels and the im2col one alike, as the epilogue's
    /// expression does in the interpreter and the generated loops (max is
    /// fmaxf's: a NaN operand yields the other), and it reaches no other output.
    func testANaNBeforeTheReLUGivesZeroAsTheInterpreterDoes() throws {
        let t = cases[0]
        let x = values(t.n * t.c * t.h * t.w, seed: 6), w = values(t.o * t.c * 9, seed: 7)
        let count = t.n * t.o * t.oh * t.ow, poisoned = count / 3
        var residual = values(count, seed: 10)
        residual[poisoned] = .nan
        let ones = [Float](repeating: 1, count: t.o), zeros = [Float](repeating: 0, count: t.o)
        let epilogue = try ScalarExpr.parse("max(add(add(mul(in0, in1), in2), in3), 0.0)")
        XCTAssertEqual(epilogue.evaluate([0.5, 1, 0, .nan]), 0)
        let flags: [Int64] = [1, 1, 1, 1, 0, 0]
        let outputs = [("conv2d (im2col)", runKernel(ddp_conv2d, [x, w, [Float](repeating: .nan, count: count), ones, zeros, residual], t.ints + flags)[2])]
            + [Int64(4), 2].map { tile in
                ("conv2d_winograd F(\(tile))",
                 runKernel(ddp_conv2d_winograd, [x, w, [Float](repeating: .nan, count: count), ones, zeros, residual], t.ints + flags + [tile, 0, 0, 0, 0, 0])[2])
            }
        for (kernel, y) in outputs {
            XCTAssertEqual(y[poisoned], 0, kernel)
            XCTAssertEqual(y.indices.filter { y[$0].isNaN }, [], kernel)
        }
    }

    /// A wide layer over few tiles (TransUNet's first decoder block) takes
    /// longer blocks where a loan of spare arena gives each thread room for
    /// them; the forward and input-gradient results are the same bits.
    /// The forward's and input gradient's blocks grow into a large loan of
    /// spare arena and shrink into one a little short of them, and the
    /// weight gradient's one shared block comes from a loan across the
    /// threads' parts: the same bits as without a loan, on the heap.
    func testBlocksSizedByASpareArenaLoanGiveTheSameBits() {
        let t = Case(n: 4, c: 1024, h: 28, w: 28, o: 256, ph: 1, pw: 1)
        let x = values(t.n * t.c * t.h * t.w, seed: 14), w = values(t.o * t.c * 9, seed: 15)
        let dy = values(t.n * t.o * t.oh * t.ow, seed: 16)
        let floats = 32 << 20 // 128 MB: room for the whole layer in one block per thread
        let region = UnsafeMutablePointer<Float>.allocate(capacity: floats)
        defer { region.deallocate() }
        func lend(_ count: Int) { lendThreadScratch(region, count) }
        // Each call under a loan of its own, as a compiled step lends them.
        let calls: [() -> [Float]] = [
            { runKernel(ddp_conv2d_winograd, [x, w, [Float](repeating: .nan, count: dy.count)], t.ints + [0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0])[2] },
            { runKernel(ddp_conv2d_grad_input_winograd, [dy, w, [Float](repeating: .nan, count: x.count)], t.ints + [0, 0, 0, 0, 0, 0, 4] + Self.noGather)[2] },
            { runKernel(ddp_conv2d_grad_weight_winograd, [x, dy, [Float](repeating: .nan, count: w.count)], t.ints + [4, 0, 0, 0, 0, 0])[2] },
        ]
        func run(loan: Int = 0) -> [[Float]] {
            calls.map { call in
                lend(loan)
                defer { lend(0) }
                return call()
            }
        }
        let unlent = run()
        // 6.4 MB a thread: what TransUNet's fine-tuning lends its first
        // decoder block's input gradient, whose blocks want 9 MB.
        for (loan, what) in [(floats, "a large loan"), (Int(ddp_parallel_threads()) * 1_605_632, "a loan short of the blocks")] {
            let before = loanCounts()
            let lent = run(loan: loan)
            let after = loanCounts()
            XCTAssertGreaterThan(after.served, before.served, "\(what): the blocks came from the loan")
            XCTAssertEqual(after.missed, before.missed, "\(what): and fit in it")
            XCTAssertEqual(lent, unlent, what)
        }
    }

    /// Lends `count` floats at `region` to the calling thread's next kernel
    /// calls, as a compiled step's lend_thread_scratch does; 0 ends the loan.
    func lendThreadScratch(_ region: UnsafeMutablePointer<Float>, _ count: Int) {
        let buffers: [UnsafeMutableRawPointer?] = [UnsafeMutableRawPointer(region)]
        let ints: [Int64] = [Int64(count)]
        _ = buffers.withUnsafeBufferPointer { b in ints.withUnsafeBufferPointer { ddp_lend_thread_scratch(b.baseAddress, $0.baseAddress, nil) } }
    }

    /// The per-thread scratch requests loans have served and missed so far.
    func loanCounts() -> (served: Int64, missed: Int64) {
        var served: Int64 = 0, missed: Int64 = 0
        ddp_thread_scratch_loan_counts(&served, &missed)
        return (served, missed)
    }

    /// A layer with too few tiles for a block per thread (unet-r18's first
    /// decoder layer: 768 channels on 8×8 images) under a loan of spare
    /// arena smaller than its one shared block: the threads still share it
    /// (the block from the heap, their work space from the loan), with the
    /// bits of the unlent call.
    func testASharedBlockLongerThanItsLoanGivesTheSameBits() {
        let t = Case(n: 8, c: 768, h: 8, w: 8, o: 256, ph: 1, pw: 1)
        let x = values(t.n * t.c * t.h * t.w, seed: 17), w = values(t.o * t.c * 9, seed: 18)
        let dy = values(t.n * t.o * t.oh * t.ow, seed: 19)
        let loan = 982_560 // what unet-r18's inference lends that layer (3.9 MB)
        let region = UnsafeMutablePointer<Float>.allocate(capacity: loan)
        defer { region.deallocate() }
        func run(lent: Bool) -> [[Float]] {
            [
                { runKernel(ddp_conv2d_winograd, [x, w, [Float](repeating: .nan, count: dy.count)], t.ints + [0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0])[2] },
                { runKernel(ddp_conv2d_grad_input_winograd, [dy, w, [Float](repeating: .nan, count: x.count)], t.ints + [0, 0, 0, 0, 0, 0, 4] + Self.noGather)[2] },
            ].map { (call: () -> [Float]) in
                lendThreadScratch(region, lent ? loan : 0)
                defer { lendThreadScratch(region, 0) }
                return call()
            }
        }
        let before = loanCounts()
        let lent = run(lent: true)
        XCTAssertGreaterThan(loanCounts().served, before.served, "the work space came from the loan")
        XCTAssertEqual(lent, run(lent: false))
    }

    func testGeometriesItCannotComputeAreRefused() {
        var strided = cases[0].ints
        strided[9] = 2
        strided[7] = 7
        var fiveByFive = cases[0].ints
        (fiveByFive[5], fiveByFive[6]) = (5, 5)
        let threeByThree = cases[0].ints
        // The geometry is checked before any buffer is touched.
        let buffers: [UnsafeMutableRawPointer?] = [nil, nil, nil]
        // A geometry it cannot compute, or a tile size it does not have.
        for (geometry, tile): ([Int64], Int64) in [(strided, 4), (fiveByFive, 2), (threeByThree, 3)] {
            let status = buffers.withUnsafeBufferPointer { b in
                (geometry + [0, 0, 0, 0, 0, 0, tile, 0, 0, 0, 0, 0]).withUnsafeBufferPointer { ddp_conv2d_winograd(b.baseAddress, $0.baseAddress, nil) }
            }
            XCTAssertEqual(status, Int32(DDP_ERR_ARGS))
            let ints = geometry + [tile, 0, 0, 0, 0, 0]
            let gradient = buffers.withUnsafeBufferPointer { b in
                (geometry + [0, 0, 0, 0, 0, 0, tile] + Self.noGather).withUnsafeBufferPointer { ddp_conv2d_grad_input_winograd(b.baseAddress, $0.baseAddress, nil) }
            }
            XCTAssertEqual(gradient, Int32(DDP_ERR_ARGS))
            let weights = buffers.withUnsafeBufferPointer { b in
                ints.withUnsafeBufferPointer { ddp_conv2d_grad_weight_winograd(b.baseAddress, $0.baseAddress, nil) }
            }
            XCTAssertEqual(weights, Int32(DDP_ERR_ARGS))
        }
    }
}
