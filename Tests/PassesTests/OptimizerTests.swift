import Foundation
import IR
import Passes
import TestSupport
import XCTest

/// The optimizer pass lowers `grad:` outputs to an in-graph AdamW step. Checked
/// by hand against PyTorch's AdamW (decoupled weight decay, bias corrections
/// passed in as bc1 = 1/(1−β₁ᵗ), bc2 = 1/(1−β₂ᵗ)):
///
///     m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²
///     p ← p − lr·bc1·m/(√(bc2·v) + ε) − lr·wd·p
final class OptimizerTests: XCTestCase {
    /// loss = mse(w·x, y) with a per-element weight w and a scalar weight s.
    static let source = """
    func @f(%0: f32[4] input "x", %1: f32[4] input "y", %2: f32[4] param "w" init=ones, %3: f32[] param "s" init=zeros, %4: f32[4] frozen "k") {
      %5 = mul(%2, %0) : f32[4]
      %6 = add(%5, %3) : f32[4]
      %7 = mul(%6, %4) : f32[4]
      %8 = mse(%7, %1) : f32[]
      return %8 as "loss"
    }
    """

    func step() throws -> Function {
        var module = try Parser.parse(Self.source)
        try runPasses([Autodiff.name, AdamOptimizer.name], on: &module)
        return module.functions[0]
    }

    func testStateArgumentsAndSignature() throws {
        let step = try step()
        let input = try Parser.parse(Self.source).functions[0]
        XCTAssertEqual(Array(step.args.prefix(input.args.count)), input.args, "existing arguments are kept, in order")
        for name in AdamOptimizer.inputNames {
            let arg = try XCTUnwrap(step.argument(named: name), name)
            XCTAssertEqual(arg.role, .input)
            XCTAssertEqual(arg.type, .f32([]))
        }
        for param in ["w", "s"] {
            let p = try XCTUnwrap(step.argument(named: param))
            for moment in ["opt.m.", "opt.v."] {
                let arg = try XCTUnwrap(step.argument(named: moment + param), moment + param)
                XCTAssertEqual(arg.role, .state)
                XCTAssertEqual(arg.type, p.type)
                XCTAssertEqual(arg.initRule, .zeros)
            }
        }
        XCTAssertNil(step.argument(named: "opt.m.k"), "frozen weights get no optimizer state")
        XCTAssertNil(step.argument(named: "opt.m.x"))
        XCTAssertEqual(step.outputs.first?.name, "loss")
        XCTAssertFalse(step.outputs.contains { $0.name.hasPrefix(Autodiff.gradientPrefix) }, "grad: outputs become updates")
        let argName = Dictionary(uniqueKeysWithValues: step.args.map { ($0.id, $0.name) })
        XCTAssertEqual(Set(step.updates.map { argName[$0.target]! }), ["w", "s", "opt.m.w", "opt.v.w", "opt.m.s", "opt.v.s"])
        // The state survives the printer and parser (the artifact's final.ddir).
        XCTAssertEqual(try Parser.parse(Printer.print(step)).functions[0], step)
        var again = Module(functions: [step])
        XCTAssertEqual(try runPasses([AdamOptimizer.name], on: &again), [false], "nothing left to lower")
    }

