import Foundation
import IR
import Passes
import TestSupport
import XCTest

/// Elementwise fusion must not change what a step computes. On UNet.small's
/// fine-tuning step (forward, cross-entropy with ignored pixels, backward,
/// Adam) and DDeP step:
///
/// - every node fusion left alone is unchanged, and every fused node stands in
///   for the unfused node of the same id, computing the same values from the
///   same operands (checked node by node in the f64 interpreter), so by
///   induction over the schedule the fused step computes the same step;
/// - the whole fused step evaluated in the interpreter gives the same loss and
///   the same new weights, moments and running statistics (a slow test: about
///   15 s in a debug build, run with DDEPC_SLOW_TESTS=1).
final class FusionEquivalenceTests: XCTestCase {
    /// The step through autodiff, optimizer, fold, CSE and DCE, and the same after fusion + DCE.
    static func unfusedAndFused(_ name: String) throws -> (unfused: Function, fused: Function) {
        var unfused = Module(functions: [try UNetSmall.function(name)])
        try runPasses([Autodiff.name, AdamOptimizer.name, FoldConstants.name, CSE.name, DCE.name], on: &unfused)
        var fused = unfused
        // fuse-elementwise removes the producers it absorbs: DCE finds nothing left.
        XCTAssertEqual(try runPasses([FuseElementwise.name, DCE.name], on: &fused), [true, false])
        return (unfused.functions[0], fused.functions[0])
    }

    static let finetune = Result { try unfusedAndFused("finetune_step") }

    func testFusionShrinksTheStepAndMissesNothing() throws {
        let (before, after) = try Self.finetune.get()
        XCTAssertEqual(before.args, after.args, "fusion keeps the signature")
        XCTAssertEqual(before.outputs, after.outputs)
        XCTAssertEqual(before.updates, after.updates)
        XCTAssertGreaterThan(after.count("fused_elementwise"), 200, "the step has many elementwise chains")
        XCTAssertLessThan(Double(after.nodes.count), 0.7 * Double(before.nodes.count),
                          "fusion removes many nodes (\(before.nodes.count) → \(after.nodes.count))")
        // No elementwise node is left with a single-use, same-shaped elementwise
        // producer that it reads once (reading it twice would compute it twice).
        let uses = after.nodes.flatMap(\.operands).reduce(into: [ValueID: Int]()) { $0[$1, default: 0] += 1 }
        let roots = Set(after.rootValues)
        let byID = after.nodesByID
        for node in after.nodes where isElementwise(node) && node.op != "constant" {
            let expr = node.attrs["expr"].flatMap { if case .expr(let e) = $0 { return e } else { return nil } }
            for (index, operand) in node.operands.enumerated() {
                guard let producer = byID[operand], isElementwise(producer), producer.op != "constant",
                      uses[operand] == 1, !roots.contains(operand), producer.type.shape == node.type.shape,
                      (expr?.occurrences(ofInput: index) ?? 1) == 1,
                      Set(node.operands + producer.operands).count - 1 <= 64 else { continue }
                XCTFail("%\(node.id) (\(node.op)) could have absorbed its only-use producer %\(operand) (\(producer.op))")
            }
        }
        // Scalar constants are always inlined: none is an operand of a fused node.
        for node in after.nodes where node.op == "fused_elementwise" {
            for operand in node.operands where byID[operand]?.op == "constant" && byID[operand]!.type.shape.isEmpty {
                XCTFail("%\(node.id) reads the scalar constant %\(operand) instead of inlining it")
            }
        }
    }

    func testFusedNodesRespectTheOperandLimit() throws {
        let (_, after) = try Self.finetune.get()
        let limit = try OpRegistry.require("fused_elementwise").arity
        for node in after.nodes where node.op == "fused_elementwise" {
            XCTAssertTrue(limit.contains(node.operands.count), "%\(node.id) has \(node.operands.count) operands")
        }
    }

    func testEveryFusedNodeComputesItsUnfusedChain() throws {
        let (before, after) = try Self.finetune.get()
        try checkNodeByNode(unfused: before, fused: after)
    }

