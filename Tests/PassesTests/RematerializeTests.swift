import IR
import ModelZoo
@testable import Passes
import TestSupport
import XCTest

/// rematerialize: cheap data movement computed again before a late use,
/// kept only where the peak of live bytes drops, computing the same values.
final class RematerializeTests: XCTestCase {
    /// An upsampling and a concatenation read by one node early and by one
    /// late, while a chain of other tensors is live in between (the shape of
    /// a decoder's forward and backward pass).
    static let decoderLike = """
        func @f(%0: f32[1,8,4,4] input "x", %1: f32[1,8,8,8] input "skip") {
          %2 = upsample_nearest(%0) {size=[8,8]} : f32[1,8,8,8]
          %3 = concat(%2, %1) {axis=1} : f32[1,16,8,8]
          %4 = softmax(%3) {axis=1} : f32[1,16,8,8]
          %5 = softmax(%4) {axis=2} : f32[1,16,8,8]
          %6 = mul(%5, %4) : f32[1,16,8,8]
          %7 = mse(%6, %3) : f32[]
          return %7 as "loss"
        }
        """

    func testRecomputesAChainBeforeItsLateUseAndLowersThePeak() throws {
        // The concatenation's late use reads a copy made right before it, and
        // the upsampling it reads is dead by then: it is computed again too.
        let checks = """

            // CHECK: %6 = mul(%5, %4) : f32[1,16,8,8]
            // CHECK-NEXT: %8 = upsample_nearest(%0) {size=[8,8]} : f32[1,8,8,8]
            // CHECK-NEXT: %9 = concat(%8, %1) {axis=1} : f32[1,16,8,8]
            // CHECK-NEXT: %7 = mse(%6, %9) : f32[]
            """
        // Before: the concatenation (4 KiB) beside both softmaxes' results;
        // after: the softmaxes' results, or the upsampling copy (2 KiB) and
        // the concatenation's beside mul's (over the second softmax's).
        // (Softmax, a kernel, keeps the chain out of one generated loop,
        // which would hold every value it touches to its end.)
        try checkRecomputed(Self.decoderLike, checks: checks, peaks: (3 * 4096, 2 * 4096 + 2048))
    }

    func testLeavesAStepAloneWhenRecomputingSavesNothing() throws {
        // Read once, right away: no stretch to save.
        var module = try Parser.parse("""
            func @f(%0: f32[1,8,4,4] input "x", %1: f32[1,8,8,8] input "skip") {
              %2 = upsample_nearest(%0) {size=[8,8]} : f32[1,8,8,8]
              %3 = concat(%2, %1) {axis=1} : f32[1,16,8,8]
              %4 = tanh(%3) : f32[1,16,8,8]
              %5 = mse(%4, %4) : f32[]
              return %5 as "loss"
            }
            """)
        XCTAssertEqual(try runPasses([Rematerialize.name], on: &module), [false])
        // Held across a stretch, but not at the peak: the peak is the chain
        // after its last use, so a copy would only cost time.
        var late = try Parser.parse("""
            func @f(%0: f32[1,8,4,4] input "x", %1: f32[1,64,8,8] input "big") {
              %2 = upsample_nearest(%0) {size=[8,8]} : f32[1,8,8,8]
              %3 = tanh(%2) : f32[1,8,8,8]
              %4 = exp(%3) : f32[1,8,8,8]
              %5 = mul(%4, %2) : f32[1,8,8,8]
              %6 = tanh(%1) : f32[1,64,8,8]
              %7 = exp(%6) : f32[1,64,8,8]
              %8 = mse(%7, %7) : f32[]
              %9 = mse(%5, %5) : f32[]
              %10 = add(%8, %9) : f32[]
              return %10 as "loss"
            }
            """)
        XCTAssertEqual(try runPasses([Rematerialize.name], on: &late), [false])
    }

