import IR
import Passes
import TestSupport
import XCTest

/// Reverse mode: gradients only for trainable parameters, no backward code
/// for frozen subgraphs, accumulation over several uses, and broadcasts
/// summed back — gradients checked against central finite differences of the
/// f64 reference interpreter.
final class AutodiffTests: XCTestCase {
    // MARK: - DDeP: the frozen encoder gets no backward

    /// Ids the differentiated function added, and the forward values that depend on a trainable parameter.
    func backwardNodes(of differentiated: Function, original: Function) -> (new: [Node], active: Set<ValueID>) {
        let firstNew = original.nextID
        var active = Set(original.args.filter { $0.role == .param }.map(\.id))
        for node in original.nodes where node.operands.contains(where: active.contains) { active.insert(node.id) }
        return (differentiated.nodes.filter { $0.id >= firstNew }, active)
    }

    func testDDePStepDifferentiatesOnlyTheDecoder() throws {
        let original = try UNetSmall.function("pretrain_step")
        let params = original.args.filter { $0.role == .param }
        let frozen = original.args.filter { $0.role == .frozen }
        XCTAssertTrue(params.allSatisfy { $0.name.hasPrefix("dec.") || $0.name.hasPrefix("head.") }, "fixture: decoder and head train")
        XCTAssertTrue(frozen.allSatisfy { $0.name.hasPrefix("enc.") } && !frozen.isEmpty, "fixture: the encoder is frozen")

        var module = Module(functions: [original])
        try runPasses([Autodiff.name], on: &module)
        let step = module.functions[0]

        // One gradient output per trainable parameter, typed like it; none for frozen weights.
        let gradNames = step.outputs.map(\.name).filter { $0.hasPrefix(Autodiff.gradientPrefix) }
        XCTAssertEqual(Set(gradNames), Set(params.map { Autodiff.gradientPrefix + $0.name }))
        XCTAssertEqual(gradNames.count, params.count)
        let types = step.types
        for param in params {
            XCTAssertEqual(types[step.output(named: Autodiff.gradientPrefix + param.name)!.value], param.type, param.name)
        }
        XCTAssertEqual(step.outputs.first?.name, "loss", "the loss stays the first output")

        // No backward node is computed from frozen values alone: each one (other
        // than a constant) reads a value that depends on a trainable parameter or
        // on the loss's seed gradient (the first node autodiff adds).
        let (new, active) = backwardNodes(of: step, original: original)
        let seed = try XCTUnwrap(new.first)
        XCTAssertEqual(seed.op, "constant")
        var live = active.union([seed.id])
        let frozenIDs = Set(original.args.filter { $0.role == .frozen || $0.role == .state }.map(\.id))
        for node in new.dropFirst() {
            if node.operands.contains(where: live.contains) {
                live.insert(node.id)
            } else if node.op != "constant" {
                XCTFail("backward node computed from frozen values only: \(Printer.print(node))")
            }
            // Frozen weights and encoder statistics are never read by backward code.
            for operand in node.operands where frozenIDs.contains(operand) {
                XCTFail("backward node reads \(original.args.first { $0.id == operand }!.name): \(Printer.print(node))")
            }
        }

        // After DCE: one weight gradient per trainable convolution, each flowing into
        // exactly its own weight's gradient output; input gradients only where the
        // convolution's input depends on a trainable parameter (every decoder conv
        // but the first, which reads encoder features, and the head).
        try runPasses([DCE.name], on: &module)
        let pruned = module.functions[0]
        let argsByID = Dictionary(uniqueKeysWithValues: original.args.map { ($0.id, $0) })
        let convs = original.nodes.filter { $0.op == "conv2d" }
        let trainedConvs = convs.filter { argsByID[$0.operands[1]]?.role == .param }
        XCTAssertEqual(trainedConvs.count, 11, "5 decoder blocks × 2 convs + the head")
        XCTAssertEqual(pruned.count("conv2d_grad_weight"), trainedConvs.count)
        XCTAssertEqual(pruned.count("conv2d_grad_input"), trainedConvs.filter { active.contains($0.operands[0]) }.count)
        XCTAssertEqual(pruned.count("conv2d_grad_input"), 10)

        var users: [ValueID: [ValueID]] = [:]
        for node in pruned.nodes { for operand in node.operands { users[operand, default: []].append(node.id) } }
        let outputsOf = Dictionary(grouping: pruned.outputs, by: \.value).mapValues { $0.map(\.name) }
        func outputsReached(from id: ValueID) -> Set<String> {
            var seen: Set<ValueID> = [], stack = [id], names: Set<String> = []
            while let v = stack.popLast() {
                guard seen.insert(v).inserted else { continue }
                names.formUnion(outputsOf[v] ?? [])
                stack += users[v] ?? []
            }
            return names
        }
        for node in pruned.nodes where node.op == "conv2d_grad_weight" {
            // Its forward convolution: same input, weight of the gradient's shape.
            let forward = trainedConvs.filter { $0.operands[0] == node.operands[0] && types[$0.operands[1]] == node.type }
            XCTAssertEqual(forward.count, 1, "\(Printer.print(node)) belongs to one trained conv")
            guard let weight = forward.first.flatMap({ argsByID[$0.operands[1]] }) else { continue }
            XCTAssertEqual(outputsReached(from: node.id), [Autodiff.gradientPrefix + weight.name], Printer.print(node))
        }
        for node in pruned.nodes where node.op == "conv2d_grad_input" {
            XCTAssertEqual(argsByID[node.operands[1]]?.role, .param, "input gradient through a trained weight: \(Printer.print(node))")
        }
    }