    func testEveryFusedNodeOfTheDDePStepComputesItsUnfusedChain() throws {
        let (before, after) = try Self.unfusedAndFused("pretrain_step")
        XCTAssertLessThan(after.nodes.count, before.nodes.count)
        try checkNodeByNode(unfused: before, fused: after)
    }

    func testFusedFinetuneStepComputesTheSameStep() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["DDEPC_SLOW_TESTS"] == "1",
                          "slow (about 20 s in a debug build): set DDEPC_SLOW_TESTS=1")
        let (before, after) = try Self.finetune.get()
        // Labels in [0, classes) with ignored pixels; every weight, moment and statistic random.
        let arguments = randomArguments(for: before, seed: 11, classes: 2)
        XCTAssertTrue(arguments["labels"]!.data.contains(255) && arguments["labels"]!.data.contains(1))
        var results: [InterpreterResult?] = [nil, nil]
        var failure: Error?
        let lock = NSLock()
        // The two evaluations are independent; run them side by side.
        DispatchQueue.concurrentPerform(iterations: 2) { index in
            do {
                let result = try Interpreter.run(index == 0 ? before : after, arguments: arguments)
                lock.lock(); results[index] = result; lock.unlock()
            } catch {
                lock.lock(); failure = error; lock.unlock()
            }
        }
        if let failure { throw failure }
        let (reference, candidate) = (try XCTUnwrap(results[0]), try XCTUnwrap(results[1]))

        let loss = try XCTUnwrap(reference.outputs["loss"]).scalar
        XCTAssertTrue(loss.isFinite && loss > 0, "loss \(loss)")
        XCTAssertEqual(Set(reference.outputs.keys), Set(candidate.outputs.keys))
        XCTAssertEqual(Set(reference.updates.keys), Set(candidate.updates.keys))
        XCTAssertEqual(reference.updates.count, before.updates.count)
        for (name, value) in reference.outputs {
            XCTAssertLessThanOrEqual(maxRelativeDifference(candidate.outputs[name]!.data, value.data), 1e-12, "output \(name)")
        }
        var moved = 0
        for (name, value) in reference.updates {
            let got = try XCTUnwrap(candidate.updates[name])
            XCTAssertEqual(got.type, value.type, name)
            XCTAssertTrue(value.data.allSatisfy(\.isFinite), "\(name) is finite")
            XCTAssertLessThanOrEqual(maxRelativeDifference(got.data, value.data), 1e-12, "update of \(name)")
            if value.data != arguments[name]!.data { moved += 1 }
        }
        XCTAssertEqual(moved, reference.updates.count, "the step really trains: every updated buffer changed")
    }

    /// fuse-reductions on the fused fine-tuning step: each batch norm's
    /// variance and gradient sums become fused reductions, and each one
    /// computes what its reduction of its producer computed.
    func testEveryFusedReductionComputesItsReductionOfItsProducer() throws {
        let (_, before) = try Self.finetune.get()
        var module = Module(functions: [before])
        XCTAssertEqual(try runPasses([FuseReductions.name, DCE.name], on: &module), [true, false], "fuse-reductions removes what it absorbs")
        let after = module.functions[0]
        let batchNorms = before.count("batch_norm_train")
        XCTAssertGreaterThanOrEqual(after.count("fused_reduce"), 2 * batchNorms, "a variance and a gradient sum per batch norm")
        XCTAssertEqual(before.nodes.count - after.nodes.count, after.count("fused_reduce"), "each absorbed one producer")
        let original = before.nodesByID, types = before.types
        var checked = 0
        for node in after.nodes where node != original[node.id] {
            let reduction = try XCTUnwrap(original[node.id])
            let producer = try XCTUnwrap(original[reduction.operands[0]])
            XCTAssertEqual(node.op, "fused_reduce")
            XCTAssertEqual(node.operands, producer.operands)
            XCTAssertEqual(node.type, reduction.type)
            XCTAssertEqual(node.loc, reduction.loc)
            // Shapes shrunk to at most 3 per axis keep every reduction pattern.
            var distinct: [ValueID] = []
            for operand in node.operands where !distinct.contains(operand) { distinct.append(operand) }
            let args = distinct.map { Argument(id: $0, type: shrunk(types[$0]!), role: .input, name: "v\($0)") }
            let resultType = try OpRegistry.require(reduction.op).checkedType(operands: [shrunk(producer.type)], attrs: reduction.attrs)
            var shrunkReduction = reduction, shrunkFused = node
            shrunkReduction.type = resultType
            shrunkFused.type = resultType
            try assertSameValue(of: [shrunk(producer), shrunkReduction], as: shrunkFused, args: args, "%\(node.id) differs from its reduction")
            checked += 1
        }
        XCTAssertEqual(checked, after.count("fused_reduce"))
    }

    /// fuse-norm-activation on the fused fine-tuning step: every training
    /// batch norm followed by a ReLU becomes one node computing both.
    func testEveryFusedNormComputesItsNormAndReLU() throws {
        let (_, before) = try Self.finetune.get()
        var module = Module(functions: [before])
        XCTAssertEqual(try runPasses([FuseNormActivation.name, DCE.name], on: &module), [true, false], "fuse-norm-activation removes what it absorbs")
        let after = module.functions[0]
        XCTAssertGreaterThan(after.count("fused_batch_norm_train"), 0)
        XCTAssertEqual(before.count("batch_norm_train") - after.count("batch_norm_train"), after.count("fused_batch_norm_train"))
        let original = before.nodesByID, types = before.types
        for node in after.nodes where node != original[node.id] {
            let relu = try XCTUnwrap(original[node.id]), norm = try XCTUnwrap(original[relu.operands[0]])
            XCTAssertEqual(node.op, "fused_batch_norm_train")
            XCTAssertEqual(relu.op, "relu")
            XCTAssertEqual(node.operands, norm.operands)
            XCTAssertEqual(node.type, relu.type)
            let args = node.operands.map { Argument(id: $0, type: types[$0]!, role: .input, name: "v\($0)") }
            try assertSameValue(of: [norm, relu], as: node, args: args, "%\(node.id) differs from its norm and ReLU")
        }
    }

    /// The fused node computes in the interpreter what the unfused nodes
    /// (whose last one has its id) computed, from the same arguments.
    func assertSameValue(of unfused: [Node], as fused: Node, args: [Argument], _ what: String,
                         file: StaticString = #filePath, line: UInt = #line) throws {
        let reference = Function(name: "chain", args: args, nodes: unfused, outputs: [Output(value: fused.id, name: "r")])
        let candidate = Function(name: "fused", args: args, nodes: [fused], outputs: [Output(value: fused.id, name: "r")])
        try Verifier.verify(reference)
        try Verifier.verify(candidate)
        let arguments = randomArguments(for: reference, seed: UInt64(fused.id))
        let expected = try Interpreter.run(reference, arguments: arguments).outputs["r"]!
        let got = try Interpreter.run(candidate, arguments: arguments).outputs["r"]!
        XCTAssertLessThanOrEqual(maxRelativeDifference(got.data, expected.data), 1e-12, what, file: file, line: line)
    }

    // MARK: - Node-by-node equivalence

    /// Every node of `fused` is either a node of `unfused` unchanged, or a
    /// fused_elementwise standing in for the unfused node of the same id (same
    /// type and location) whose value the interpreter computes identically
    /// from the fused node's operands through the unfused chain. Chains are
    /// elementwise, so they are evaluated on shapes shrunk to at most 3 per axis
    /// (which keeps every broadcast pattern): all elements, fast.
    func checkNodeByNode(unfused: Function, fused: Function, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(unfused.args, fused.args, file: file, line: line)
        XCTAssertEqual(unfused.outputs, fused.outputs, file: file, line: line)
        XCTAssertEqual(unfused.updates, fused.updates, file: file, line: line)
        let original = unfused.nodesByID
        let types = unfused.types
        let argIDs = Set(unfused.args.map(\.id))
        let position = Dictionary(uniqueKeysWithValues: unfused.nodes.enumerated().map { ($1.id, $0) })
        var checked = 0
        for node in fused.nodes {
            guard let before = original[node.id] else {
                XCTFail("fusion invented %\(node.id)", file: file, line: line)
                continue
            }
            guard node != before else { continue }
            XCTAssertEqual(node.op, "fused_elementwise", "only fusion may change %\(node.id)", file: file, line: line)
            XCTAssertEqual(node.type, before.type, "%\(node.id) keeps its type", file: file, line: line)
            XCTAssertEqual(node.loc, before.loc, "%\(node.id) keeps its location", file: file, line: line)
            XCTAssertEqual(Set(node.operands).count, node.operands.count, "%\(node.id): operands are not repeated", file: file, line: line)

            // The unfused chain from the fused node's operands to its value.
            let leaves = Set(node.operands)
            var chain: [ValueID: Node] = [:]
            var stack = [node.id]
            while let id = stack.popLast() {
                guard !leaves.contains(id), chain[id] == nil else { continue }
                guard let producer = original[id] else {
                    XCTFail("%\(node.id)'s chain reaches %\(id) (\(argIDs.contains(id) ? "an argument" : "undefined")), which is not one of its operands",
                            file: file, line: line)
                    return
                }
                XCTAssertTrue(isElementwise(producer), "%\(node.id)'s chain holds \(producer.op) %\(id)", file: file, line: line)
                if producer.op == "constant" {
                    XCTAssertEqual(producer.type.shape, [], "%\(node.id) inlines the non-scalar constant %\(id)", file: file, line: line)
                } else {
                    XCTAssertEqual(producer.type.shape, node.type.shape, "%\(node.id) inlines %\(id) of another shape", file: file, line: line)
                }
                chain[id] = producer
                stack += producer.operands
            }
            let shrunkArgs = node.operands.map { Argument(id: $0, type: shrunk(types[$0]!), role: .input, name: "v\($0)") }
            let reference = Function(name: "chain", args: shrunkArgs,
                                     nodes: chain.values.sorted { position[$0.id]! < position[$1.id]! }.map(shrunk),
                                     outputs: [Output(value: node.id, name: "r")])
            let candidate = Function(name: "fused", args: shrunkArgs, nodes: [shrunk(node)],
                                     outputs: [Output(value: node.id, name: "r")])
            try Verifier.verify(reference)
            try Verifier.verify(candidate)
            // Values of both signs (every select/comparison branch), then positive ones (sqrt, log, div domains).
            let mixed = randomArguments(for: reference, seed: UInt64(node.id))
            var positive = mixed
            for (name, value) in mixed { positive[name]!.data = value.data.map { 0.5 + abs($0) } }
            for arguments in [mixed, positive] {
                let expected = try Interpreter.run(reference, arguments: arguments).outputs["r"]!
                let got = try Interpreter.run(candidate, arguments: arguments).outputs["r"]!
                XCTAssertEqual(got.type, expected.type, file: file, line: line)
                XCTAssertLessThanOrEqual(maxRelativeDifference(got.data, expected.data), 1e-12,
                                         "%\(node.id) = \(node.attrs["expr"]!) differs from its chain", file: file, line: line)
            }
            checked += 1
        }
        XCTAssertGreaterThan(checked, 100, file: file, line: line)
    }

    func shrunk(_ type: TensorType) -> TensorType { type.with(shape: type.shape.map { min($0, 3) }) }

    func shrunk(_ node: Node) -> Node {
        var node = node
        node.type = shrunk(node.type)
        if case .ints(let shape)? = node.attrs["shape"] { node.attrs["shape"] = .ints(shape.map { min($0, 3) }) }
        return node
    }

    func isElementwise(_ node: Node) -> Bool {
        if case .elementwise? = OpRegistry.spec(node.op)?.lowering { return true }
        return false
    }
}
