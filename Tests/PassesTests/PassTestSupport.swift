import Foundation
import IR
import ModelZoo
import Passes
import TestSupport
import XCTest

// Shared helpers of the pass tests: passes by name, a FileCheck-style matcher
// for golden IR tests, the UNet.small fixture, argument generators and a
// finite-difference gradient check on the f64 reference interpreter.

/// Every pass, by the name `--print-ir-after` uses.
let passesByName: [String: any Pass] = [
    InferShapes.name: InferShapes(), Autodiff.name: Autodiff(), AdamOptimizer.name: AdamOptimizer(),
    FoldConstants.name: FoldConstants(), CSE.name: CSE(), DCE.name: DCE(), BatchNormFromMoments.name: BatchNormFromMoments(),
    OnePassMoments.name: OnePassMoments(), FuseConvMoments.name: FuseConvMoments(),
    FuseElementwise.name: FuseElementwise(), FuseReductions.name: FuseReductions(),
    FuseNormActivation.name: FuseNormActivation(), FuseConvEpilogue.name: FuseConvEpilogue(), FuseConcat.name: FuseConcat(),
    MatmulLayout.name: MatmulLayout(), PlanMemory.name: PlanMemory(),
    SelectConvAlgorithm.name: SelectConvAlgorithm(), PrepareWeights.name: PrepareWeights(panelRows: 12), ScheduleUpdates.name: ScheduleUpdates(), Rematerialize.name: Rematerialize(), FuseConvPrologue.name: FuseConvPrologue(), SplitConvGradInput.name: SplitConvGradInput(), FuseConvGather.name: FuseConvGather(), GroupLoops.name: GroupLoops(),
    SyncBatchNorm.name: SyncBatchNorm(), AllReduceGradients.name: AllReduceGradients(),
]

/// Runs the named passes in order, verifying after each (not before the
/// first: infer-shapes exists to repair hand-written types).
@discardableResult
func runPasses(_ names: [String], on module: inout Module) throws -> [Bool] {
    try names.map { name in
        guard let pass = passesByName[name] else { throw IRError("test: unknown pass '\(name)'") }
        let changed = try pass.run(&module)
        do { try Verifier.verify(module) } catch let error as IRError {
            throw IRError("IR is invalid after \(name): \(error.message)", loc: error.loc)
        }
        return changed
    }
}

// MARK: - Golden IR (FileCheck-style)

/// One `// CHECK…:` line of a golden test.
struct CheckDirective {
    enum Kind: String { case check = "CHECK", next = "CHECK-NEXT", not = "CHECK-NOT" }
    var kind: Kind
    var pattern: String
    var line: Int
}

/// The directives written as `// CHECK: text`, `// CHECK-NEXT: text` and
/// `// CHECK-NOT: text` comments in `source` (the parser skips comments, so the
/// input and its expected output live in one text, MLIR-test style).
func checkDirectives(in source: String) -> [CheckDirective] {
    var directives: [CheckDirective] = []
    for (index, line) in source.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
        guard let comment = line.range(of: "//") else { continue }
        let text = line[comment.upperBound...].trimmingCharacters(in: .whitespaces)
        for kind in [CheckDirective.Kind.next, .not, .check] where text.hasPrefix(kind.rawValue + ":") {
            let pattern = text.dropFirst(kind.rawValue.count + 1).trimmingCharacters(in: .whitespaces)
            directives.append(CheckDirective(kind: kind, pattern: pattern, line: index + 1))
            break
        }
    }
    return directives
}