    /// A value read late through a reshape (a matmul's operand, as fc2's
    /// weight gradient reads a GELU's output) is computed again before the
    /// reshape, which then shares the copy's storage.
    func testRecomputesAValueReadLateThroughAReshape() throws {
        // (The products are 256 wide: too costly to compute again.)
        let source = """
            func @f(%0: f32[4,256] input "x", %1: f32[256,256] input "w") {
              %2 = matmul(%0, %1) : f32[4,256]
              %3 = gelu(%2) : f32[4,256]
              %4 = matmul(%3, %1) : f32[4,256]
              %5 = matmul(%4, %1) : f32[4,256]
              %6 = matmul(%5, %1) : f32[4,256]
              %7 = matmul(%6, %1) : f32[4,256]
              %8 = add(%7, %4) : f32[4,256]
              %9 = reshape(%3) {shape=[1024]} : f32[1024]
              %10 = reshape(%8) {shape=[1024]} : f32[1024]
              %11 = mul(%9, %10) : f32[1024]
              %12 = reshape(%2) {shape=[1024]} : f32[1024]
              %13 = mul(%11, %12) : f32[1024]
              %14 = mse(%13, %13) : f32[]
              return %14 as "loss"
            }
            """
        let after = try checkIR(source + """

            // CHECK: %8 = add(%7, %4) : f32[4,256]
            // CHECK-NEXT: %15 = gelu(%2) : f32[4,256]
            // CHECK-NEXT: %9 = reshape(%15) {shape=[1024]} : f32[1024]
            """, passes: [Rematerialize.name])
        try checkSameValues(try Parser.parse(source).functions[0], after.functions[0])
        // Returned through a reshape, the value keeps its storage to the end.
        var returned = try Parser.parse(source.replacingOccurrences(of: "return %14 as \"loss\"", with: "return %14 as \"loss\", %9 as \"g\""))
        XCTAssertEqual(try runPasses([Rematerialize.name], on: &returned), [false])
    }

    /// A ReLU after a group norm, read late (by the next convolution's
    /// weight gradient), is computed again with its norm from the norm's
    /// input, which the norm's gradient holds anyway.
    func testRecomputesANormAndItsActivationFromTheHeldInput() throws {
        // (3×3 convolutions over 16 channels: too costly to compute again.)
        let source = """
            func @f(%0: f32[2,16,3,3] input "x", %1: f32[16] input "g", %2: f32[16] input "b", %3: f32[16,16,3,3] input "w") {
              %4 = conv2d(%0, %3) {pad=[1,1]} : f32[2,16,3,3]
              %5 = group_norm(%4, %1, %2) {eps=1e-05, groups=2} : f32[2,16,3,3]
              %6 = relu(%5) : f32[2,16,3,3]
              %7 = conv2d(%6, %3) {pad=[1,1]} : f32[2,16,3,3]
              %8 = conv2d(%7, %3) {pad=[1,1]} : f32[2,16,3,3]
              %9 = conv2d(%8, %3) {pad=[1,1]} : f32[2,16,3,3]
              %10 = add(%9, %7) : f32[2,16,3,3]
              %11 = mul(%10, %6) : f32[2,16,3,3]
              %12 = mul(%11, %4) : f32[2,16,3,3]
              %13 = mse(%12, %12) : f32[]
              return %13 as "loss"
            }
            """
        let after = try checkIR(source + """

            // CHECK: %10 = add(%9, %7) : f32[2,16,3,3]
            // CHECK-NEXT: %14 = group_norm(%4, %1, %2) {eps=1e-05, groups=2} : f32[2,16,3,3]
            // CHECK-NEXT: %15 = relu(%14) : f32[2,16,3,3]
            // CHECK-NEXT: %11 = mul(%10, %15) : f32[2,16,3,3]
            """, passes: [Rematerialize.name])
        try checkSameValues(try Parser.parse(source).functions[0], after.functions[0])
    }

