import Foundation
import IR
import Passes
import TestSupport
import XCTest

/// `select-conv-algorithm`: which convolutions it gives to Winograd in each
/// mode, what the dump shows, and the type rule's refusals of an algorithm
/// that cannot compute a node. (The kernels' numerics: WinogradKernelTests;
/// C and LLVM against the interpreter: the op examples in OpAgreementTests.)
final class ConvAlgorithmTests: XCTestCase {
    /// 4 images of 32×32 make 256 tiles of 4×4, above the threshold; 8 images
    /// of 8×8 make 32 of 4×4 but 128 of 2×2; one 8×8 image makes 4 (or 16);
    /// the strided and 1×1 convolutions are not Winograd's.
    static let source = """
        func @f(%0: f32[4,8,32,32] input "x", %1: f32[8,8,3,3] param "w", %2: f32[1,8,8,8] input "small",
                %3: f32[8,8,1,1] param "pointwise", %4: f32[8,1,1] param "bias", %13: f32[8,8,8,8] input "batch") {
          %5 = conv2d(%0, %1) {pad=[1,1]} : f32[4,8,32,32]
          %6 = conv2d(%2, %1) {pad=[1,1]} : f32[1,8,8,8]
          %7 = conv2d(%0, %1) {pad=[1,1], stride=[2,2]} : f32[4,8,16,16]
          %8 = conv2d(%0, %3) : f32[4,8,32,32]
          %9 = fused_conv2d(%0, %1, %4) {epilogue=add(in0, in1), pad=[1,1]} : f32[4,8,32,32]
          %10 = conv2d_grad_input(%5, %1) {input_shape=[4,8,32,32], pad=[1,1]} : f32[4,8,32,32]
          %11 = conv2d_grad_weight(%0, %5) {pad=[1,1], weight_shape=[8,8,3,3]} : f32[8,8,3,3]
          %12 = conv2d_grad_weight(%2, %6) {pad=[1,1], weight_shape=[8,8,3,3]} : f32[8,8,3,3]
          %14 = conv2d(%13, %1) {pad=[1,1]} : f32[8,8,8,8]
          return %5 as "a", %6 as "b", %7 as "c", %8 as "d", %9 as "e", %10 as "g", %11 as "h", %12 as "i", %14 as "j"
        }
        """

    func testAutoPicksWinogradForStrideOneThreeByThreeWithEnoughTiles() throws {
        _ = try checkIR(Self.source + """

            // CHECK: %5 = conv2d(%0, %1) {algorithm="winograd4", pad=[1,1]}
            // CHECK-NEXT: %6 = conv2d(%2, %1) {pad=[1,1]}
            // CHECK-NEXT: %7 = conv2d(%0, %1) {pad=[1,1], stride=[2,2]}
            // CHECK-NEXT: %8 = conv2d(%0, %3) :
            // CHECK-NEXT: %9 = fused_conv2d(%0, %1, %4) {algorithm="winograd4", epilogue=add(in0, in1), pad=[1,1]}
            // CHECK-NEXT: %10 = conv2d_grad_input(%5, %1) {algorithm="winograd4", input_shape=[4,8,32,32], pad=[1,1]}
            // CHECK-NEXT: %11 = conv2d_grad_weight(%0, %5) {algorithm="winograd4", pad=[1,1], weight_shape=[8,8,3,3]}
            // CHECK-NEXT: %12 = conv2d_grad_weight(%2, %6) {pad=[1,1], weight_shape=[8,8,3,3]}
            // CHECK-NEXT: %14 = conv2d(%13, %1) {algorithm="winograd2", pad=[1,1]}
            """, passes: [SelectConvAlgorithm.name])
    }

    func algorithms(after mode: SelectConvAlgorithm.Mode, on source: String = source) throws -> [String?] {
        var module = try Parser.parse(source)
        _ = try SelectConvAlgorithm(mode: mode).run(&module)
        try Verifier.verify(module)
        return module.functions[0].nodes.map { node in
            if case .string(let name)? = node.attrs[ConvOps.Algorithm.key] { return name }
            return nil
        }
    }

