import IR
import Passes
import TestSupport
import XCTest

/// Golden IR tests, MLIR style: each input `.ddir` carries its expected output
/// as `// CHECK:` comments (the parser skips comments). `golden` runs the named
/// passes, verifies and round-trips the result, matches the CHECK lines and —
/// the passes here must not change what a function computes — compares the
/// result with the input in the f64 interpreter on random arguments.
final class GoldenIRTests: XCTestCase {
    /// `tolerance`: relative; folding rounds f32 constants, so it may differ by
    /// f32 rounding from the f64 evaluation of the unfolded input.
    func golden(_ source: String, _ passes: [String], tolerance: Double = 1e-15,
                file: StaticString = #filePath, line: UInt = #line) throws {
        let module = try checkIR(source, passes: passes, file: file, line: line)
        let input = try Parser.parse(source)
        for (before, after) in zip(input.functions, module.functions) {
            let arguments = randomArguments(for: before, seed: 5)
            let expected = try Interpreter.run(before, arguments: arguments)
            let got = try Interpreter.run(after, arguments: arguments)
            XCTAssertEqual(Set(got.outputs.keys), Set(expected.outputs.keys), file: file, line: line)
            for (name, value) in expected.outputs {
                XCTAssertEqual(got.outputs[name]?.type, value.type, "\(name)", file: file, line: line)
                XCTAssertLessThanOrEqual(maxRelativeDifference(got.outputs[name]?.data ?? [], value.data), tolerance,
                                         "output \(name) changed", file: file, line: line)
            }
            XCTAssertEqual(got.updates, expected.updates, "updates changed", file: file, line: line)
        }
    }

    // MARK: - The matcher itself

    func testCheckMatcher() {
        let output = "a = 1\nb = 2\nc = 3\n"
        func run(_ checks: String) -> String? {
            matchDirectives(checkDirectives(in: checks), against: output)
        }
        XCTAssertNil(run("// CHECK: a = 1\n// CHECK-NEXT: b = 2\n// CHECK: 3"))
        XCTAssertNil(run("// CHECK: a\n// CHECK-NOT: x\n// CHECK: c"))
        XCTAssertNotNil(run("// CHECK: b\n// CHECK: a"), "CHECK lines match in order")
        XCTAssertNotNil(run("// CHECK: a\n// CHECK-NEXT: c"), "CHECK-NEXT must be on the next line")
        XCTAssertNotNil(run("// CHECK: a\n// CHECK-NOT: b\n// CHECK: c"), "CHECK-NOT between matches")
        XCTAssertNotNil(run("// CHECK: b\n// CHECK-NOT: c"), "a trailing CHECK-NOT runs to the end")
        XCTAssertNil(run("// CHECK: b\n// CHECK-NOT: a"), "CHECK-NOT looks only after the previous match")
        XCTAssertEqual(checkDirectives(in: "%1 = x  // CHECK-NOT: y").map(\.kind), [.not])
    }

    // MARK: - fold-constants

    func testFoldsScalarConstantChains() throws {
        try golden("""
        func @f(%0: f32[2,3] input "x") {
          %1 = constant() {value=2.0} : f32[]
          %2 = constant() {value=3.0} : f32[]
          %3 = mul(%1, %2) : f32[]
          %4 = add(%3, %1) : f32[]
          %5 = sqrt(%2) : f32[]
          %6 = greater(%1, %2) : f32[]
          %7 = mul(%0, %4) : f32[2,3]
          %8 = sub(%7, %5) : f32[2,3]
          %9 = add(%8, %6) : f32[2,3]
          return %9 as "y"
        }
        // CHECK:      %3 = constant() {value=6.0} : f32[]
        // CHECK-NEXT: %4 = constant() {value=8.0} : f32[]
        // f32 rounding of √3:
        // CHECK-NEXT: %5 = constant() {value=1.7320507764816284} : f32[]
        // CHECK-NEXT: %6 = constant() {value=0.0} : f32[]
        // CHECK-NEXT: %7 = mul(%0, %4) : f32[2,3]
        // CHECK-NEXT: %8 = sub(%7, %5) : f32[2,3]
        """, [FoldConstants.name], tolerance: 1e-7)
    }