    func testDePStepDifferentiatesEverything() throws {
        let original = try UNetSmall.function("pretrain_dep_step")
        let params = original.args.filter { $0.role == .param }
        XCTAssertFalse(params.isEmpty)
        XCTAssertTrue(original.args.allSatisfy { $0.role != .frozen })
        var module = Module(functions: [original])
        try runPasses([Autodiff.name, DCE.name], on: &module)
        let step = module.functions[0]
        XCTAssertEqual(Set(step.outputs.map(\.name).filter { $0.hasPrefix(Autodiff.gradientPrefix) }),
                       Set(params.map { Autodiff.gradientPrefix + $0.name }))
        let convs = original.count("conv2d")
        XCTAssertEqual(step.count("conv2d_grad_weight"), convs)
        // Only the stem reads the image, which needs no gradient.
        XCTAssertEqual(step.count("conv2d_grad_input"), convs - 1)
        // The DDeP step has strictly less backward work.
        var ddep = Module(functions: [try UNetSmall.function("pretrain_step")])
        try runPasses([Autodiff.name, DCE.name], on: &ddep)
        XCTAssertLessThan(ddep.functions[0].count("conv2d_grad_weight"), step.count("conv2d_grad_weight"))
    }

    func testInferAndDifferentiatedFunctionsAreLeftAlone() throws {
        var module = Module(functions: [try UNetSmall.function("infer")])
        XCTAssertEqual(try runPasses([Autodiff.name], on: &module), [false], "no loss output: nothing to do")
        var step = Module(functions: [try UNetSmall.function("finetune_step")])
        XCTAssertEqual(try runPasses([Autodiff.name, Autodiff.name], on: &step), [true, false], "already differentiated")
    }

    // MARK: - Accumulation

    func testValueUsedTwiceByOneNode() throws {
        // loss = Σ (p·p)·r  ⇒  ∂p = 2p·r
        let grads = try checkGradients(try parse("""
        func @f(%0: f32[2,3] param "p", %1: f32[2,3] input "r") {
          %2 = mul(%0, %0) : f32[2,3]
          %3 = mul(%2, %1) : f32[2,3]
          %4 = reduce_sum(%3) {axes=[0,1]} : f32[]
          return %4 as "loss"
        }
        """))
        XCTAssertEqual(grads.count, 1)
    }

    func testParamUsedByTwoOpsAndIntermediateUsedTwice() throws {
        // p feeds a product, an exp and (broadcast) a sum; h = tanh(p·x) feeds
        // h·h and h·r: every path's gradient must be added.
        try checkGradients(try parse("""
        func @f(%0: f32[3] param "p", %1: f32[2,3] input "x", %2: f32[2,3] input "r", %3: f32[2,3] param "q") {
          %4 = mul(%0, %1) : f32[2,3]
          %5 = tanh(%4) : f32[2,3]
          %6 = mul(%5, %5) : f32[2,3]
          %7 = mul(%5, %2) : f32[2,3]
          %8 = add(%6, %7) : f32[2,3]
          %9 = exp(%0) : f32[3]
          %10 = add(%8, %9) : f32[2,3]
          %11 = mul(%10, %3) : f32[2,3]
          %12 = add(%11, %3) : f32[2,3]
          %13 = mul(%12, %2) : f32[2,3]
          %14 = reduce_sum(%13) {axes=[0,1]} : f32[]
          return %14 as "loss"
        }
        """))
    }

