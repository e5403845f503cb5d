import Foundation
import IR
import Passes
import Runtime
import Driver
import TestSupport
import XCTest

/// Every op example, compiled by both backends, agrees with the f64
/// reference interpreter. All examples go into one module (one function per
/// example) so each backend compiles once.
final class OpAgreementTests: XCTestCase {
    func testEveryOpAgreesAcrossInterpreterCAndLLVM() throws {
        var module = Module()
        var arguments: [String: [String: HostTensor]] = [:]
        for spec in OpRegistry.all {
            for (index, example) in spec.examples.enumerated() {
                var function = try singleOpFunction(spec, operands: example.operands, attrs: example.attrs, withLoss: false)
                function.name = "op_\(spec.name)_\(index)"
                // Weight names are global across entry points: make them unique.
                for a in function.args.indices { function.args[a].name = "\(function.name).\(function.args[a].name)" }
                var rng = TestRNG(seed: UInt64(index + 3))
                var args: [String: HostTensor] = [:]
                for (i, arg) in function.args.enumerated() {
                    args[arg.name] = sampleTensor(arg.type, op: spec.name, operand: i, rng: &rng)
                }
                arguments[function.name] = args
                module.functions.append(function)
            }
        }
        let expected = try Dictionary(uniqueKeysWithValues: module.functions.map { f in
            (f.name, try Interpreter.run(f, arguments: arguments[f.name]!).outputs["result"]!)
        })
        for backend in Backend.allCases {
            let executor = try compile(module, backend: backend)
            for function in module.functions {
                var inputs: [String: HostTensor] = [:]
                for arg in function.args {
                    if arg.role == .input { inputs[arg.name] = arguments[function.name]![arg.name] }
                    else { try executor.set(arg.name, arguments[function.name]![arg.name]!) }
                }
                let got = try executor.run(function.name, inputs: inputs)["result"]!
                // f32 code against the f64 oracle on O(1) data.
                let worst = closeness(got.data, expected[function.name]!.data, atol: 1e-5, rtol: 1e-4)
                XCTAssertLessThanOrEqual(worst, 1, "\(backend) \(function.name): \(got.data.prefix(6)) vs \(expected[function.name]!.data.prefix(6))")
            }
        }
    }
}

/// Compile a module into a temporary artifact and load it.
func compile(_ module: Module, backend: Backend) throws -> Executor {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-test-\(UUID().uuidString)")
    // The loaded library stays mapped after its file is removed.
    defer { try? FileManager.default.removeItem(at: dir) }
    var options = CompileOptions()
    options.backend = backend
    let artifact = dir.appendingPathComponent("test.ddepc")
    _ = try CompileDriver.compile(module, to: artifact, options: options)
    return try Executor(artifact: try Artifact(directory: artifact))
}