    func testFoldRoundsToTheResultPrecision() throws {
        // 0.1 + 0.2 in f32 is not 0.30000000000000004; in f64 it is, and the folded
        // constant keeps its f64 type.
        try golden("""
        func @f(%0: f32[2] input "x", %1: f64[2] input "y") {
          %2 = constant() {value=0.1} : f32[]
          %3 = constant() {value=0.2} : f32[]
          %4 = add(%2, %3) : f32[]
          %5 = mul(%0, %4) : f32[2]
          %6 = constant() {dtype="f64", value=0.1} : f64[]
          %7 = constant() {dtype="f64", value=0.2} : f64[]
          %8 = add(%6, %7) : f64[]
          %9 = mul(%1, %8) : f64[2]
          return %5 as "a", %9 as "b"
        }
        // CHECK: %4 = constant() {value=0.30000001192092896} : f32[]
        // CHECK: %8 = constant() {dtype="f64", value=0.30000000000000004} : f64[]
        """, [FoldConstants.name], tolerance: 1e-7)
    }

    func testRemovesIdentities() throws {
        try golden("""
        func @f(%0: f32[2,3] input "x") {
          %1 = constant() {value=1.0} : f32[]
          %2 = constant() {value=0.0} : f32[]
          %3 = mul(%0, %1) : f32[2,3]
          %4 = mul(%1, %3) : f32[2,3]
          %5 = add(%4, %2) : f32[2,3]
          %6 = add(%2, %5) : f32[2,3]
          %7 = sub(%6, %2) : f32[2,3]
          %8 = div(%7, %1) : f32[2,3]
          %9 = reshape(%8) {shape=[2,3]} : f32[2,3]
          %10 = broadcast_to(%9) {shape=[2,3]} : f32[2,3]
          %11 = exp(%10) : f32[2,3]
          return %11 as "y", %8 as "z"
        }
        // CHECK-NOT: mul(
        // CHECK-NOT: add(
        // CHECK-NOT: sub(
        // CHECK-NOT: div(
        // CHECK-NOT: reshape(
        // CHECK-NOT: broadcast_to(
        // CHECK: %11 = exp(%0) : f32[2,3]
        // CHECK-NEXT: return %11 as "y", %0 as "z"
        """, [FoldConstants.name, DCE.name], tolerance: 1e-7)
    }

    func testKeepsIdentitiesThatBroadcast() throws {
        // x·1 and x+0 where the "1"/"0" is wider than x are broadcasts, not
        // identities; 0−x is not x; reshapes and broadcasts that change the shape stay.
        try golden("""
        func @f(%0: f32[3] input "x") {
          %1 = constant() {shape=[2,3], value=1.0} : f32[2,3]
          %2 = mul(%0, %1) : f32[2,3]
          %3 = constant() {shape=[4,1], value=0.0} : f32[4,1]
          %4 = add(%3, %0) : f32[4,3]
          %5 = constant() {value=0.0} : f32[]
          %6 = sub(%5, %0) : f32[3]
          %7 = reshape(%0) {shape=[3,1]} : f32[3,1]
          %8 = broadcast_to(%0) {shape=[2,3]} : f32[2,3]
          return %2 as "a", %4 as "b", %6 as "c", %7 as "d", %8 as "e"
        }
        // CHECK: %2 = mul(%0, %1) : f32[2,3]
        // CHECK: %4 = add(%3, %0) : f32[4,3]
        // CHECK: %6 = sub(%5, %0) : f32[3]
        // CHECK: %7 = reshape(%0) {shape=[3,1]} : f32[3,1]
        // CHECK: %8 = broadcast_to(%0) {shape=[2,3]} : f32[2,3]
        // CHECK: return %2 as "a", %4 as "b", %6 as "c", %7 as "d", %8 as "e"
        """, [FoldConstants.name, DCE.name], tolerance: 1e-7)
    }

