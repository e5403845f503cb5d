import Codegen
import Foundation
import IR
import Runtime

/// Floating-point work of the compute-bound ops (the ones whose spec counts
/// its FLOPs: convolutions, their gradients and fused forms, matmul), the
/// part that can approach the machine's peak.
public enum FlopCounter {
    public static func gemmFlops(_ function: Function) -> Double {
        var types = function.types
        var flops = 0.0
        for node in function.nodes {
            if let rule = OpRegistry.spec(node.op)?.flops {
                flops += rule(node.operands.map { types[$0]! }, node.type, node.attrs)
            }
            types[node.id] = node.type
        }
        return flops
    }
}

extension StepFacts {
    /// Each of `entries`' counted FLOPs and, with `kernelCalls`, its kernel
    /// calls as the artifact's code makes them, from its final.ddir.
    public static func read(_ artifact: Artifact, entries: [String], kernelCalls: Bool) throws -> [String: StepFacts] {
        // The op registry lives for the process: built before the parse, it
        // does not sit among the parse's pages and keep them resident.
        _ = OpRegistry.spec("add")
        let module = try Parser.parse(try artifact.finalIR)
        var facts: [String: StepFacts] = [:]
        for name in entries {
            guard let function = module.function(named: name) else { throw RuntimeError("the artifact's IR has no function '\(name)'") }
            facts[name] = StepFacts(flops: FlopCounter.gemmFlops(function),
                                    kernelCalls: kernelCalls ? try Lowerer.lower(function, layout: artifact.manifest.layout).kernelCalls : [])
        }
        return facts
    }
}
