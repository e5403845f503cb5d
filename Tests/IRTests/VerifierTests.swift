import IR
import TestSupport
import XCTest

/// Each verifier diagnostic names the function, the node as printed, its
/// operand types where there are any, and the model-file line that created
/// the node (the IRError's location, printed first).
final class VerifierTests: XCTestCase {
    let loc = SourceLoc(file: "model.swift", line: 42)

    /// x: f32[2,3], w: f32[3] param, s: f32[3] state; y = tanh(x·w).
    func valid() -> Function {
        let b = FunctionBuilder(name: "step")
        let x = b.argument("x", .f32([2, 3]), role: .input)
        let w = b.argument("w", .f32([3]), role: .param)
        let s = b.argument("s", .f32([3]), role: .state)
        b.currentLoc = loc
        let y = try! b.unary("tanh", try! b.mul(x, w))
        b.output(y, name: "y")
        b.update(s, with: try! b.add(s, w))
        return b.function
    }

    func expectError(_ function: Function, _ fragments: [String], loc expected: SourceLoc?,
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Verifier.verify(function), file: file, line: line) { error in
            guard let error = error as? IRError else { return XCTFail("not an IRError: \(error)", file: file, line: line) }
            let text = "\(error)"
            XCTAssertTrue(text.contains("in @step"), "names the function: \(text)", file: file, line: line)
            for fragment in fragments {
                XCTAssertTrue(text.contains(fragment), "missing \"\(fragment)\" in:\n\(text)", file: file, line: line)
            }
            XCTAssertEqual(error.loc, expected, file: file, line: line)
            if let expected { XCTAssertTrue(text.hasPrefix("\(expected): error: "), text, file: file, line: line) }
        }
    }

    func testValidFunctionVerifies() throws {
        XCTAssertNoThrow(try Verifier.verify(valid()))
        XCTAssertNoThrow(try Verifier.verify(Module(functions: [valid()])))
    }

    func testUseBeforeDefinition() {
        var f = valid()
        f.nodes.swapAt(0, 1)  // tanh now reads the mul below it
        expectError(f, ["operand %3 is used before it is defined",
                        "in: %4 = tanh(%3) : f32[2,3] loc(\"model.swift\":42)"], loc: loc)
    }

    func testUndefinedOperand() {
        var f = valid()
        f.nodes[1].operands = [99]
        expectError(f, ["operand %99 is used before it is defined", "in: %4 = tanh(%99)"], loc: loc)
    }

    func testDuplicateValue() {
        var f = valid()
        f.nodes[1].id = 3
        expectError(f, ["value %3 is defined twice", "in: %3 = tanh(%3) : f32[2,3] loc(\"model.swift\":42)"], loc: loc)
        var g = valid()
        g.args[1].id = 0
        expectError(g, ["value %0 is defined twice"], loc: nil)
    }

    func testWrongResultType() {
        var f = valid()
        f.nodes[0].type = .f32([3])
        expectError(f, ["mul(f32[2,3], f32[3]) produces f32[2,3] but the node is typed f32[3]",
                        "in: %3 = mul(%0, %1) : f32[3] loc(\"model.swift\":42)"], loc: loc)
    }

    func testOperandsThatDoNotFitTheOp() {
        var f = valid()
        f.args[1].type = .f32([4])
        expectError(f, ["mul(f32[2,3], f32[4]): shapes do not broadcast",
                        "in: %3 = mul(%0, %1) : f32[2,3] loc(\"model.swift\":42)"], loc: loc)
        var g = valid()
        g.nodes[1].operands = [3, 3]
        expectError(g, ["tanh takes 1 operands, got 2", "tanh(f32[2,3], f32[2,3])"], loc: loc)
        var h = valid()
        h.nodes[0].loc = nil
        h.nodes[0].operands = [0]
        expectError(h, ["mul(f32[2,3]): mul takes 2 operands, got 1", "in: %3 = mul(%0) : f32[2,3]"], loc: nil)
    }

    /// Types inferred from legal operands can still be too large to count
    /// in an Int; the verifier refuses them before memory planning traps.
    func testTypesWhoseByteSizeOverflows() {
        var f = valid()
        f.args[0].type = .f32([3037000500, 1])
        f.args[1].type = .f32([3037000500])
        f.nodes[0].type = .f32([3037000500, 3037000500])
        expectError(f, ["mul produces f32[3037000500,3037000500], which is too large (its byte size overflows)"], loc: loc)
        var g = valid()
        g.args[0].type = .f32([Int.max, 2])
        expectError(g, ["argument \"x\" f32[9223372036854775807,2] is too large"], loc: nil)
    }

    func testUnknownOp() {
        var f = valid()
        f.nodes[1].op = "tanhh"
        expectError(f, ["unknown op 'tanhh'", "in: %4 = tanhh(%3)"], loc: loc)
        // The parser already refuses it, at its line and column.
        XCTAssertThrowsError(try Parser.parse(Printer.print(f), name: "m.ddir")) { error in
            XCTAssertTrue("\(error)".contains("m.ddir:3:") && "\(error)".contains("unknown op 'tanhh'"), "\(error)")
        }
    }

    func testUpdateOfAnInputArgument() {
        var f = valid()
        f.updates[0].target = 0
        expectError(f, ["update target %0 \"x\" has role input; only param and state arguments can be updated"], loc: nil)
        var g = valid()
        g.updates[0].target = 77
        expectError(g, ["update target %77 is not an argument"], loc: nil)
    }

    func testUpdateTypeMismatch() {
        var f = valid()
        f.updates[0].value = 4  // tanh's f32[2,3] into the f32[3] state
        expectError(f, ["update of \"s\" (f32[3]) with a f32[2,3] value"], loc: nil)
        var g = valid()
        g.updates.append(g.updates[0])
        expectError(g, ["\"s\" is updated twice"], loc: nil)
        var h = valid()
        h.updates[0].value = 1234
        expectError(h, ["update of \"s\" uses undefined %1234"], loc: nil)
    }

    func testDuplicateArgumentNames() {
        var f = valid()
        f.args[2].name = "w"
        expectError(f, ["argument name \"w\" is used twice"], loc: nil)
    }

    func testUndefinedOutput() {
        var f = valid()
        f.outputs[0].value = 50
        expectError(f, ["output \"y\" refers to undefined %50"], loc: nil)
    }

    func testDuplicateFunctionNames() {
        XCTAssertThrowsError(try Verifier.verify(Module(functions: [valid(), valid()]))) { error in
            XCTAssertEqual("\(error)", "error: function @step is defined twice")
        }
    }

    func testBuilderReportsShapeErrorsAtTheSourceLine() {
        let b = FunctionBuilder(name: "step")
        let x = b.argument("x", .f32([2, 3]), role: .input)
        let w = b.argument("w", .f32([4]), role: .param)
        b.currentLoc = loc
        XCTAssertThrowsError(try b.mul(x, w)) { error in
            XCTAssertEqual("\(error)", "model.swift:42: error: mul(f32[2,3], f32[4]): shapes do not broadcast")
        }
    }

    /// A norm's eps is range-checked: a negative or non-finite one would make
    /// every output NaN or silently wrong.
    func testNormEpsMustBeFiniteAndNonNegative() throws {
        for eps in ["-1.0", "nan", "inf"] {
            let source = """
                func @f(%0: f32[2,3,4,4] input "x", %1: f32[3] input "m", %2: f32[3] input "v", %3: f32[3] param "g", %4: f32[3] param "b") {
                  %5 = batch_norm(%0, %1, %2, %3, %4) {eps=\(eps)} : f32[2,3,4,4]
                  return %5 as "y"
                }
                """
            XCTAssertThrowsError(try Verifier.verify(try Parser.parse(source)), eps) { error in
                XCTAssertTrue("\(error)".contains("must be a finite number ≥ 0"), "\(eps): \(error)")
            }
        }
    }
}