    func testFoldingReachesUpdates() throws {
        try golden("""
        func @f(%0: f32[3] param "w", %1: f32[3] state "s") {
          %2 = constant() {value=1.0} : f32[]
          %3 = mul(%1, %2) : f32[3]
          %4 = constant() {value=0.5} : f32[]
          %5 = mul(%0, %4) : f32[3]
          update %0 = %5
          update %1 = %3
        }
        // CHECK: %5 = mul(%0, %4)
        // CHECK: update %0 = %5
        // CHECK-NEXT: update %1 = %1
        """, [FoldConstants.name], tolerance: 1e-7)
    }

    // MARK: - cse

    func testCSEMergesDuplicatesTransitively() throws {
        try golden("""
        func @f(%0: f32[2,3] input "x", %1: f32[2,3] input "y", %2: i64[] input "seed") {
          %3 = add(%0, %1) : f32[2,3]
          %4 = add(%0, %1) : f32[2,3] loc("m.swift":9)
          %5 = exp(%3) : f32[2,3]
          %6 = exp(%4) : f32[2,3]
          %7 = mul(%5, %6) : f32[2,3]
          %8 = random_normal(%2) {shape=[2,3]} : f32[2,3]
          %9 = random_normal(%2) {shape=[2,3]} : f32[2,3]
          %10 = sub(%8, %9) : f32[2,3]
          return %7 as "a", %6 as "b", %10 as "c"
        }
        // CHECK:      %3 = add(%0, %1) : f32[2,3]
        // CHECK-NEXT: %5 = exp(%3) : f32[2,3]
        // CHECK-NEXT: %7 = mul(%5, %5) : f32[2,3]
        // CHECK-NEXT: %8 = random_normal(%2)
        // CHECK-NEXT: %10 = sub(%8, %8)
        // CHECK-NEXT: return %7 as "a", %5 as "b", %10 as "c"
        """, [CSE.name])
    }

    func testCSEKeepsDifferentNodes() throws {
        // Different attributes, operand order, operands or result types are different values.
        try golden("""
        func @f(%0: f32[2,3] input "x", %1: f32[2,3] input "y", %2: i64[] input "seed", %3: i64[] input "seed2") {
          %4 = reduce_sum(%0) {axes=[0]} : f32[3]
          %5 = reduce_sum(%0) {axes=[1]} : f32[2]
          %6 = reduce_sum(%0) {axes=[0], keepdims=true} : f32[1,3]
          %7 = reduce_mean(%0) {axes=[0]} : f32[3]
          %8 = sub(%0, %1) : f32[2,3]
          %9 = sub(%1, %0) : f32[2,3]
          %10 = constant() {value=1.0} : f32[]
          %11 = constant() {value=2.0} : f32[]
          %12 = constant() {dtype="f64", value=1.0} : f64[]
          %13 = random_normal(%2) {shape=[2,3]} : f32[2,3]
          %14 = random_normal(%3) {shape=[2,3]} : f32[2,3]
          %15 = reshape(%4) {shape=[3,1]} : f32[3,1]
          %16 = reshape(%4) {shape=[1,3]} : f32[1,3]
          return %4 as "a", %5 as "b", %6 as "c", %7 as "d", %8 as "e", %9 as "f", %10 as "g", %11 as "h", %12 as "i", %13 as "j", %14 as "k", %15 as "l", %16 as "m"
        }
        // CHECK: %4 = reduce_sum
        // CHECK-NEXT: %5 = reduce_sum
        // CHECK-NEXT: %6 = reduce_sum
        // CHECK-NEXT: %7 = reduce_mean
        // CHECK-NEXT: %8 = sub(%0, %1)
        // CHECK-NEXT: %9 = sub(%1, %0)
        // CHECK-NEXT: %10 = constant
        // CHECK-NEXT: %11 = constant
        // CHECK-NEXT: %12 = constant
        // CHECK-NEXT: %13 = random_normal(%2)
        // CHECK-NEXT: %14 = random_normal(%3)
        // CHECK-NEXT: %15 = reshape
        // CHECK-NEXT: %16 = reshape
        // CHECK-NEXT: return %4 as "a", %5 as "b", %6 as "c", %7 as "d", %8 as "e", %9 as "f", %10 as "g", %11 as "h", %12 as "i", %13 as "j", %14 as "k", %15 as "l", %16 as "m"
        """, [CSE.name])
    }