    func testTwoAdamWStepsMatchPyTorchsFormula() throws {
        let step = try step()
        let (beta1, beta2, eps) = (0.9, 0.999, 1e-8)
        let lr = 0.01, wd = 0.1
        var arguments: [String: HostTensor] = [
            "x": HostTensor(.f32([4]), [0.5, -1.5, 2, 0.25]),
            "y": HostTensor(.f32([4]), [1, 0.5, -2, 3]),
            "w": HostTensor(.f32([4]), [0.3, -0.7, 1.1, 0.9]),
            "s": HostTensor(scalar: 0.2),
            "k": HostTensor(.f32([4]), [1, 2, -1, 0.5]),
            "lr": HostTensor(scalar: lr), "weight_decay": HostTensor(scalar: wd),
            "opt.m.w": HostTensor(zeros: .f32([4])), "opt.v.w": HostTensor(zeros: .f32([4])),
            "opt.m.s": HostTensor(zeros: .f32([])), "opt.v.s": HostTensor(zeros: .f32([])),
        ]
        // Any other optimizer input (gradient clipping, L2) off: 0 disables it.
        for name in AdamOptimizer.inputNames where arguments[name] == nil { arguments[name] = HostTensor(scalar: 0) }
        // The reference: gradients by hand, then AdamW.
        var w = arguments["w"]!.data, s = arguments["s"]!.scalar
        var mw = [Double](repeating: 0, count: 4), vw = mw, ms = 0.0, vs = 0.0
        let x = arguments["x"]!.data, y = arguments["y"]!.data, k = arguments["k"]!.data
        for t in 1...2 {
            let bc1 = 1 / (1 - pow(beta1, Double(t))), bc2 = 1 / (1 - pow(beta2, Double(t)))
            arguments["bc1"] = HostTensor(scalar: bc1)
            arguments["bc2"] = HostTensor(scalar: bc2)
            let result = try Interpreter.run(step, arguments: arguments)

            // loss = mean((k(wx + s) − y)²): ∂w_i = 2/n·r_i·k_i·x_i, ∂s = 2/n·Σ r_i·k_i
            let r = (0..<4).map { k[$0] * (w[$0] * x[$0] + s) - y[$0] }
            XCTAssertEqual(result.outputs["loss"]!.scalar, r.map { $0 * $0 }.reduce(0, +) / 4, accuracy: 1e-12)
            let gw = (0..<4).map { 0.5 * r[$0] * k[$0] * x[$0] }
            let gs = (0..<4).map { 0.5 * r[$0] * k[$0] }.reduce(0, +)
            func adam(_ p: Double, _ g: Double, _ m: inout Double, _ v: inout Double) -> Double {
                m = beta1 * m + (1 - beta1) * g
                v = beta2 * v + (1 - beta2) * g * g
                return p - lr * bc1 * m / ((bc2 * v).squareRoot() + eps) - lr * wd * p
            }
            if t == 1 {
                // From zero moments: m = 0.1·g, v = 0.001·g².
                XCTAssertEqual(result.updates["opt.m.w"]!.data[0], 0.1 * gw[0], accuracy: 1e-15)
                XCTAssertEqual(result.updates["opt.v.w"]!.data[0], 0.001 * gw[0] * gw[0], accuracy: 1e-15)
            }
            for i in 0..<4 { w[i] = adam(w[i], gw[i], &mw[i], &vw[i]) }
            s = adam(s, gs, &ms, &vs)

            XCTAssertLessThanOrEqual(maxRelativeDifference(result.updates["w"]!.data, w), 1e-12, "step \(t): w \(result.updates["w"]!.data) vs \(w)")
            XCTAssertLessThanOrEqual(maxRelativeDifference(result.updates["opt.m.w"]!.data, mw), 1e-12, "step \(t): m")
            XCTAssertLessThanOrEqual(maxRelativeDifference(result.updates["opt.v.w"]!.data, vw), 1e-12, "step \(t): v")
            XCTAssertEqual(result.updates["s"]!.scalar, s, accuracy: 1e-12 * abs(s))
            XCTAssertEqual(result.updates["opt.m.s"]!.scalar, ms, accuracy: 1e-12 * abs(ms))
            XCTAssertEqual(result.updates["opt.v.s"]!.scalar, vs, accuracy: 1e-12 * abs(vs))
            XCTAssertNil(result.updates["k"], "frozen weights are not updated")
            for (name, value) in result.updates { arguments[name] = value }
        }
    }

    func testWeightDecayAloneShrinksTheWeights() throws {
        // With a zero gradient (y = prediction), the step is p ← p − lr·wd·p.
        let step = try step()
        var arguments = randomArguments(for: step, seed: 9)
        arguments["opt.m.w"] = HostTensor(zeros: .f32([4]))
        arguments["opt.v.w"] = HostTensor(zeros: .f32([4]))
        arguments["opt.m.s"] = HostTensor(zeros: .f32([]))
        arguments["opt.v.s"] = HostTensor(zeros: .f32([]))
        let w = arguments["w"]!.data, x = arguments["x"]!.data, s = arguments["s"]!.scalar, k = arguments["k"]!.data
        arguments["y"] = HostTensor(.f32([4]), (0..<4).map { k[$0] * (w[$0] * x[$0] + s) })
        for name in AdamOptimizer.inputNames { arguments[name] = HostTensor(scalar: 0) }
        arguments["bc1"] = HostTensor(scalar: 10)
        arguments["bc2"] = HostTensor(scalar: 1000)
        arguments["lr"] = HostTensor(scalar: 0.5)
        arguments["weight_decay"] = HostTensor(scalar: 0.2)
        let result = try Interpreter.run(step, arguments: arguments)
        XCTAssertEqual(result.outputs["loss"]!.scalar, 0, accuracy: 1e-30)
        XCTAssertLessThanOrEqual(maxRelativeDifference(result.updates["w"]!.data, w.map { $0 * 0.9 }), 1e-15)
        XCTAssertEqual(result.updates["opt.v.w"]!.data, [0, 0, 0, 0])
    }

