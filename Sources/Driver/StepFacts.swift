import Codegen
import Foundation
import IR
import Runtime

/// Floating-point work of the compute-bound ops (the ones whose spec counts
/// its FLOPs: convolutions, their gradients and fused forms, matmul), the
/// part that can approach the machine's peak.
public enum FlopCounter {
    public static func gemmFlops(_ function: Function) -> Double {
        flopsByNode(function).values.reduce(0, +)
    }

    /// The counted FLOPs of each node that has any, by value id.
    public static func flopsByNode(_ function: Function) -> [Int: Double] {
        var types = function.types
        var flops: [Int: Double] = [:]
        for node in function.nodes {
            if let rule = OpRegistry.spec(node.op)?.flops {
                flops[node.id] = rule(node.operands.map { types[$0]! }, node.type, node.attrs)
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
            let calls = kernelCalls ? try Lowerer.lower(function, layout: artifact.manifest.layout).kernelCalls : []
            facts[name] = StepFacts(flops: FlopCounter.gemmFlops(function), kernelCalls: withFlops(calls, of: function))
        }
        return facts
    }

    /// `calls` with each node's counted FLOPs on its first call other than
    /// the scratch loans made around it, 0 on the others.
    static func withFlops(_ calls: [(kernel: String, node: String, scratchLoan: Bool)], of function: Function) -> [KernelCall] {
        let perNode = FlopCounter.flopsByNode(function)
        var counted = Set<String>()
        return calls.map { kernel, node, scratchLoan in
            guard !scratchLoan, counted.insert(node).inserted else { return (kernel, node, 0) }
            // The printed node begins with its value, "%176 = ...".
            let id = node.hasPrefix("%") ? Int(node.dropFirst().prefix { $0.isNumber }) : nil
            return (kernel, node, id.flatMap { perNode[$0] } ?? 0)
        }
    }
}