    // MARK: - dce

    func testDCERemovesDeadNodesAndKeepsUpdates() throws {
        try golden("""
        func @f(%0: f32[3] input "x", %1: f32[3] param "w", %2: f32[3] state "s", %3: f32[3] input "unused") {
          %4 = mul(%0, %1) : f32[3]
          %5 = exp(%4) : f32[3]
          %6 = add(%4, %2) : f32[3]
          %7 = tanh(%0) : f32[3]
          %8 = neg(%7) : f32[3]
          %9 = sub(%1, %6) : f32[3]
          return %4 as "y"
          update %2 = %6
          update %1 = %9
        }
        // Arguments are the calling convention: never removed.
        // CHECK: %3: f32[3] input "unused"
        // CHECK: %4 = mul(%0, %1)
        // CHECK-NOT: exp(
        // CHECK-NEXT: %6 = add(%4, %2)
        // CHECK-NOT: tanh(
        // CHECK-NOT: neg(
        // CHECK-NEXT: %9 = sub(%1, %6)
        // CHECK-NEXT: return %4 as "y"
        // CHECK-NEXT: update %2 = %6
        // CHECK-NEXT: update %1 = %9
        """, [DCE.name])
        var module = try Parser.parse("func @f(%0: f32[3] input \"x\") {\n  %1 = exp(%0) : f32[3]\n  return %1 as \"y\"\n}\n")
        XCTAssertEqual(try runPasses([DCE.name], on: &module), [false], "nothing dead: unchanged")
    }

    // MARK: - fuse-elementwise

    func testFusesAChainIntoOneNode() throws {
        try golden("""
        func @f(%0: f32[2,3] input "x", %1: f32[2,3] input "y") {
          %2 = mul(%0, %1) : f32[2,3]
          %3 = constant() {value=0.5} : f32[]
          %4 = add(%2, %3) : f32[2,3] loc("m.swift":3)
          %5 = tanh(%4) : f32[2,3]
          %6 = sub(%5, %0) : f32[2,3] loc("m.swift":5)
          return %6 as "z"
        }
        // CHECK-NOT: mul(
        // CHECK-NOT: tanh(
        // CHECK: %6 = fused_elementwise(%0, %1) {expr=sub(tanh(add(mul(in0, in1), 0.5)), in0)} : f32[2,3] loc("m.swift":5)
        // CHECK-NEXT: return %6 as "z"
        """, [FuseElementwise.name, DCE.name])
    }

    func testDoesNotFuseAProducerWithTwoUsersOrAnOutput() throws {
        try golden("""
        func @f(%0: f32[2,3] input "x", %1: f32[2,3] input "y") {
          %2 = exp(%0) : f32[2,3]
          %3 = add(%2, %1) : f32[2,3]
          %4 = mul(%2, %1) : f32[2,3]
          %5 = sub(%3, %4) : f32[2,3]
          %6 = neg(%0) : f32[2,3]
          %7 = relu(%6) : f32[2,3]
          return %5 as "a", %6 as "b", %7 as "c"
        }
        // exp has two users: computed once, not duplicated into both.
        // CHECK: %2 = exp(%0) : f32[2,3]
        // CHECK-NEXT: %5 = fused_elementwise(%2, %1) {expr=sub(add(in0, in1), mul(in0, in1))} : f32[2,3]
        // neg is an output: it stays, and relu reads it.
        // CHECK-NEXT: %6 = neg(%0) : f32[2,3]
        // CHECK-NEXT: %7 = relu(%6) : f32[2,3]
        // CHECK-NOT: exp(
        """, [FuseElementwise.name, DCE.name])
    }