    func testModes() throws {
        let winograd = "winograd4", two = "winograd2"
        XCTAssertEqual(try algorithms(after: .auto), [winograd, nil, nil, nil, winograd, winograd, winograd, nil, two])
        XCTAssertEqual(try algorithms(after: .winograd), [winograd, winograd, nil, nil, winograd, winograd, winograd, winograd, winograd])
        XCTAssertEqual(try algorithms(after: .direct), [nil, nil, nil, nil, nil, nil, nil, nil, nil])
        // A recompiled module keeps its choices under auto and loses them under direct.
        let chosen = Self.source.replacingOccurrences(of: "%6 = conv2d(%2, %1) {pad=[1,1]}",
                                                      with: "%6 = conv2d(%2, %1) {algorithm=\"winograd2\", pad=[1,1]}")
        XCTAssertEqual(try algorithms(after: .auto, on: chosen), [winograd, two, nil, nil, winograd, winograd, winograd, nil, two])
        XCTAssertEqual(try algorithms(after: .direct, on: chosen), [nil, nil, nil, nil, nil, nil, nil, nil, nil])
    }

    /// Filters that prepare-weights transforms once (a weight's, in a
    /// function that updates none) make Winograd pay from 32 tiles: 8 images
    /// of 8×8 get F(4×4), 8 of 4×4 F(2×2) (8 tiles of 4×4 stay too few).
    /// Filters that are an input, a step that updates state, or a pipeline
    /// without prepare-weights keep the per-call thresholds.
    func testPreparedFiltersPayFromFewerTiles() throws {
        func source(updating: Bool) -> String {
            """
            func @f(%0: f32[8,8,8,8] input "x", %1: f32[8,8,3,3] param "w", %2: f32[8,1,1] param "bias",
                    %3: f32[8,8,4,4] input "small", %4: f32[8,8,3,3] input "filters", %5: f32[8] state "s") {
              %6 = fused_conv2d(%0, %1, %2) {epilogue=add(in0, in1), pad=[1,1]} : f32[8,8,8,8]
              %7 = fused_conv2d(%3, %1, %2) {epilogue=add(in0, in1), pad=[1,1]} : f32[8,8,4,4]
              %8 = fused_conv2d(%0, %4, %2) {epilogue=add(in0, in1), pad=[1,1]} : f32[8,8,8,8]
              %9 = conv2d(%3, %1) {pad=[1,1]} : f32[8,8,4,4]
              %10 = add(%5, %5) : f32[8]
              return %6 as "a", %7 as "b", %8 as "c", %9 as "d"
              \(updating ? "update %5 = %10" : "")
            }
            """
        }
        func algorithms(_ source: String, weightsPrepared: Bool) throws -> [String?] {
            var module = try Parser.parse(source)
            _ = try SelectConvAlgorithm(mode: .auto, weightsPrepared: weightsPrepared).run(&module)
            try Verifier.verify(module)
            return module.functions[0].nodes.prefix(4).map { node in
                if case .string(let name)? = node.attrs[ConvOps.Algorithm.key] { return name }
                return nil
            }
        }
        XCTAssertEqual(try algorithms(source(updating: false), weightsPrepared: true), ["winograd4", "winograd2", "winograd2", nil])
        XCTAssertEqual(try algorithms(source(updating: false), weightsPrepared: false), ["winograd2", nil, "winograd2", nil])
        XCTAssertEqual(try algorithms(source(updating: true), weightsPrepared: true), ["winograd2", nil, "winograd2", nil])
    }