    func testNeverCopiesAResultOrAReadOfAnOverwrittenArgument() throws {
        // %2 is returned: its storage must hold it at the end.
        var returned = try Parser.parse("""
            func @f(%0: f32[1,8,4,4] input "x") {
              %1 = upsample_nearest(%0) {size=[8,8]} : f32[1,8,8,8]
              %2 = tanh(%1) : f32[1,8,8,8]
              %3 = exp(%2) : f32[1,8,8,8]
              %4 = mul(%3, %1) : f32[1,8,8,8]
              return %4 as "y", %1 as "up"
            }
            """)
        XCTAssertEqual(try runPasses([Rematerialize.name], on: &returned), [false])
        // %0 is updated during the call: a copy after the update would read the new value.
        let overwritten = try Parser.parse("""
            func @f(%0: f32[1,8,4,4] state "s", %1: f32[1,8,4,4] input "x") {
              %2 = upsample_nearest(%0) {size=[8,8]} : f32[1,8,8,8]
              %3 = tanh(%2) : f32[1,8,8,8]
              %4 = exp(%3) : f32[1,8,8,8]
              %5 = add(%0, %1) : f32[1,8,4,4]
              %6 = mul(%4, %2) : f32[1,8,8,8]
              return %6 as "y"
              update %0 = %5
            }
            """)
        let function = overwritten.functions[0]
        XCTAssertNil(Rematerialize().recomputingLateUses(of: 2, in: function))
        // Updated only after the late use, it is read as it was: the copy may be made.
        var later = function
        later.nodes.swapAt(3, 4)
        XCTAssertNotNil(Rematerialize().recomputingLateUses(of: 2, in: later))
    }

    /// A batch norm's output as batch-norm-from-moments leaves it: a loop
    /// over the centered tensor, which the backward pass reads last, and a
    /// per-channel scale. It is computed again before its late use, and the
    /// centered tensor is held no longer than it was.
    func testRecomputesALoopWhoseOperandsAreHeldAnyway() throws {
        let source = """
            func @f(%0: f32[1,8,8,8] input "x", %1: f32[1,8,1,1] input "s") {
              %2 = permute(%0) {perm=[0,1,3,2]} : f32[1,8,8,8]
              %3 = mul(%2, %1) : f32[1,8,8,8]
              %4 = softmax(%3) {axis=2} : f32[1,8,8,8]
              %5 = softmax(%4) {axis=3} : f32[1,8,8,8]
              %6 = mul(%5, %4) : f32[1,8,8,8]
              %7 = mul(%6, %3) : f32[1,8,8,8]
              %8 = add(%7, %2) : f32[1,8,8,8]
              %9 = mse(%8, %8) : f32[]
              return %9 as "loss"
            }
            """
        try checkRecomputed(source, checks: """

            // CHECK: %6 = mul(%5, %4) : f32[1,8,8,8]
            // CHECK-NEXT: %10 = mul(%2, %1) : f32[1,8,8,8]
            // CHECK-NEXT: %7 = mul(%6, %10) : f32[1,8,8,8]
            """, peaks: (4 * 2048, 3 * 2048), why: ("%2, %3, %4 and %5 at the second softmax", "%3 is dead by then"))
    }

    /// A weight standardized in the step, (w − mean)·rstd, read by its
    /// convolution early and by the convolution's input gradient late: it is
    /// computed again from the parameter and two small vectors, which are
    /// there anyway, and the centered weight is held no longer either.
    func testRecomputesAStandardizedWeightFromItsParameter() throws {
        let source = """
            func @f(%0: f32[16,16,3,3] param "w", %1: f32[16,1,1,1] input "mean", %2: f32[16,1,1,1] input "rstd", %3: f32[16,16,3,3] input "x") {
              %4 = sub(%0, %1) : f32[16,16,3,3]
              %5 = mul(%4, %2) : f32[16,16,3,3]
              %6 = mul(%5, %3) : f32[16,16,3,3]
              %7 = softmax(%6) {axis=1} : f32[16,16,3,3]
              %8 = softmax(%7) {axis=2} : f32[16,16,3,3]
              %9 = mul(%8, %7) : f32[16,16,3,3]
              %10 = mul(%9, %5) : f32[16,16,3,3]
              %11 = mse(%10, %10) : f32[]
              return %11 as "loss"
            }
            """
        try checkRecomputed(source, checks: """

            // CHECK: %9 = mul(%8, %7) : f32[16,16,3,3]
            // CHECK-NEXT: %12 = sub(%0, %1) : f32[16,16,3,3]
            // CHECK-NEXT: %13 = mul(%12, %2) : f32[16,16,3,3]
            // CHECK-NEXT: %10 = mul(%9, %13) : f32[16,16,3,3]
            """, peaks: (3 * 9216, 2 * 9216), why: ("%5, %7 and %8 at the second softmax", "%5 is dead by then"))
    }

