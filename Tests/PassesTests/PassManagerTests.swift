import Foundation
import IR
import Passes
import TestSupport
import XCTest

/// --print-ir-after, --print-ir-after-change, --ir-dump-dir, --time-passes,
/// and the verifier after every pass naming the pass that broke the IR.
final class PassManagerTests: XCTestCase {
    /// A small training step: every standard pass has something to do.
    let source = """
    func @step(%0: f32[2,3] input "x", %1: f32[3] param "w" init=ones, %2: f32[2,3] input "y") {
      %3 = mul(%0, %1) : f32[2,3] loc("model.swift":3)
      %4 = constant() {value=1.0} : f32[]
      %5 = mul(%3, %4) : f32[2,3]
      %6 = tanh(%5) : f32[2,3]
      %7 = mse(%6, %2) : f32[]
      return %7 as "loss"
    }
    """

    func module() throws -> Module { try Parser.parse(source) }

    func run(_ passes: [any Pass], _ configure: (inout PassOptions) -> Void) throws -> (String, [PassRecord], Module) {
        var output = ""
        var options = PassOptions()
        configure(&options)
        options.emit = { output += $0 }
        var module = try module()
        let records = try PassManager(passes, options: options).run(&module)
        return (output, records, module)
    }

    func occurrences(of needle: String, in text: String) -> Int { text.components(separatedBy: needle).count - 1 }

    func testStandardPipelineAndKnownNames() throws {
        let pipeline = PassManager.standardPipeline()
        XCTAssertEqual(pipeline.map(\.name), ["infer-shapes", "autodiff", "optimizer", "fold-constants", "cse", "dce",
                                              "batch-norm-from-moments", "one-pass-moments", "fuse-elementwise", "fuse-reductions", "fuse-norm-activation",
                                              "fuse-conv-epilogue", "fuse-concat", "matmul-layout", "select-conv-algorithm", "prepare-weights", "schedule-updates", "dce",
                                              "rematerialize", "fuse-conv-prologue", "split-conv-grad-input", "fuse-conv-gather", "group-loops", "plan-memory"])
        let dataParallel = PassManager.standardPipeline(dataParallel: true, momentsInEpilogue: true)
        XCTAssertEqual(dataParallel.map(\.name), ["infer-shapes", "sync-batch-norm", "autodiff", "allreduce-gradients", "optimizer",
                                                  "fold-constants", "cse", "dce", "batch-norm-from-moments", "one-pass-moments", "fuse-elementwise",
                                                  "fuse-reductions", "fuse-norm-activation", "fuse-conv-epilogue", "fuse-concat", "matmul-layout", "select-conv-algorithm",
                                                  "prepare-weights", "schedule-updates", "dce", "rematerialize", "fuse-conv-prologue", "split-conv-grad-input", "fuse-conv-gather", "group-loops",
                                                  "fuse-conv-moments", "plan-memory"])
        XCTAssertEqual(Set(PassManager.knownPassNames), Set(dataParallel.map(\.name)))
        XCTAssertEqual(Set(passesByName.keys), Set(PassManager.knownPassNames), "the tests know every pass")
        for name in PassManager.knownPassNames {
            XCTAssertTrue(name.allSatisfy { $0.isLowercase || $0 == "-" }, "\(name) is kebab-case")
        }
        let (_, records, module) = try run(pipeline) { _ in }
        XCTAssertEqual(records.map(\.name), pipeline.map(\.name))
        // This step has no convolution, batch norm, concatenation nor permute: batch-norm-from-moments,
        // one-pass-moments, fuse-norm-activation, fuse-conv-epilogue, fuse-concat, matmul-layout,
        // select-conv-algorithm and prepare-weights find nothing,
        // and fuse-elementwise and fuse-reductions remove what they absorb, so the last DCE has
        // nothing to do; schedule-updates moves each weight's update up to its gradient; nothing is worth
        // recomputing, nor a convolution to take a prologue, have its input gradient split or read its input
        // from its parts; group-loops puts the optimizer's step into one loop.
        XCTAssertEqual(records.map(\.changed), [false, true, true, true, true, true, false, false, true, true, false, false, false, false, false,
                                                 false, true, false, false, false, false, false, true, true])
        XCTAssertEqual(records.last?.nodesAfter, module.functions[0].nodes.count)
        XCTAssertNotNil(module.functions[0].arenaBytes)
        XCTAssertNotNil(module.functions[0].argument(named: "opt.m.w"))
    }

    func testPrintIRAfterOnePass() throws {
        let (output, _, _) = try run(PassManager.standardPipeline()) { $0.printAfter = ["autodiff"] }
        XCTAssertEqual(occurrences(of: "IR after", in: output), 1, output)
        XCTAssertTrue(output.hasPrefix("// ----- IR after autodiff -----\n"), output)
        // The dump is the whole module at that point, and parses back.
        let dumped = try Parser.parse(output)
        try Verifier.verify(dumped)
        XCTAssertNotNil(dumped.functions[0].output(named: "grad:w"))
        XCTAssertNil(dumped.functions[0].argument(named: "opt.m.w"), "printed before the optimizer ran")
    }