    func testDoesNotInlineAProducerItsConsumerReadsTwice() throws {
        // %3 is already one loop that reads %2 twice: inlining exp would compute
        // it twice per element (and a second compile of the dump would do it).
        try golden("""
        func @f(%0: f32[2,3] input "x", %1: f32[2,3] input "y") {
          %2 = exp(%0) : f32[2,3]
          %3 = fused_elementwise(%2, %1) {expr=sub(add(in0, in1), mul(in0, in1))} : f32[2,3]
          return %3 as "a"
        }
        // CHECK: %2 = exp(%0) : f32[2,3]
        // CHECK-NEXT: %3 = fused_elementwise(%2, %1) {expr=sub(add(in0, in1), mul(in0, in1))} : f32[2,3]
        """, [FuseElementwise.name, DCE.name])
    }

    func testInlinesACheapProducerItsConsumerReadsTwice() throws {
        // A bias add before GELU (which reads its input twice): one more add per
        // element is cheaper than a loop of its own.
        try golden("""
        func @f(%0: f32[2,3] input "x", %1: f32[2,3] input "b") {
          %2 = add(%0, %1) : f32[2,3]
          %3 = gelu(%2) : f32[2,3]
          return %3 as "y"
        }
        // CHECK: %3 = fused_elementwise(%0, %1) {expr=mul(add(in0, in1), mul(0.5, add(1.0, erf(mul(add(in0, in1), 0.7071067811865475)))))} : f32[2,3]
        // CHECK-NOT: add(%0, %1)
        """, [FuseElementwise.name, DCE.name])
    }

    func testDoesNotInlineASmallerBroadcastProducer() throws {
        // A per-channel [1,C,1,1] product inlined into the [N,C,H,W] add would be
        // recomputed N·H·W times per channel.
        try golden("""
        func @f(%0: f32[2,4,3,3] input "x", %1: f32[1,4,1,1] input "s", %2: f32[1,4,1,1] input "t") {
          %3 = mul(%1, %2) : f32[1,4,1,1]
          %4 = add(%0, %3) : f32[2,4,3,3]
          %5 = relu(%4) : f32[2,4,3,3]
          return %5 as "y"
        }
        // CHECK: %3 = mul(%1, %2) : f32[1,4,1,1]
        // CHECK-NEXT: %5 = fused_elementwise(%0, %3) {expr=max(add(in0, in1), 0.0)} : f32[2,4,3,3]
        """, [FuseElementwise.name, DCE.name])
    }

    func testFusesBroadcastToAndKeepsTheWideShape() throws {
        try golden("""
        func @f(%0: f32[4] input "b", %1: f32[2,1] input "c") {
          %2 = broadcast_to(%0) {shape=[2,4]} : f32[2,4]
          %3 = exp(%2) : f32[2,4]
          %4 = broadcast_to(%1) {shape=[3,2,4]} : f32[3,2,4]
          %5 = mul(%4, %3) : f32[3,2,4]
          return %3 as "y", %5 as "z"
        }
        // Every operand is narrower than the result: the fused node carries shape=.
        // CHECK: %3 = fused_elementwise(%0) {expr=exp(in0), shape=[2,4]} : f32[2,4]
        // CHECK-NEXT: %5 = fused_elementwise(%1, %3) {expr=mul(in0, in1), shape=[3,2,4]} : f32[3,2,4]
        // CHECK-NOT: broadcast_to(
        """, [FuseElementwise.name, DCE.name])
    }

    func testFusesAroundAllConstantNodes() throws {
        // A broadcast of a constant has no tensor operand left once the constant
        // is inlined; it must stay a valid node (or be absorbed by its user).
        try golden("""
        func @f(%0: f32[2,3] input "x") {
          %1 = constant() {value=2.0} : f32[]
          %2 = broadcast_to(%1) {shape=[2,3]} : f32[2,3]
          %3 = mul(%0, %2) : f32[2,3]
          %4 = broadcast_to(%1) {shape=[3]} : f32[3]
          %5 = add(%1, %1) : f32[]
          return %3 as "y", %4 as "z", %5 as "w"
        }
        // CHECK: %3 = fused_elementwise(%0) {expr=mul(in0, 2.0)} : f32[2,3]
        // CHECK-NEXT: %4 = broadcast_to(%1) {shape=[3]} : f32[3]
        // CHECK-NEXT: %5 = add(%1, %1) : f32[]
        """, [FuseElementwise.name, DCE.name])
    }

