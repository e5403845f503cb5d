import Foundation
import IR

/// A transformation of a whole module. Returns whether it changed anything.
public protocol Pass {
    /// kebab-case, as used by --print-ir-after.
    static var name: String { get }
    func run(_ module: inout Module) throws -> Bool
}

extension Pass {
    public var name: String { Self.name }
}

/// A pass that replaces nodes of each function by fused ones, leaving the
/// nodes they absorbed dead, which it then removes.
protocol NodeFusionPass: Pass {
    func fuse(_ function: inout Function) throws -> Bool
}

extension NodeFusionPass {
    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            changed = try fuse(&module.functions[f]) || changed
        }
        if changed { _ = try DCE().run(&module) }
        return changed
    }
}

public struct PassOptions {
    /// Pass names after which to print the IR; "all" prints after every pass.
    public var printAfter: Set<String> = []
    /// Print only after passes that changed the module.
    public var printAfterChange = false
    /// Write one numbered `.ddir` file per pass here.
    public var dumpDirectory: URL?
    public var timePasses = false
    public var verifyEachPass = true
    /// Where printed IR and timings go.
    public var emit: (String) -> Void = { print($0, terminator: "") }

    public init() {}
}

/// What one pass did: for --time-passes and --pass-stats.
public struct PassRecord {
    public var name: String
    public var seconds: Double
    public var changed: Bool
    public var nodesAfter: Int
}

/// Runs passes in order, verifying after each and dumping IR as asked.
public struct PassManager {
    public var passes: [any Pass]
    public var options: PassOptions

    public init(_ passes: [any Pass], options: PassOptions = PassOptions()) {
        self.passes = passes
        self.options = options
    }

    /// The compiler's pipeline, from built entry points to planned code.
    /// Without an optimizer the training steps keep their gradients as
    /// `grad:<param>` outputs and update no weight (gradient checks use this).
    /// `dataParallel` adds the passes of a step that runs on several
    /// processes: batch statistics and gradients averaged across them.
    /// `convAlgorithm` is select-conv-algorithm's mode and `convCosts` its
    /// measured costs (`ddepc tune`); `panelRows` the GEMM
    /// panels prepare-weights packs filters for (nil: no prepare-weights);
    /// `memoryBudget` rematerialize's (live arena bytes per step).
    /// `momentsInEpilogue` adds fuse-conv-moments (see there why it is not
    /// the default).
    public static func standardPipeline(optimizer: AdamOptimizer? = AdamOptimizer(), dataParallel: Bool = false,
                                        convAlgorithm: SelectConvAlgorithm.Mode = .auto, convCosts: ConvCostTable? = nil,
                                        panelRows: Int? = defaultPanelRows, memoryBudget: Int? = nil,
                                        momentsInEpilogue: Bool = false) -> [any Pass] {
        var passes: [any Pass] = [InferShapes()]
        if dataParallel { passes.append(SyncBatchNorm()) }
        passes.append(Autodiff())
        if dataParallel { passes.append(AllReduceGradients()) }
        if let optimizer { passes.append(optimizer) }
        let rest: [any Pass] = [FoldConstants(), CSE(), DCE(), BatchNormFromMoments(), OnePassMoments(), FuseElementwise(), FuseReductions(), FuseNormActivation(), FuseConvEpilogue(), FuseConcat(),
                                MatmulLayout(), SelectConvAlgorithm(mode: convAlgorithm, weightsPrepared: panelRows != nil, costs: convCosts)]
        let prepare: [any Pass] = panelRows.map { [PrepareWeights(panelRows: $0)] } ?? []
        let moments: [any Pass] = momentsInEpilogue ? [FuseConvMoments()] : []
        return passes + rest + prepare + [ScheduleUpdates(), DCE(), Rematerialize(memoryBudget: memoryBudget), FuseConvPrologue(), SplitConvGradInput(), FuseConvGather(), GroupLoops()]
            + moments + [PlanMemory()]
    }

    /// The AVX-512 micro-kernel's panel rows; the compile driver passes the
    /// machine's own.
    public static let defaultPanelRows = ConvOps.widestPanelRows