    /// Attention's probabilities, softmax(Q·Kᵀ·scale), read by the
    /// backward pass late, while its gradient holds Q and K anyway: the
    /// product over a narrow head (8 wide here, 64 in ViT-B: at most
    /// `cheapFlopsPerElement` per score) and the softmax are computed again.
    func testRecomputesAttentionsSoftmaxFromQueryAndKey() throws {
        let source = Self.attention
        try checkRecomputed(source, checks: """

            // CHECK: %12 = mul(%11, %10) : f32[2,16,16]
            // CHECK-NEXT: %15 = matmul(%0, %1) {transpose_b=true} : f32[2,16,16]
            // CHECK-NEXT: %16 = mul(%15, %4) : f32[2,16,16]
            // CHECK-NEXT: %17 = softmax(%16) {axis=-1} : f32[2,16,16]
            // CHECK-NEXT: %13 = mul(%12, %17) : f32[2,16,16]
            """, peaks: (4 * 2048, 3 * 2048 + 64), why: ("%6, %7, %8 and %9 at sigmoid", "%6 is dead by then, the scale held for its copy"))
        // A product over a wide dimension costs more than it holds: kept.
        var wide = try Parser.parse(source.replacingOccurrences(of: "[2,16,8]", with: "[2,16,256]"))
        XCTAssertEqual(try runPasses([Rematerialize.name], on: &wide), [false])
    }

    /// With a memory budget below the peak, the wide product (512 FLOPs per
    /// score) is computed again as the narrow one is without: until the peak
    /// is within the budget, and never one beyond `budgetFlopsPerElement`
    /// (2048 FLOPs per score over 1024-wide heads).
    func testAMemoryBudgetRecomputesProductsUntilThePeakFits() throws {
        let wide = try Parser.parse(Self.attention.replacingOccurrences(of: "[2,16,8]", with: "[2,16,256]"))
        let peak = PlanMemory.liveness(of: wide.functions[0]).peak.bytes
        XCTAssertEqual(peak, 4 * 2048)
        var roomy = wide
        XCTAssertFalse(try Rematerialize(memoryBudget: peak).run(&roomy), "within the budget already")

        var tight = wide
        XCTAssertTrue(try Rematerialize(memoryBudget: peak - 1).run(&tight))
        XCTAssertEqual(tight.functions[0].count("matmul"), 2, "the product computed again before its late use")
        XCTAssertEqual(PlanMemory.liveness(of: tight.functions[0]).peak.bytes, 3 * 2048 + 64)
        try checkSameValues(wide.functions[0], tight.functions[0])

        var wider = try Parser.parse(Self.attention.replacingOccurrences(of: "[2,16,8]", with: "[2,16,1024]"))
        XCTAssertFalse(try Rematerialize(memoryBudget: 1).run(&wider), "a product over 1024 costs more than any budget allows")
    }

    /// Attention's scores over 8-wide heads, their softmax read again late.
    static let attention = """
            func @f(%0: f32[2,16,8] input "q", %1: f32[2,16,8] input "k", %2: f32[2,16,16] input "g") {
              %3 = matmul(%0, %1) {transpose_b=true} : f32[2,16,16]
              %4 = constant() {value=0.25} : f32[]
              %5 = mul(%3, %4) : f32[2,16,16]
              %6 = softmax(%5) {axis=-1} : f32[2,16,16]
              %7 = mul(%6, %2) : f32[2,16,16]
              %8 = tanh(%7) : f32[2,16,16]
              %9 = exp(%7) : f32[2,16,16]
              %10 = sigmoid(%7) : f32[2,16,16]
              %11 = add(%8, %9) : f32[2,16,16]
              %12 = mul(%11, %10) : f32[2,16,16]
              %13 = mul(%12, %6) : f32[2,16,16]
              %14 = mse(%13, %13) : f32[]
              return %14 as "loss"
            }
            """