    /// A cost table (`ddepc tune`'s) decides each convolution it has
    /// measured, against the tile-count rule either way; the others follow
    /// the rule. A convolution is known by its kernel, shapes, padding and
    /// whether its filters are prepared: %5 and %9 compute the same
    /// forward convolution, %10 its input gradient.
    func testMeasuredCostsDecideTheConvolutionsTheyHave() throws {
        let types = try Parser.parse(Self.source).functions[0].types
        func convolution(_ id: Int) throws -> ConvCostTable.Convolution {
            let node = try XCTUnwrap(try Parser.parse(Self.source).functions[0].nodes.first { $0.id == id })
            return try XCTUnwrap(ConvCostTable.convolution(of: node, operandTypes: node.operands.map { types[$0]! },
                                                           preparedFilters: false))
        }
        XCTAssertEqual(try convolution(5), ConvCostTable.Convolution(kernel: .forward, input: [4, 8, 32, 32], weight: [8, 8, 3, 3],
                                                                      pad: [1, 1], preparedFilters: false))
        XCTAssertEqual(try convolution(9), try convolution(5))
        XCTAssertEqual(try convolution(10).kernel, .gradInput)
        XCTAssertEqual(try convolution(10).input, [4, 8, 32, 32])
        XCTAssertEqual(try convolution(11).kernel, .gradWeight)

        func measured(_ id: Int, _ seconds: [String: Double]) throws -> ConvCostTable.Measurement {
            ConvCostTable.Measurement(convolution: try convolution(id), seconds: seconds)
        }
        let table = ConvCostTable(isa: "avx512", threads: 2, cpu: "test", measurements: [
            // The rule gives these F(4×4); the machine was faster with im2col and F(2×2).
            try measured(5, ["im2col": 1.0, "winograd2": 1.5, "winograd4": 1.2]),
            try measured(10, ["im2col": 2.0, "winograd2": 1.1, "winograd4": 1.3]),
            // One 8×8 image: the rule leaves it to im2col; F(4×4) won here.
            try measured(6, ["im2col": 0.3, "winograd2": 0.25, "winograd4": 0.2]),
            // F(2×2) won by less than the tuner can resolve: the rule's F(4×4) stays.
            try measured(11, ["im2col": 2.0, "winograd2": 1.0, "winograd4": 1.02]),
            // The rule's F(2×2) lost by 5%: im2col.
            try measured(14, ["im2col": 1.0, "winograd2": 1.05, "winograd4": 1.2]),
        ])
        var module = try Parser.parse(Self.source)
        _ = try SelectConvAlgorithm(mode: .auto, costs: table).run(&module)
        try Verifier.verify(module)
        let chosen = module.functions[0].nodes.map { node -> String? in
            if case .string(let name)? = node.attrs[ConvOps.Algorithm.key] { return name }
            return nil
        }
        // %5, %6, %7, %8, %9 (its epilogue is not in the key: %5's measurement), %10, %11, %12 (the rule), %14.
        XCTAssertEqual(chosen, [nil, "winograd4", nil, nil, nil, "winograd2", "winograd4", nil, nil])
        // The rule alone, as before, and as-written keeps what the nodes carry.
        XCTAssertEqual(try algorithms(after: .auto), ["winograd4", nil, nil, nil, "winograd4", "winograd4", "winograd4", nil, "winograd2"])
        XCTAssertEqual(try algorithms(after: .asWritten), [nil, nil, nil, nil, nil, nil, nil, nil, nil])
    }

    func testTheTypeRuleRefusesAnAlgorithmThatCannotComputeTheNode() throws {
        let strided = Self.source.replacingOccurrences(of: "{pad=[1,1], stride=[2,2]}",
                                                       with: "{algorithm=\"winograd2\", pad=[1,1], stride=[2,2]}")
        XCTAssertThrowsError(try Verifier.verify(try Parser.parse(strided))) { error in
            let message = (error as? IRError)?.message ?? "\(error)"
            XCTAssertTrue(message.contains("algorithm=\"winograd2\" computes 3×3 convolutions with stride 1"), message)
            XCTAssertTrue(message.contains("stride [2,2]"), message)
        }
        let unknown = Self.source.replacingOccurrences(of: "%6 = conv2d(%2, %1) {pad=[1,1]}",
                                                       with: "%6 = conv2d(%2, %1) {algorithm=\"fft\", pad=[1,1]}")
        XCTAssertThrowsError(try Verifier.verify(try Parser.parse(unknown))) { error in
            let message = (error as? IRError)?.message ?? "\(error)"
            XCTAssertTrue(message.contains("unknown algorithm \"fft\""), message)
        }
    }
}