    public static var knownPassNames: [String] {
        [InferShapes.name, SyncBatchNorm.name, Autodiff.name, AllReduceGradients.name, AdamOptimizer.name, FoldConstants.name, CSE.name, DCE.name,
         BatchNormFromMoments.name, OnePassMoments.name, FuseElementwise.name, FuseReductions.name, FuseNormActivation.name,
         FuseConvEpilogue.name, FuseConcat.name, MatmulLayout.name, SelectConvAlgorithm.name, PrepareWeights.name, ScheduleUpdates.name, Rematerialize.name, FuseConvPrologue.name, SplitConvGradInput.name, FuseConvGather.name, GroupLoops.name, FuseConvMoments.name, PlanMemory.name]
    }

    @discardableResult
    public func run(_ module: inout Module) throws -> [PassRecord] {
        // infer-shapes repairs result types itself (and reports what it cannot),
        // so hand-written input is verified after it rather than before.
        if options.verifyEachPass, !(passes.first is InferShapes) { try Verifier.verify(module) }
        try dump(module, index: 0, name: "input", changed: true)
        var records: [PassRecord] = []
        for (index, pass) in passes.enumerated() {
            let start = DispatchTime.now().uptimeNanoseconds
            let changed: Bool
            do {
                changed = try pass.run(&module)
            } catch let error as IRError {
                throw IRError("pass \(pass.name): \(error.message)", loc: error.loc)
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            do {
                if options.verifyEachPass { try Verifier.verify(module) }
                // Always: a placement error would corrupt activations silently.
                if pass is PlanMemory { try Verifier.verifyPlacement(module) }
            } catch let error as IRError {
                throw IRError("IR is invalid after pass \(pass.name): \(error.message)", loc: error.loc)
            }
            records.append(PassRecord(name: pass.name, seconds: seconds, changed: changed,
                                      nodesAfter: module.functions.reduce(0) { $0 + $1.nodes.count }))
            try dump(module, index: index + 1, name: pass.name, changed: changed)
        }
        if options.timePasses {
            var text = "=== pass timing ===\n"
            for r in records {
                text += "  " + r.name.padding(toLength: 24, withPad: " ", startingAt: 0)
                    + String(format: "%9.3f ms  %@  %6d nodes\n", r.seconds * 1000, r.changed ? "changed" : "       ", r.nodesAfter)
            }
            text += String(format: "  total %14.3f ms\n", records.reduce(0) { $0 + $1.seconds } * 1000)
            options.emit(text)
        }
        return records
    }

    private func dump(_ module: Module, index: Int, name: String, changed: Bool) throws {
        let wanted = options.printAfter.contains("all") || options.printAfter.contains(name)
        if wanted, changed || !options.printAfterChange, index > 0 {
            options.emit("// ----- IR after \(name) -----\n" + Printer.print(module))
        }
        if let dir = options.dumpDirectory {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let file = dir.appendingPathComponent(String(format: "%02d-%@.ddir", index, name))
            try Printer.print(module).write(to: file, atomically: true, encoding: .utf8)
        }
    }
}

/// Recomputes every node's type from its operands (for hand-written or
/// edited `.ddir` files) and reports the first mismatch with its location.
public struct InferShapes: Pass {
    public static let name = "infer-shapes"
    public init() {}

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            var types: [ValueID: TensorType] = [:]
            for arg in module.functions[f].args { types[arg.id] = arg.type }
            for n in module.functions[f].nodes.indices {
                let node = module.functions[f].nodes[n]
                let spec = try OpRegistry.require(node.op)
                // Hand-written input may be out of order; with --no-verify this pass sees it first.
                if let missing = node.operands.first(where: { types[$0] == nil }) {
                    throw IRError("in @\(module.functions[f].name): operand %\(missing) is used before it is defined\n  in: \(Printer.print(node))",
                                  loc: node.loc)
                }
                let operandTypes = node.operands.map { types[$0]! }
                let type: TensorType
                do {
                    type = try spec.checkedType(operands: operandTypes, attrs: node.attrs)
                } catch let error as IRError {
                    throw IRError("\(node.op)(\(operandTypes.map(\.description).joined(separator: ", "))): \(error.message)", loc: node.loc)
                }
                if type != node.type {
                    module.functions[f].nodes[n].type = type
                    changed = true
                }
                types[node.id] = type
            }
        }
        return changed
    }
}