    /// Attention's context P·V is read late (by the output projection's
    /// weight gradient), and the backward pass computes P again anyway (its
    /// own copy of softmax(Q·Kᵀ), written here as rematerialize leaves it)
    /// a little after that read. The copy moves up to the late read, P·V
    /// (2 × 160 = 320 FLOPs per element) is computed again from it there, and
    /// the context is not held across the stretch.
    static let contextReadLate = """
            func @f(%0: f32[1,160,8] input "q", %1: f32[1,160,8] input "k", %2: f32[1,160,8] input "v", %3: f32[1,160,8] input "g") {
              %4 = matmul(%0, %1) {transpose_b=true} : f32[1,160,160]
              %5 = softmax(%4) {axis=-1} : f32[1,160,160]
              %6 = matmul(%5, %2) : f32[1,160,8]
              %7 = tanh(%6) : f32[1,160,8]
              %8 = matmul(%7, %3) {transpose_b=true} : f32[1,160,160]
              %9 = softmax(%8) {axis=-1} : f32[1,160,160]
              %10 = softmax(%9) {axis=1} : f32[1,160,160]
              %11 = matmul(%10, %9) : f32[1,160,160]
              %12 = matmul(%11, %3) : f32[1,160,8]
              %13 = mul(%12, %6) : f32[1,160,8]
              %14 = matmul(%0, %1) {transpose_b=true} : f32[1,160,160]
              %15 = softmax(%14) {axis=-1} : f32[1,160,160]
              %16 = matmul(%15, %13) : f32[1,160,8]
              %17 = mse(%16, %16) : f32[]
              return %17 as "loss"
            }
            """

    func testComputesTheContextAgainFromTheBackwardPassesCopyOfTheProbabilities() throws {
        try checkRecomputed(Self.contextReadLate, checks: """

            // CHECK: %12 = matmul(%11, %3) : f32[1,160,8]
            // CHECK-NEXT: %14 = matmul(%0, %1) {transpose_b=true} : f32[1,160,160]
            // CHECK-NEXT: %15 = softmax(%14) {axis=-1} : f32[1,160,160]
            // CHECK-NEXT: %18 = matmul(%15, %2) : f32[1,160,8]
            // CHECK-NEXT: %13 = mul(%12, %18) : f32[1,160,8]
            // CHECK-NEXT: %16 = matmul(%15, %13) : f32[1,160,8]
            """, peaks: (3 * 102_400 + 5120, 3 * 102_400), why: ("%9, %10, %11 and the context at %11", "the context is not held there"))
        // A product over more tokens (640 FLOPs per element) is beyond
        // `laterCopiesFlopsPerElement`: left as it is.
        var longer = try Parser.parse(Self.contextReadLate.replacingOccurrences(of: "160", with: "320"))
        XCTAssertEqual(try runPasses([Rematerialize.name], on: &longer), [false])
    }

    /// TransUNet.tiny's fine-tuning step at 112 px (196 tokens: P·V is 392
    /// FLOPs per element): every block's context is computed again from the
    /// backward pass's copy of its probabilities, where the output
    /// projection's weight gradient reads it, and is not held across the
    /// turn; every node still computes what a node of the step did.
    func testTransUNetTinyComputesEachContextAgainWhereItsGradientReadsIt() throws {
        let config = EntryConfig(batch: 1, size: 112, classes: 2, entries: [.finetuneStep])
        var module = try buildModule(TransUNet.tiny, config: config)
        try PassManager(Array(PassManager.standardPipeline().prefix { !($0 is Rematerialize) })).run(&module)
        let before = module.functions[0]
        XCTAssertTrue(try Rematerialize().run(&module))
        let after = module.functions[0]
        /// The forward products of probabilities and values (P·V): matmuls reading a softmax.
        func contexts(_ function: Function) -> [Node] {
            let softmaxes = Set(function.nodes.filter { $0.op == "softmax" }.map(\.id))
            return function.nodes.filter { $0.op == "matmul" && softmaxes.contains($0.operands[0]) && $0.attrs["transpose_a"] == nil }
        }
        let blocks = contexts(before).count
        XCTAssertEqual(blocks, 2)
        XCTAssertEqual(contexts(after).count, 2 * blocks, "each context computed once more")
        // Each forward context (and its reshapes) is last read before the first copy of one.
        let schedule = Schedule(after)
        let firstCopy = contexts(after).compactMap { schedule.position[$0.id] }.sorted()[blocks]
        for context in contexts(before) {
            XCTAssertLessThan(schedule.lastUse[context.id] ?? .max, firstCopy, "%\(context.id) is held into the backward pass")
        }
        // Node by node (the interpreter takes half a minute on this step;
        // `testComputesTheContextAgain...` runs it on the pattern).
        try checkCopiesAreOriginals(before, after)
    }