    func testBetasAndEpsilonAreConfigurable() throws {
        var module = try Parser.parse(Self.source)
        _ = try Autodiff().run(&module)
        _ = try AdamOptimizer(beta1: 0.5, beta2: 0.75, epsilon: 1e-3).run(&module)
        try Verifier.verify(module)
        var arguments = randomArguments(for: module.functions[0], seed: 2)
        arguments["opt.m.s"] = HostTensor(scalar: 0.25)
        arguments["opt.v.s"] = HostTensor(scalar: 0.5)
        let result = try Interpreter.run(module.functions[0], arguments: arguments)
        let (m, v) = (result.updates["opt.m.s"]!.scalar, result.updates["opt.v.s"]!.scalar)
        // m = 0.5·0.25 + 0.5·g and v = 0.75·0.5 + 0.25·g² for the same g.
        let g = (m - 0.125) / 0.5
        XCTAssertEqual(v, 0.375 + 0.25 * g * g, accuracy: 1e-12)
        let (p, lr, bc1, bc2, wd) = (arguments["s"]!.scalar, arguments["lr"]!.scalar, arguments["bc1"]!.scalar,
                                     arguments["bc2"]!.scalar, arguments["weight_decay"]!.scalar)
        XCTAssertEqual(result.updates["s"]!.scalar, p - lr * (bc1 * m / ((bc2 * v).squareRoot() + 1e-3) + wd * p), accuracy: 1e-12)
    }
}

/// Gradient-norm clipping (torch.nn.utils.clip_grad_norm_) and coupled L2
/// (classic Adam's weight_decay), by hand on one step.
final class OptimizerClippingTests: XCTestCase {
    func testClippingAndL2MatchTheirFormulas() throws {
        var module = try Parser.parse(OptimizerTests.source)
        try runPasses([Autodiff.name], on: &module)
        _ = try AdamOptimizer(clipping: true).run(&module)
        let step = module.functions[0]
        let (lr, l2, clip) = (0.01, 0.05, 0.3)
        var arguments: [String: HostTensor] = [
            "x": HostTensor(.f32([4]), [0.5, -1.5, 2, 0.25]), "y": HostTensor(.f32([4]), [1, 0.5, -2, 3]),
            "w": HostTensor(.f32([4]), [0.3, -0.7, 1.1, 0.9]), "s": HostTensor(scalar: 0.2),
            "k": HostTensor(.f32([4]), [1, 2, -1, 0.5]),
            "lr": HostTensor(scalar: lr), "bc1": HostTensor(scalar: 10), "bc2": HostTensor(scalar: 1000),
            "weight_decay": HostTensor(scalar: 0), "l2": HostTensor(scalar: l2), "clip_norm": HostTensor(scalar: clip),
        ]
        for name in ["opt.m.w", "opt.v.w"] { arguments[name] = HostTensor(zeros: .f32([4])) }
        for name in ["opt.m.s", "opt.v.s"] { arguments[name] = HostTensor(zeros: .f32([])) }
        let result = try Interpreter.run(step, arguments: arguments)

        let (x, y, w, k, s) = (arguments["x"]!.data, arguments["y"]!.data, arguments["w"]!.data, arguments["k"]!.data, 0.2)
        let r = (0..<4).map { k[$0] * (w[$0] * x[$0] + s) - y[$0] }
        let gw = (0..<4).map { 0.5 * r[$0] * k[$0] * x[$0] }, gs = (0..<4).map { 0.5 * r[$0] * k[$0] }.reduce(0, +)
        let norm = (gw.map { $0 * $0 }.reduce(0, +) + gs * gs).squareRoot()
        XCTAssertEqual(result.outputs["grad_norm"]!.scalar, norm, accuracy: 1e-12 * norm)
        XCTAssertGreaterThan(norm, clip, "the example must exercise clipping")
        let scale = min(1, clip / (norm + 1e-6))
        // Clip first, then add the L2 term; m = 0.1·g on the first step.
        for i in 0..<4 {
            let g = gw[i] * scale + l2 * w[i]
            XCTAssertEqual(result.updates["opt.m.w"]!.data[i], 0.1 * g, accuracy: 1e-14)
        }
        XCTAssertEqual(result.updates["opt.m.s"]!.scalar, 0.1 * (gs * scale + l2 * s), accuracy: 1e-14)

        // clip_norm = 0 turns clipping off.
        arguments["clip_norm"] = HostTensor(scalar: 0)
        let unclipped = try Interpreter.run(step, arguments: arguments)
        XCTAssertEqual(unclipped.updates["opt.m.w"]!.data[0], 0.1 * (gw[0] + l2 * w[0]), accuracy: 1e-14)
    }
}