    // MARK: - Un-broadcasting

    func testBiasAddedThroughAReshapeGetsAChannelGradient() throws {
        // y = x + reshape(b, [1,C,1,1]); loss = mean(y²)
        let grads = try checkGradients(try parse("""
        func @f(%0: f32[2,3,2,2] input "x", %1: f32[3] param "b") {
          %2 = reshape(%1) {shape=[1,3,1,1]} : f32[1,3,1,1]
          %3 = add(%0, %2) : f32[2,3,2,2]
          %4 = mse(%3, %0) : f32[]
          %5 = mul(%3, %3) : f32[2,3,2,2]
          %6 = reduce_mean(%5) {axes=[0,1,2,3]} : f32[]
          %7 = add(%6, %4) : f32[]
          return %7 as "loss"
        }
        """))
        XCTAssertEqual(grads["b"]?.type, .f32([3]))
    }

    func testImplicitBroadcastsAreSummedBack() throws {
        // Operands broadcast with leading axes added ([3,1,1], [2,1], []) and size-1 axes stretched ([1,3,1,1]).
        let grads = try checkGradients(try parse("""
        func @f(%0: f32[2,3,2,2] input "x", %1: f32[3,1,1] param "a", %2: f32[2,1] param "c", %3: f32[] param "s", %4: f32[1,3,1,1] param "g") {
          %5 = mul(%0, %1) : f32[2,3,2,2]
          %6 = sub(%5, %2) : f32[2,3,2,2]
          %7 = div(%6, %3) : f32[2,3,2,2]
          %8 = mul(%7, %4) : f32[2,3,2,2]
          %9 = tanh(%8) : f32[2,3,2,2]
          %10 = reduce_sum(%9) {axes=[0,1,2,3]} : f32[]
          return %10 as "loss"
        }
        """), seed: 4)
        XCTAssertEqual(grads["a"]?.type, .f32([3, 1, 1]))
        XCTAssertEqual(grads["c"]?.type, .f32([2, 1]))
        XCTAssertEqual(grads["s"]?.type, .f32([]))
        XCTAssertEqual(grads["g"]?.type, .f32([1, 3, 1, 1]))
    }

    func testFrozenAndInputsGetNoGradient() throws {
        let original = try parse("""
        func @f(%0: f32[3] param "p", %1: f32[3] frozen "w", %2: f32[3] input "x", %3: f32[3] state "s") {
          %4 = mul(%1, %2) : f32[3]
          %5 = exp(%4) : f32[3]
          %6 = mul(%5, %0) : f32[3]
          %7 = add(%6, %3) : f32[3]
          %8 = reduce_sum(%7) {axes=[0]} : f32[]
          %9 = add(%3, %2) : f32[3]
          return %8 as "loss"
          update %3 = %9
        }
        """)
        try checkGradients(original)
        var module = Module(functions: [original])
        try runPasses([Autodiff.name, DCE.name], on: &module)
        let step = module.functions[0]
        XCTAssertEqual(step.outputs.map(\.name), ["loss", "grad:p"])
        // The frozen branch exp(w·x) is read by the gradient, but nothing is differentiated through it.
        let (new, _) = backwardNodes(of: step, original: original)
        XCTAssertFalse(new.contains { $0.operands.contains(4) || $0.operands.contains(1) }, new.map(Printer.print).joined(separator: "\n"))
        XCTAssertEqual(step.updates, original.updates)
    }

    func testNonScalarLossIsAnError() throws {
        var module = Module(functions: [try parse("""
        func @f(%0: f32[3] param "p") {
          %1 = exp(%0) : f32[3]
          return %1 as "loss"
        }
        """)])
        XCTAssertThrowsError(try Autodiff().run(&module)) { error in
            XCTAssertTrue("\(error)".contains("@f") && "\(error)".contains("f32[3]"), "\(error)")
        }
    }

    func parse(_ text: String) throws -> Function {
        let module = try Parser.parse(text)
        try Verifier.verify(module)
        return module.functions[0]
    }
}