/// Matches `output` against `directives` in order: CHECK finds its text after
/// the previous match, CHECK-NEXT on the line after the previous match's line,
/// CHECK-NOT forbids its text between the previous and the next match (or the
/// end). Returns a description of the first failure, or nil.
func matchDirectives(_ directives: [CheckDirective], against output: String) -> String? {
    var cursor = output.startIndex
    var pendingNot: [CheckDirective] = []

    func checkNots(upTo end: String.Index) -> String? {
        defer { pendingNot.removeAll() }
        for not in pendingNot {
            if let found = output.range(of: not.pattern, range: cursor..<end) {
                let lineStart = output[..<found.lowerBound].lastIndex(of: "\n").map { output.index(after: $0) } ?? output.startIndex
                let lineEnd = output[found.lowerBound...].firstIndex(of: "\n") ?? output.endIndex
                let lineText = output[lineStart..<lineEnd]
                return "line \(not.line): CHECK-NOT: \(not.pattern)\n  found in: \(lineText)"
            }
        }
        return nil
    }

    for directive in directives {
        switch directive.kind {
        case .not:
            pendingNot.append(directive)
        case .check:
            guard let found = output.range(of: directive.pattern, range: cursor..<output.endIndex) else {
                return "line \(directive.line): CHECK: \(directive.pattern)\n  not found after the previous match"
            }
            if let failure = checkNots(upTo: found.lowerBound) { return failure }
            cursor = found.upperBound
        case .next:
            // The line after the one holding the cursor.
            guard let newline = output[cursor...].firstIndex(of: "\n") else {
                return "line \(directive.line): CHECK-NEXT: \(directive.pattern)\n  no line after the previous match"
            }
            let start = output.index(after: newline)
            let end = output[start...].firstIndex(of: "\n") ?? output.endIndex
            guard let found = output.range(of: directive.pattern, range: start..<end) else {
                return "line \(directive.line): CHECK-NEXT: \(directive.pattern)\n  next line is: \(output[start..<end])"
            }
            if let failure = checkNots(upTo: found.lowerBound) { return failure }
            cursor = found.upperBound
        }
    }
    return checkNots(upTo: output.endIndex)
}

/// A golden IR test: parses `source`, runs `passes`, and matches the printed
/// result against the `// CHECK` comments in `source`. The result must verify
/// and round-trip through the printer and parser. Returns the result module.
@discardableResult
func checkIR(_ source: String, passes: [String], file: StaticString = #filePath, line: UInt = #line) throws -> Module {
    var module = try Parser.parse(source, name: "input.ddir")
    try runPasses(passes, on: &module)
    let output = Printer.print(module)
    let directives = checkDirectives(in: source)
    XCTAssertFalse(directives.isEmpty, "the golden test has no CHECK lines", file: file, line: line)
    if let failure = matchDirectives(directives, against: output) {
        XCTFail("after \(passes.joined(separator: ", ")):\n\(failure)\n--- output ---\n\(output)", file: file, line: line)
    }
    XCTAssertEqual(try Printer.print(Parser.parse(output)), output, "the output round-trips", file: file, line: line)
    return module
}

// MARK: - UNet.small

enum UNetSmall {
    /// The entry points of the real model (infer, pretrain_step,
    /// pretrain_dep_step, finetune_step) at batch 1, 32×32, built once.
    static let module: Module = {
        let config = EntryConfig(batch: 1, size: 32, classes: 2,
                                 entries: [.infer, .pretrainStep, .pretrainDepStep, .finetuneStep])
        do { return try buildModule(UNet.small, config: config) } catch {
            fatalError("UNet.small does not build: \(error)")
        }
    }()

    static func function(_ name: String) throws -> Function {
        try XCTUnwrap(module[name], "UNet.small has no @\(name)")
    }

    /// The module after the whole standard pipeline (computed once; several tests share it).
    static let planned: Result<Module, Error> = Result {
        var module = UNetSmall.module
        try PassManager(PassManager.standardPipeline()).run(&module)
        return module
    }
}

// MARK: - Arguments