    func testLongChainsAreSplitAtTheOperandLimit() throws {
        // Σ of 66 inputs as a chain of adds (as the optimizer's global gradient
        // norm sums one term per parameter): a fused node takes at most 64 operands.
        let inputs = (0..<66).map { "%\($0): f32[2] input \"x\($0)\"" }.joined(separator: ", ")
        var text = "func @f(\(inputs)) {\n  %66 = add(%0, %1) : f32[2]\n"
        for k in 2..<66 { text += "  %\(65 + k) = add(%\(64 + k), %\(k)) : f32[2]\n" }
        text += "  return %130 as \"y\"\n}\n"
        let first64 = (0..<64).map { "%\($0)" }.joined(separator: ", ")
        text += """
        // CHECK: %128 = fused_elementwise(\(first64)) {expr=
        // CHECK-NEXT: %130 = fused_elementwise(%128, %64, %65) {expr=add(add(in0, in1), in2)} : f32[2]
        // CHECK-NEXT: return %130 as "y"
        """
        try golden(text, [FuseElementwise.name, DCE.name])
    }

    func testFusionIsIdempotent() throws {
        var module = try Parser.parse("""
        func @f(%0: f32[2,3] input "x") {
          %1 = exp(%0) : f32[2,3]
          %2 = neg(%1) : f32[2,3]
          return %2 as "y"
        }
        """)
        XCTAssertEqual(try runPasses([FuseElementwise.name, DCE.name], on: &module), [true, false])
        let once = module
        XCTAssertEqual(try runPasses([FuseElementwise.name, DCE.name], on: &module), [false, false])
        XCTAssertEqual(module, once)
    }

    // MARK: - infer-shapes

    func testInferShapesRepairsHandWrittenTypes() throws {
        let source = """
        func @f(%0: f32[2,3] input "x", %1: f32[3] input "b") {
          %2 = add(%0, %1) : f32[3]
          %3 = reduce_sum(%2) {axes=[1]} : f32[7]
          %4 = reshape(%3) {shape=[1,2]} : f32[2]
          return %4 as "y"
        }
        // CHECK: %2 = add(%0, %1) : f32[2,3]
        // CHECK-NEXT: %3 = reduce_sum(%2) {axes=[1]} : f32[2]
        // CHECK-NEXT: %4 = reshape(%3) {shape=[1,2]} : f32[1,2]
        """
        XCTAssertThrowsError(try Verifier.verify(Parser.parse(source)), "the input is wrongly typed")
        try checkIR(source, passes: [InferShapes.name])
        var module = try Parser.parse(source)
        XCTAssertEqual(try runPasses([InferShapes.name, InferShapes.name], on: &module), [true, false])
    }

    func testInferShapesReportsTheNodeAndItsLine() throws {
        var module = try Parser.parse("""
        func @f(%0: f32[2,3] input "x", %1: f32[4] input "b") {
          %2 = exp(%0) : f32[2,3]
          %3 = add(%2, %1) : f32[2,3] loc("model.swift":12)
          return %3 as "y"
        }
        """)
        XCTAssertThrowsError(try InferShapes().run(&module)) { error in
            let error = error as! IRError
            XCTAssertEqual(error.loc, SourceLoc(file: "model.swift", line: 12))
            XCTAssertTrue(error.message.contains("add(f32[2,3], f32[4])"), error.message)
            XCTAssertTrue("\(error)".hasPrefix("model.swift:12: error: "), "\(error)")
        }
    }

    func testInferShapesRejectsUseBeforeDefinitionWithoutCrashing() throws {
        // As with --no-verify: infer-shapes is the first thing to see the input.
        var module = try Parser.parse("""
        func @f(%0: f32[3] input "x") {
          %1 = add(%0, %2) : f32[3] loc("model.swift":4)
          %2 = exp(%0) : f32[3]
          return %1 as "y"
        }
        """)
        XCTAssertThrowsError(try InferShapes().run(&module)) { error in
            XCTAssertTrue("\(error)".contains("%2"), "\(error)")
            XCTAssertEqual((error as? IRError)?.loc, SourceLoc(file: "model.swift", line: 4))
        }
    }
}
