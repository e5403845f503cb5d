import Foundation
import IR
import XCTest

/// The arithmetic erf that generated loops use, against the exact one.
final class ScalarExprApproximationTests: XCTestCase {
    func testErfApproximationStaysWithinItsStatedError() {
        let approximate = ScalarExpr.unary(.erf, .input(0)).withVectorizableErf
        var worst = 0.0
        for step in -6000...6000 {
            let x = Double(step) / 1000
            worst = max(worst, abs(approximate.evaluate([x]) - Foundation.erf(x)))
        }
        XCTAssertLessThan(worst, 4e-7, "largest error over [-6, 6]")
        XCTAssertTrue(approximate.evaluate([.nan]).isNaN, "NaN stays NaN")
        XCTAssertEqual(approximate.evaluate([50]), 1, accuracy: 1e-7)
        XCTAssertEqual(approximate.evaluate([-50]), -1, accuracy: 1e-7)
    }

    func testOnlyErfIsReplaced() {
        let expr = ScalarExpr.binary(.mul, .unary(.exp, .input(0)), .unary(.tanh, .input(1)))
        XCTAssertEqual(expr.withVectorizableErf, expr)
        let gelu = ScalarExpr.binary(.mul, .input(0), .unary(.erf, .binary(.mul, .input(0), .const(0.7071067811865476))))
        XCTAssertFalse("\(gelu.withVectorizableErf)".contains("erf"))
    }
}