/// Checks that each function of `after` (a pass's result) computes what the
/// same function of `before` did: the f64 interpreter on the same random
/// arguments (`adjust` may constrain them, e.g. variances positive), every
/// output within `tolerance` (relative to its largest magnitude).
func assertComputesTheSame(_ before: Module, _ after: Module, seed: UInt64, tolerance: Double,
                           adjust: (Function, inout [String: HostTensor]) -> Void = { _, _ in },
                           file: StaticString = #filePath, line: UInt = #line) throws {
    for (unfused, fused) in zip(before.functions, after.functions) {
        var arguments = randomArguments(for: unfused, seed: seed)
        adjust(unfused, &arguments)
        let expected = try Interpreter.run(unfused, arguments: arguments)
        let got = try Interpreter.run(fused, arguments: arguments)
        for (name, value) in expected.outputs {
            XCTAssertLessThanOrEqual(maxRelativeDifference(got.outputs[name]?.data ?? [], value.data), tolerance,
                                     "output \(name) changed", file: file, line: line)
        }
    }
}

/// Random but valid values for every argument of `function`: images and
/// weights in a few-unit range, positive variances and second moments, class
/// labels in [0, classes) with some ignored (255) pixels, Adam scalars of
/// a realistic step. `overrides` wins.
func randomArguments(for function: Function, seed: UInt64, classes: Int = 2,
                     overrides: [String: HostTensor] = [:]) -> [String: HostTensor] {
    var rng = TestRNG(seed: seed)
    var out = overrides
    let scalars: [String: Double] = ["lr": 1e-3, "bc1": 1 / (1 - 0.9), "bc2": 1 / (1 - 0.999), "weight_decay": 0.01,
                                     "l2": 1e-4, "clip_norm": 1, "noise_a": 0.97662, "noise_b": 0.21494,
                                     "target_noise": 1, "target_image": 0]
    for arg in function.args where out[arg.name] == nil {
        let type = arg.type
        let values: [Double]
        switch type.dtype {
        case .i32:
            values = (0..<type.count).map { _ in rng.next() % 5 == 0 ? 255 : Double(rng.next() % UInt64(classes)) }
        case .i64:
            values = (0..<type.count).map { _ in Double(rng.next() % 10_000) }
        case .f32, .f64:
            if let scalar = scalars[arg.name] {
                values = [Double](repeating: scalar, count: type.count)
            } else if arg.name.hasSuffix("running_var") || arg.name.hasPrefix("opt.v.") {
                let scale = arg.name.hasPrefix("opt.v.") ? 1e-4 : 1
                values = (0..<type.count).map { _ in scale * rng.uniform(0.5, 1.5) }
            } else if arg.name.hasPrefix("opt.m.") {
                values = (0..<type.count).map { _ in 1e-2 * rng.uniform() }
            } else if arg.role.isWeight, type.rank >= 2 {
                // He-uniform scale keeps activations O(1) through the network.
                let fanIn = Double(type.shape.dropFirst().reduce(1, *))
                let bound = (6 / fanIn).squareRoot()
                values = (0..<type.count).map { _ in bound * rng.uniform() }
            } else if arg.initRule == .ones {
                values = (0..<type.count).map { _ in rng.uniform(0.5, 1.5) }
            } else {
                values = (0..<type.count).map { _ in rng.uniform() }
            }
        }
        out[arg.name] = HostTensor(type, values)
    }
    return out
}

// MARK: - Gradient checks

/// Central differences of the scalar output `loss` of `function` with respect
/// to every element of argument `name` (f64 interpreter).
func numericGradient(_ function: Function, _ arguments: [String: HostTensor], wrt name: String,
                     h: Double = 1e-6) throws -> [Double] {
    let count = arguments[name]!.data.count
    return try (0..<count).map { i in
        var plus = arguments, minus = arguments
        plus[name]!.data[i] += h
        minus[name]!.data[i] -= h
        let lp = try Interpreter.run(function, arguments: plus).outputs["loss"]!.scalar
        let lm = try Interpreter.run(function, arguments: minus).outputs["loss"]!.scalar
        return (lp - lm) / (2 * h)
    }
}