    /// The copies are chosen greedily, so each function is planned with both
    /// chain policies and keeps the lower peak: TransUNet.tiny's steps through
    /// its trained encoder do better recomputing residual blocks' outputs
    /// through their loops, the step through its frozen encoder without.
    func testEachFunctionKeepsTheChainPolicyWithTheLowerPeak() throws {
        let config = EntryConfig(batch: 2, size: 32, classes: 2, entries: [.pretrainStep, .pretrainDepStep])
        var module = try buildModule(TransUNet.tiny, config: config)
        try PassManager(Array(PassManager.standardPipeline().prefix { !($0 is Rematerialize) })).run(&module)
        let before = module
        XCTAssertTrue(try Rematerialize().run(&module))
        var differ = false
        for (old, new) in zip(before.functions, module.functions) {
            let peaks = Rematerialize.ChainPolicy.allCases.map { policy in
                var function = old
                _ = Rematerialize().rematerialize(&function, policy: policy)
                return PlanMemory.liveness(of: function).peak.bytes
            }
            // At most the better policy's first round (later rounds may find more).
            XCTAssertLessThanOrEqual(PlanMemory.liveness(of: new).peak.bytes, peaks.min()!, "@\(old.name): \(peaks)")
            differ = differ || Set(peaks).count > 1
            try checkCopiesAreOriginals(old, new)
        }
        XCTAssertTrue(differ, "the policies should differ somewhere, or this test checks nothing")
    }

    /// UNet.small's training steps at batch 2, 64×64 (at 32×32 the weight
    /// gradients, not the activations, make the peak): the decoder's
    /// concatenations (upsamplings into place and inserts, after fuse-concat)
    /// are recomputed for the backward pass,
    /// the peak drops, and every copy is its original node again (same op,
    /// attributes and type) over the same values, so by induction the step
    /// computes what it did. Inference and its preparer have nothing to recompute.
    func testUNetSmallStepsHoldLessAndComputeTheSame() throws {
        let config = EntryConfig(batch: 2, size: 64, classes: 2, entries: [.infer, .pretrainStep, .pretrainDepStep, .finetuneStep])
        var module = try buildModule(UNet.small, config: config)
        try PassManager(Array(PassManager.standardPipeline().prefix { !($0 is Rematerialize) })).run(&module)
        let before = module
        XCTAssertTrue(try Rematerialize().run(&module))
        for (old, new) in zip(before.functions, module.functions) {
            var planned = (old, new)
            let peakBefore = PlanMemory().plan(&planned.0).lowerBoundBytes
            let peakAfter = PlanMemory().plan(&planned.1).lowerBoundBytes
            if old.updates.isEmpty || old.name.hasPrefix("prepare_") {
                XCTAssertEqual(new, old, "@\(old.name)")
                continue
            }
            // fuse-concat made the concatenations upsamplings into place and inserts.
            XCTAssertGreaterThan(new.count("insert"), old.count("insert"), "@\(old.name)")
            XCTAssertLessThan(Double(peakAfter), 0.9 * Double(peakBefore), "@\(old.name): \(peakBefore) → \(peakAfter) bytes")
            try checkCopiesAreOriginals(old, new)
        }
    }