    func testPrintIRAfterAllAndAfterChange() throws {
        let pipeline = PassManager.standardPipeline()
        let (all, _, _) = try run(pipeline) { $0.printAfter = ["all"] }
        XCTAssertEqual(occurrences(of: "IR after", in: all), pipeline.count)
        XCTAssertEqual(occurrences(of: "IR after dce -----", in: all), 2, "a pass that runs twice prints twice")
        // infer-shapes finds nothing to fix in built IR, nor batch-norm-from-moments and
        // fuse-norm-activation a batch norm, nor fuse-conv-epilogue, select-conv-algorithm and prepare-weights a convolution, nor
        // fuse-concat a concatenation, nor matmul-layout a permute, nor the last DCE anything dead, nor
        // rematerialize anything to recompute, nor fuse-conv-prologue, split-conv-grad-input and fuse-conv-gather a convolution, nor
        // one-pass-moments a batch norm: with printAfterChange they stay quiet.
        let (changed, _, _) = try run(pipeline) {
            $0.printAfter = ["all"]
            $0.printAfterChange = true
        }
        XCTAssertEqual(occurrences(of: "IR after", in: changed), pipeline.count - 14)
        XCTAssertFalse(changed.contains("IR after infer-shapes"))
        XCTAssertFalse(changed.contains("IR after fuse-conv-epilogue"))
        let (quiet, _, _) = try run([InferShapes()]) {
            $0.printAfter = ["infer-shapes"]
            $0.printAfterChange = true
        }
        XCTAssertEqual(quiet, "")
        let (none, _, _) = try run(pipeline) { _ in }
        XCTAssertEqual(none, "", "nothing is printed unless asked")
    }

    func testDumpDirectoryWritesOneParsableFilePerPass() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-passes-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let pipeline = PassManager.standardPipeline()
        let (output, _, final) = try run(pipeline) { $0.dumpDirectory = dir.appendingPathComponent("nested") }
        XCTAssertEqual(output, "")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("nested").path).sorted()
        let expected = ["00-input.ddir"] + pipeline.enumerated().map { String(format: "%02d-", $0 + 1) + $1.name + ".ddir" }
        XCTAssertEqual(files, expected)
        XCTAssertEqual(expected.prefix(3), ["00-input.ddir", "01-infer-shapes.ddir", "02-autodiff.ddir"])
        for name in files {
            let text = try String(contentsOf: dir.appendingPathComponent("nested").appendingPathComponent(name), encoding: .utf8)
            let module = try Parser.parse(text, name: name)
            try Verifier.verify(module)
            if name == "00-input.ddir" { XCTAssertEqual(module, try self.module()) }
            if name == files.last { XCTAssertEqual(module, final) }
        }
    }

    func testTimePassesPrintsATable() throws {
        let pipeline = PassManager.standardPipeline()
        let (output, records, _) = try run(pipeline) { $0.timePasses = true }
        let lines = output.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "=== pass timing ===")
        XCTAssertEqual(lines.count, pipeline.count + 2, output)
        for (line, record) in zip(lines.dropFirst(), records) {
            XCTAssertTrue(line.hasPrefix("  " + record.name + " "), line)
            XCTAssertTrue(line.contains(" ms "), line)
            XCTAssertTrue(line.hasSuffix(" nodes"), line)
            XCTAssertEqual(line.contains("changed"), record.changed, line)
            XCTAssertTrue(line.contains(" \(record.nodesAfter) nodes"), line)
        }
        XCTAssertTrue(lines.last!.hasPrefix("  total "), output)
        XCTAssertTrue(records.allSatisfy { $0.seconds >= 0 })
    }

    // MARK: - Broken passes

    /// Retypes the first node: invalid IR.
    struct BreakTypes: Pass {
        static let name = "break-types"
        func run(_ module: inout Module) throws -> Bool {
            module.functions[0].nodes[0].type = .f32([7])
            return true
        }
    }

    /// Moves the last node to the front: uses before definitions.
    struct Reorder: Pass {
        static let name = "reorder"
        func run(_ module: inout Module) throws -> Bool {
            let last = module.functions[0].nodes.removeLast()
            module.functions[0].nodes.insert(last, at: 0)
            return true
        }
    }

    struct Throwing: Pass {
        static let name = "throwing"
        func run(_ module: inout Module) throws -> Bool {
            throw IRError("cannot handle %3", loc: SourceLoc(file: "model.swift", line: 3))
        }
    }

    func testInvalidIRIsReportedWithThePassName() throws {
        XCTAssertThrowsError(try run([DCE(), BreakTypes(), DCE()]) { _ in }) { error in
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix("model.swift:3: error: IR is invalid after pass break-types: in @step:"), text)
            XCTAssertTrue(text.contains("mul(f32[2,3], f32[3]) produces f32[2,3] but the node is typed f32[7]"), text)
            XCTAssertTrue(text.contains("%3 = mul(%0, %1) : f32[7] loc(\"model.swift\":3)"), text)
        }
        XCTAssertThrowsError(try run([Reorder()]) { _ in }) { error in
            XCTAssertTrue("\(error)".contains("IR is invalid after pass reorder: in @step: operand %6 is used before it is defined"), "\(error)")
        }
        XCTAssertThrowsError(try run([Throwing()]) { _ in }) { error in
            XCTAssertEqual("\(error)", "model.swift:3: error: pass throwing: cannot handle %3")
        }
        // With verification off the broken IR goes through (--no-verify).
        XCTAssertNoThrow(try run([BreakTypes()]) { $0.verifyEachPass = false })
    }

    func testInvalidInputIsReportedBeforeAnyPass() throws {
        var module = try module()
        module.functions[0].nodes[1].type = .f32([2])
        var ran = false
        struct Spy: Pass {
            static let name = "spy"
            let ran: () -> Void
            func run(_ module: inout Module) throws -> Bool { ran(); return false }
        }
        XCTAssertThrowsError(try PassManager([Spy { ran = true }]).run(&module)) { error in
            XCTAssertTrue("\(error)".contains("constant() produces f32[] but the node is typed f32[2]"), "\(error)")
        }
        XCTAssertFalse(ran)
    }
}