/// Differentiates `function` with the autodiff pass and checks every
/// `grad:<param>` output against central differences. Returns the gradients.
@discardableResult
func checkGradients(_ function: Function, seed: UInt64 = 3, file: StaticString = #filePath,
                    line: UInt = #line) throws -> [String: HostTensor] {
    var module = Module(functions: [function])
    try runPasses([Autodiff.name], on: &module)
    let differentiated = module.functions[0]
    let arguments = randomArguments(for: function, seed: seed)
    let result = try Interpreter.run(differentiated, arguments: arguments)
    var grads: [String: HostTensor] = [:]
    for arg in function.args where arg.role == .param {
        guard let grad = result.outputs[Autodiff.gradientPrefix + arg.name] else {
            XCTFail("no gradient output for param \"\(arg.name)\"", file: file, line: line)
            continue
        }
        XCTAssertEqual(grad.type, arg.type, "the gradient of \(arg.name) has the param's type", file: file, line: line)
        let numeric = try numericGradient(function, arguments, wrt: arg.name)
        // f64 central differences: truncation ~h², rounding ~1e-10/h.
        let worst = closeness(grad.data, numeric, atol: 1e-6, rtol: 1e-5)
        XCTAssertLessThanOrEqual(worst, 1, "∂loss/∂\(arg.name)\nanalytic \(grad.data.prefix(8))\nnumeric  \(numeric.prefix(8))",
                                 file: file, line: line)
        grads[arg.name] = grad
    }
    return grads
}

/// Largest |a − b| / max(|b|, 1e-30) over the elements, for "agrees to ~1e-12"
/// (NaN agrees only with NaN).
func maxRelativeDifference(_ a: [Double], _ b: [Double]) -> Double {
    guard a.count == b.count else { return .infinity }
    var worst = 0.0
    for (x, y) in zip(a, b) {
        if x == y || (x.isNaN && y.isNaN) { continue }
        if x.isNaN || y.isNaN || x.isInfinite || y.isInfinite { return .infinity }
        worst = max(worst, abs(x - y) / max(abs(y), 1e-30))
    }
    return worst
}

/// Runs `before` and `after` (one function through two pipelines) in the
/// f64 interpreter on the same random arguments and asserts that every
/// output and update agrees to `tolerance`.
func assertSameOutputsAndUpdates(_ before: Function, _ after: Function, seed: UInt64, classes: Int = 2, tolerance: Double,
                                 file: StaticString = #filePath, line: UInt = #line) throws {
    let arguments = randomArguments(for: before, seed: seed, classes: classes)
    let expected = try Interpreter.run(before, arguments: arguments)
    let got = try Interpreter.run(after, arguments: arguments)
    for (name, value) in expected.outputs.merging(expected.updates, uniquingKeysWith: { a, _ in a }) {
        let other = got.outputs[name] ?? got.updates[name]
        XCTAssertLessThanOrEqual(maxRelativeDifference(other?.data ?? [], value.data), tolerance, "\(before.name): \(name)",
                                 file: file, line: line)
    }
}

/// A golden test (`checkIR`) whose rewritten function must also compute
/// the input's output `output`, exactly, in the f64 interpreter.
@discardableResult
func checkIRComputesTheSame(_ source: String, passes: [String], output: String, seed: UInt64,
                            file: StaticString = #filePath, line: UInt = #line) throws -> Module {
    let after = try checkIR(source, passes: passes, file: file, line: line)
    let before = try Parser.parse(source)
    let arguments = randomArguments(for: before.functions[0], seed: seed)
    XCTAssertEqual(try Interpreter.run(after.functions[0], arguments: arguments).outputs[output],
                   try Interpreter.run(before.functions[0], arguments: arguments).outputs[output], file: file, line: line)
    return after
}

extension Function {
    /// Nodes by id.
    var nodesByID: [ValueID: Node] { Dictionary(uniqueKeysWithValues: nodes.map { ($0.id, $0) }) }

    func count(_ op: String) -> Int { nodes.filter { $0.op == op }.count }
}
