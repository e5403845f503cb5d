import IR
import TestSupport
import XCTest

/// The textual IR: malformed text gives an error at its line and column and
/// never a crash; comments are skipped anywhere whitespace may be.
final class ParserTests: XCTestCase {
    let valid = """
    func @step(%0: f32[2,3] input "x", %1: f32[3] param "w" init=normal(0.02), %2: f32[3] state "s" init=zeros) arena 128 {
      %3 = mul(%0, %1) : f32[2,3] @0 loc("model.swift":4)
      %4 = reduce_sum(%3) {axes=[0], keepdims=false} : f32[3] @64
      %5 = fused_elementwise(%4, %2) {expr=add(mul(in0, 0.5), in1)} : f32[3]
      %6 = constant() {dtype="f64", value=-2.5e-3} : f64[]
      return %3 as "y", %6 as "c"
      update %2 = %5
    }

    """

    /// `position` "line:column", or nil for any line:column.
    func expectError(_ text: String, _ position: String?, _ message: String,
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Parser.parse(text, name: "bad.ddir"), file: file, line: line) { error in
            let text = "\(error)"
            if let position {
                XCTAssertTrue(text.contains("bad.ddir:\(position): \(message)"), "expected bad.ddir:\(position): \(message)\ngot: \(text)",
                              file: file, line: line)
            } else {
                let place = text.components(separatedBy: "bad.ddir:").dropFirst().first?.components(separatedBy: ": ").first ?? ""
                XCTAssertEqual(place.split(separator: ":").compactMap { Int($0) }.count, 2, "line:column in \(text)", file: file, line: line)
                XCTAssertTrue(text.contains(": \(message)"), text, file: file, line: line)
            }
        }
    }

    func testValidTextParsesAndRoundTrips() throws {
        let module = try Parser.parse(valid)
        try Verifier.verify(module)
        let f = module.functions[0]
        XCTAssertEqual(f.args.map(\.initRule), [nil, .normal(0.02), .zeros])
        XCTAssertEqual(f.arenaBytes, 128)
        XCTAssertEqual(f.nodes.map(\.arenaOffset), [0, 64, nil, nil])
        XCTAssertEqual(f.nodes[0].loc, SourceLoc(file: "model.swift", line: 4))
        XCTAssertEqual(f.nodes[1].attrs["keepdims"], .bool(false))
        XCTAssertEqual(f.nodes[3].attrs["value"], .float(-2.5e-3))
        XCTAssertEqual(f.updates, [Update(target: 2, value: 5)])
        XCTAssertEqual(Printer.print(try Parser.parse(Printer.print(module))), Printer.print(module))
    }

    func testUnterminatedString() {
        // (Reported where the text ends.)
        expectError("func @f(%0: f32[2] input \"x) {\n}\n", nil, "unterminated string")
        expectError("func @f(%0: f32[2] input \"x\") {\n  %1 = exp(%0) : f32[2] loc(\"m.swift:3)\n}", nil, "unterminated string")
        expectError("func @f(%0: f32[2] input \"x\\", nil, "unterminated string")
    }

    func testUnknownElementType() {
        expectError("func @f(%0: f16[2] input \"x\") {\n}", "1:16", "unknown element type 'f16'")
        expectError("func @f(%0: f32[2] input \"x\") {\n  %1 = exp(%0) : float[2]\n}", "2:23", "unknown element type 'float'")
    }

    func testMissingParenthesis() {
        expectError("func @f(%0: f32[2] input \"x\", %1: f32[2] input \"y\") {\n  %2 = add(%0, %1 : f32[2]\n}", "2:19", "expected ')'")
        expectError("func @f(%0: f32[2] input \"x\" {\n}", "1:30", "expected ')'")
    }

    func testUnknownRole() {
        expectError("func @f(%0: f32[2] inputs \"x\") {\n}", "1:26", "unknown argument role 'inputs' (input, param, frozen or state)")
    }

    func testOtherErrorsNameTheirPlace() {
        expectError("func @f() {\n  %1 = tanhh() : f32[]\n}", "2:13", "unknown op 'tanhh'")
        expectError("func @f() {\n  %1 = constant() {value=abc} : f32[]\n}", "2:29", "cannot read attribute value 'abc'")
        expectError("func @f(%0: f32[2] param \"w\" init=uniform) {\n}", "1:42", "unknown init rule 'uniform'")
        expectError("func @f(%0: f32[2,x] input \"x\") {\n}", "1:20", "expected an integer, found 'x'")
        expectError("fun @f() {\n}", "1:1", "expected 'func'")
        expectError("func @f() {\n  return %1 \"y\"\n}", "2:13", "expected 'as'")
    }

    /// A shape whose byte size overflows Int, or a negative dimension, is
    /// refused where it is written instead of trapping in a later pass.
    func testOversizedAndNegativeShapesAreRefusedWhereWritten() {
        expectError("func @infer(%0: f32[4611686018427387904,4] input \"x\") {\n}", "1:17",
                    "tensor f32[4611686018427387904,4] is too large (its byte size overflows)")
        expectError("func @f(%0: f32[2] input \"x\") {\n  %1 = exp(%0) : f32[3037000500,3037000500]\n}", "2:18",
                    "tensor f32[3037000500,3037000500] is too large")
        expectError("func @f() {\n  %1 = constant() {value=1} : f32[-5]\n}", "2:31", "tensor f32[-5] has a negative dimension")
        expectError("func @f() arena -5 {\n}", nil, "arena size -5 is negative")
    }

    /// parseLocated records the line that wrote each node, per function.
    func testParseLocatedRecordsTheLineOfEveryNode() throws {
        let (module, written) = try Parser.parseLocated(valid + "// second\nfunc @g() {\n\n  %0 = constant() {value=1} : f32[]\n}\n",
                                                        name: "v.ddir")
        XCTAssertEqual(module.functions.map(\.nodes.count), [4, 1])
        XCTAssertEqual(written.map { $0.map(\.line) }, [[2, 3, 4, 5], [12]])
        XCTAssertEqual(written[1][0].file, "v.ddir")
    }

    func testCommentsAreSkipped() throws {
        let text = """
        // A module with comments everywhere whitespace may be.
        func @f( // the arguments
          %0: f32[2] input "x//not a comment", // trailing
          %1: f32[2] param "w"
        ) {
          // a node follows
          %2 = mul(%0, %1) : f32[2] // after a node
          // CHECK-style lines are comments too
          return %2 as "y" // the result
        } // end
        // last line without a newline
        """
        let module = try Parser.parse(text)
        try Verifier.verify(module)
        XCTAssertEqual(module.functions[0].args[0].name, "x//not a comment")
        XCTAssertEqual(module.functions[0].nodes.count, 1)
        XCTAssertEqual(module.functions[0].outputs, [Output(value: 2, name: "y")])
        XCTAssertEqual(try Parser.parse("// only a comment"), Module())
        XCTAssertEqual(try Parser.parse(""), Module())
    }

    func testTruncatedAndMutatedTextNeverCrashes() {
        // Every prefix of a valid module, and many single-byte corruptions of it,
        // either parse or throw an IRError at a line:column — never trap.
        let bytes = Array(valid.utf8)
        var errors = 0
        func attempt(_ text: String) {
            do {
                let module = try Parser.parse(text, name: "t.ddir")
                _ = try? Verifier.verify(module)
            } catch let error as IRError {
                errors += 1
                XCTAssertTrue(error.message.hasPrefix("t.ddir:"), error.message)
                let place = error.message.dropFirst(7).prefix { $0 != " " }
                XCTAssertEqual(place.split(separator: ":").count, 2, "line:column in \(error.message)")
            } catch {
                XCTFail("not an IRError: \(error)")
            }
        }
        for length in 0..<bytes.count { attempt(String(decoding: bytes[..<length], as: UTF8.self)) }
        var rng = TestRNG(seed: 17)
        let replacements = Array("%@(){}[],:=\"\\ \n/-.0123456789azAZ_".utf8) + [0, 0xFF]
        for _ in 0..<1500 {
            var mutated = bytes
            let position = Int(rng.next() % UInt64(bytes.count))
            switch rng.next() % 3 {
            case 0: mutated[position] = replacements[Int(rng.next() % UInt64(replacements.count))]
            case 1: mutated.remove(at: position)
            default: mutated.insert(replacements[Int(rng.next() % UInt64(replacements.count))], at: position)
            }
            attempt(String(decoding: mutated, as: UTF8.self))
        }
        XCTAssertGreaterThan(errors, bytes.count - 2)
    }
}
