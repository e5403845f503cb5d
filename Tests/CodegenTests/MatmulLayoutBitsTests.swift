import Driver
import IR
import Passes
import TestSupport
import XCTest

/// matmul-layout compiled: attention's products reading their heads out of
/// token-major rows, and writing the context into them, give the very bits
/// of the products on permuted copies (the GEMM packs its operands either
/// way and sums in one order), on both backends.
final class MatmulLayoutBitsTests: XCTestCase {
    /// Two functions of one body; `copied` returns its permutes too, so
    /// matmul-layout leaves them.
    static let source: String = {
        let body = """
              %2 = permute(%0) {perm=[0,2,1,3]} : f32[2,3,40,64]
              %3 = permute(%1) {perm=[0,2,1,3]} : f32[2,3,40,64]
              %4 = matmul(%2, %3) {transpose_b=true} : f32[2,3,40,40]
              %5 = matmul(%4, %3) : f32[2,3,40,64]
              %6 = permute(%5) {perm=[0,2,1,3]} : f32[2,40,3,64]
            """
        let arguments = #"%0: f32[2,40,3,64] input "q", %1: f32[2,40,3,64] input "k""#
        return """
            func @folded(\(arguments)) {
            \(body)
              return %6 as "y"
            }
            func @copied(\(arguments)) {
            \(body)
              return %6 as "y", %2 as "q_heads", %3 as "k_heads", %5 as "context"
            }
            """
    }()

    func testFoldedLayoutsGiveTheBitsOfPermutedCopies() throws {
        let module = try Parser.parse(Self.source)
        var rng = TestRNG(seed: 17)
        let type = TensorType(.f32, [2, 40, 3, 64])
        let inputs = ["q": sampleTensor(type, op: "matmul", operand: 0, rng: &rng),
                      "k": sampleTensor(type, op: "matmul", operand: 1, rng: &rng)]
        let expected = try Interpreter.run(try XCTUnwrap(module["folded"]), arguments: inputs).outputs["y"]!
        var compiled = module
        try PassManager(PassManager.standardPipeline()).run(&compiled)
        XCTAssertEqual(try XCTUnwrap(compiled["folded"]).nodes.filter { $0.op == "permute" }.count, 0, "@folded reads and writes in place")
        XCTAssertEqual(try XCTUnwrap(compiled["copied"]).nodes.filter { $0.op == "permute" }.count, 3)
        for backend in Backend.allCases {
            let executor = try compile(module, backend: backend)
            let got = try executor.run("folded", inputs: inputs)["y"]!
            XCTAssertEqual(got.data, try executor.run("copied", inputs: inputs)["y"]!.data, "\(backend): the same bits")
            XCTAssertLessThanOrEqual(closeness(got.data, expected.data, atol: 1e-4, rtol: 1e-4), 1, "\(backend)")
        }
    }
}