    /// TransUNet.tiny's fine-tuning step with a budget below what cheap
    /// copies reach: convolutions and matmuls are computed again, the peak
    /// ends below the unbudgeted one, and the step computes what it did.
    func testABudgetTradesKernelsForMemoryInTransUNetTiny() throws {
        let config = EntryConfig(batch: 2, size: 32, classes: 2, entries: [.finetuneStep])
        var module = try buildModule(TransUNet.tiny, config: config)
        try PassManager(Array(PassManager.standardPipeline().prefix { !($0 is Rematerialize) })).run(&module)
        var cheap = module, budgeted = module
        _ = try Rematerialize().run(&cheap)
        XCTAssertTrue(try Rematerialize(memoryBudget: 1).run(&budgeted))
        let (old, withoutBudget, new) = (module.functions[0], cheap.functions[0], budgeted.functions[0])
        func kernels(_ function: Function) -> Int { ["matmul", "conv2d", "fused_conv2d"].map(function.count).reduce(0, +) }
        XCTAssertGreaterThan(kernels(new), kernels(withoutBudget))
        let peaks = [withoutBudget, new].map { PlanMemory.liveness(of: $0).peak.bytes }
        XCTAssertLessThan(peaks[1], peaks[0])
        try checkSameValues(old, new)
    }

    /// Every node of `after` is a node of `before` (same id) or a copy of
    /// one: same op, attributes and type, its operands the original's
    /// operands or copies of them. Values are compared by what they compute:
    /// a node of `before` that computes what an earlier one does (the
    /// backward pass's own copy of attention's probabilities) stands for it.
    func checkCopiesAreOriginals(_ before: Function, _ after: Function, file: StaticString = #filePath, line: UInt = #line) throws {
        let originals = before.nodesByID
        let computes = Rematerialize.canonicalValues(before) // a value of before → the first of before equal to it
        func same(_ value: ValueID) -> ValueID { computes[value] ?? value }
        var sameValue: [ValueID: ValueID] = [:] // a value of after → that of before
        for arg in after.args { sameValue[arg.id] = arg.id }
        for node in after.nodes {
            if let original = originals[node.id] {
                XCTAssertEqual(node.operands.map { sameValue[$0] }, original.operands.map { Optional(same($0)) }, "%\(node.id) reads other values", file: file, line: line)
                sameValue[node.id] = same(node.id)
                continue
            }
            let operands = node.operands.map { sameValue[$0] }
            let match = before.nodes.first { $0.op == node.op && $0.attrs == node.attrs && $0.type == node.type && $0.operands.map { Optional(same($0)) } == operands }
            guard let match else {
                XCTFail("%\(node.id) (\(node.op)) is no copy of a node of the step", file: file, line: line)
                continue
            }
            sameValue[node.id] = same(match.id)
        }
        XCTAssertEqual(after.outputs, before.outputs, file: file, line: line)
        XCTAssertEqual(after.updates, before.updates, file: file, line: line)
    }

    /// rematerialize gives `source` the IR `checks` describes, its peak of
    /// live bytes goes from `peaks.before` to `peaks.after` (`why` says what
    /// is live there), and it computes the same values.
    func checkRecomputed(_ source: String, checks: String, peaks: (before: Int, after: Int), why: (String, String) = ("", ""),
                         file: StaticString = #filePath, line: UInt = #line) throws {
        let after = try checkIR(source + checks, passes: [Rematerialize.name], file: file, line: line)
        var planned = (try Parser.parse(source), after)
        XCTAssertEqual(PlanMemory().plan(&planned.0.functions[0]).lowerBoundBytes, peaks.before, why.0, file: file, line: line)
        XCTAssertEqual(PlanMemory().plan(&planned.1.functions[0]).lowerBoundBytes, peaks.after, why.1, file: file, line: line)
        try checkSameValues(planned.0.functions[0], after.functions[0], file: file, line: line)
    }

    /// The f64 interpreter gives `after` exactly `before`'s outputs.
    func checkSameValues(_ before: Function, _ after: Function, file: StaticString = #filePath, line: UInt = #line) throws {
        let arguments = randomArguments(for: before, seed: 11)
        let expected = try Interpreter.run(before, arguments: arguments), got = try Interpreter.run(after, arguments: arguments)
        for (name, value) in expected.outputs {
            XCTAssertEqual(got.outputs[name]?.data, value.data, "output \(name) changed", file: file, line: line)
        }
        try checkCopiesAreOriginals(before, after, file: file, line: line)
    }
}
