import Foundation
import IR
import Runtime
import Driver
import XCTest

/// Generated loops compute exp, sigmoid and GELU's erf as plain arithmetic
/// (so they vectorize): over their whole useful range, against the exact
/// functions, and the two backends bit for bit (the same operations).
final class TranscendentalLoopTests: XCTestCase {
    func testExpSigmoidAndGELULoopsAreAccurateAndAgreeAcrossBackends() throws {
        let count = 4001
        let b = FunctionBuilder(name: "f")
        let x = b.argument("x", .f32([count]), role: .input)
        b.output(try b.unary("exp", x), name: "exp")
        b.output(try b.unary("sigmoid", x), name: "sigmoid")
        let small = try b.mul(x, try b.constant(0.05))
        b.output(try b.emit("gelu", [small]), name: "gelu")
        b.output(try b.emit("gelu_grad", [small, try b.constant(1, like: small)]), name: "gelu_grad")
        let module = Module(functions: [b.function])
        // x from -87 to 88 (exp's float range), as floats.
        let inputs = (0..<count).map { Double(Float(-87 + 175 * Double($0) / Double(count - 1))) }
        var results: [Backend: [String: HostTensor]] = [:]
        for backend in Backend.allCases {
            results[backend] = try compile(module, backend: backend).run("f", inputs: ["x": HostTensor(.f32([count]), inputs)])
        }
        let c = try XCTUnwrap(results[.c]), llvm = try XCTUnwrap(results[.llvm])
        for name in ["exp", "sigmoid", "gelu", "gelu_grad"] {
            XCTAssertEqual(c[name]!.data, llvm[name]!.data, "\(name): the C and LLVM loops differ")
        }
        for (i, v) in inputs.enumerated() {
            let e = Foundation.exp(v)
            XCTAssertEqual(c["exp"]!.data[i], e, accuracy: 2.5e-7 * e, "exp(\(v))")
            let s = 1 / (1 + Foundation.exp(-v))
            XCTAssertEqual(c["sigmoid"]!.data[i], s, accuracy: 5e-7 * s + 1e-37, "sigmoid(\(v))")
            // GELU's inputs span [-4.4, 4.4], past erf's ±4 clamp.
            let z = Double(Float(v) * 0.05), phi = 0.5 * (1 + Foundation.erf(z / 2.0.squareRoot()))
            XCTAssertEqual(c["gelu"]!.data[i], z * phi, accuracy: 5e-7 * max(abs(z), 1), "gelu(\(z))")
            let density = Foundation.exp(-z * z / 2) / (2 * Double.pi).squareRoot()
            XCTAssertEqual(c["gelu_grad"]!.data[i], phi + z * density, accuracy: 1e-6, "gelu_grad(\(z))")
        }
    }

    /// maximum, minimum and relu are compares and selects in both backends
    /// (so they vectorize under GCC too) with fmaxf's and fminf's rules: a
    /// NaN operand yields the other operand, and ties keep the first.
    func testMaximumAndMinimumLoopsFollowFmaxfAndAgreeAcrossBackends() throws {
        let specials: [Double] = [.nan, -0.0, 0.0, -.infinity, .infinity, 1, -1, 2.5]
        let pairs = specials.flatMap { a in specials.map { (a, $0) } }
        let b = FunctionBuilder(name: "f")
        let x = b.argument("x", .f32([pairs.count]), role: .input), y = b.argument("y", .f32([pairs.count]), role: .input)
        b.output(try b.emit("maximum", [x, y]), name: "maximum")
        b.output(try b.emit("minimum", [x, y]), name: "minimum")
        b.output(try b.emit("relu", [x]), name: "relu")
        let module = Module(functions: [b.function])
        let inputs = ["x": HostTensor(.f32([pairs.count]), pairs.map(\.0)), "y": HostTensor(.f32([pairs.count]), pairs.map(\.1))]
        var results: [Backend: [String: HostTensor]] = [:]
        for backend in Backend.allCases { results[backend] = try compile(module, backend: backend).run("f", inputs: inputs) }
        func fmax(_ a: Double, _ b: Double) -> Double { a.isNaN ? b : (a >= b || b.isNaN) ? a : b }
        func fmin(_ a: Double, _ b: Double) -> Double { a.isNaN ? b : (a <= b || b.isNaN) ? a : b }
        for backend in Backend.allCases {
            let got = try XCTUnwrap(results[backend])
            for (i, (a, b)) in pairs.enumerated() {
                for (name, want) in [("maximum", fmax(a, b)), ("minimum", fmin(a, b)), ("relu", fmax(a, 0))] {
                    let value = got[name]!.data[i]
                    XCTAssertTrue(value.bitPattern == want.bitPattern || (value.isNaN && want.isNaN),
                                  "\(backend) \(name)(\(a), \(b)) is \(value), not \(want)")
                }
            }
        }
    }
}
