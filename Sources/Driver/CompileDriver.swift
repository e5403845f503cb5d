import ABI
import Codegen
import DDPKernels
import Foundation
import IR
import Passes
import Runtime

public enum Backend: String, CaseIterable, Sendable {
    case c, llvm
}

public struct CompileOptions {
    public var backend: Backend = .c
    public var passOptions = PassOptions()
    /// The in-graph optimizer of the training steps. nil compiles
    /// gradient-only steps: they return `grad:<param>` outputs beside the
    /// loss and leave the weights alone (parity tests compare gradients).
    public var optimizer: AdamOptimizer? = AdamOptimizer()
    public var batch = 4
    public var size = 64
    public var classes = 2
    /// Steps for `mpirun -np N ddepc train`: gradients (and batch statistics)
    /// averaged across the processes inside the step.
    public var dataParallel = false
    /// How convolutions are computed (select-conv-algorithm's mode).
    public var convAlgorithm: SelectConvAlgorithm.Mode = .auto
    /// What each algorithm took on this machine's convolutions (`ddepc
    /// tune`); `auto` then takes the fastest where the table has it.
    public var convCosts: ConvCostTable?
    /// Live arena bytes per step above which rematerialize computes
    /// convolutions and matmuls again (nil: only cheap copies).
    public var memoryBudget: Int?
    /// Convolutions gather the next batch norm's moments as they store
    /// their output (fuse-conv-moments), instead of batch_moments reading it.
    public var momentsInEpilogue = false
    /// Rows of the GEMM panels prepare-weights packs filters for; nil: this
    /// machine's micro-kernel's (tests choose others).
    public var panelRows: Int?
    /// Where the model came from (file path, zoo name), for the manifest.
    public var source = ""
    public init() {}
}

/// What a compile produced, with the numbers worth reporting.
public struct CompileReport {
    public var artifact: URL
    public var memory: [PlanMemory.Report]
    public var passSeconds: Double
    public var codegenSeconds: Double
    public var nodeCounts: [String: Int]
    /// Things the user should know, e.g. an entry point that needs more
    /// memory than this machine has.
    public var warnings: [String] = []
}

/// Module → passes → lowered code → C or LLVM → shared library → artifact.
public enum CompileDriver {
    /// No FMA contraction: the C and LLVM backends then round identically.
    public static let cFlags = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=off"]

    /// Host CPU features the generated code leaves alone: AVX-512 when the
    /// kernels run their AVX2 path (`DDEPC_ISA=avx2`) on a CPU that has it,
    /// so that the whole step, generated loops included, runs as on an
    /// AVX2-only machine of this kind (what `benchmarks/compare.sh --isa
    /// avx2` measures). A machine without AVX-512 has nothing to leave.
    static var disabledCPUFeatures: [String] {
        String(cString: ddp_gemm_isa()) == "avx2" && String(cString: ddp_cpu_isa()) == "avx512" ? ["avx512f"] : []
    }

    public static func compile(_ module: Module, to output: URL, options: CompileOptions) throws -> CompileReport {
        // Refuse a directory that is not ours before the work, not after it.
        if FileManager.default.fileExists(atPath: output.path) { try requireReplaceableArtifact(output) }
        recoverInterruptedInstall(of: output)
        var module = module
        let manager = PassManager(try pipeline(for: module, optimizer: options.optimizer, dataParallel: options.dataParallel,
                                                   convAlgorithm: options.convAlgorithm, convCosts: options.convCosts,
                                                   panelRows: options.panelRows ?? Int(ddp_gemm_panel_rows()),
                                                   memoryBudget: options.memoryBudget, momentsInEpilogue: options.momentsInEpilogue),
                                  options: options.passOptions)
        let passStart = Date()
        try manager.run(&module)
        let passSeconds = Date().timeIntervalSince(passStart)
        let memory = module.functions.map(PlanMemory.report(of:))

        let codegenStart = Date()
        let layout = try BufferLayout(module: module)
        let lowered = try module.functions.map { try Lowerer.lower($0, layout: layout) }
        let fm = FileManager.default
        let parent = output.deletingLastPathComponent()
        try fm.createDirectory(at: parent, withIntermediateDirectories: true)
        // Build beside the destination, then swap in: a failed compile never
        // destroys an artifact the user already had.
        let staging = parent.appendingPathComponent(".\(output.lastPathComponent).tmp-\(UUID().uuidString)")
        try fm.createDirectory(at: staging, withIntermediateDirectories: true)
        let cleanup = Interruption.shared.removeOnInterrupt(staging)
        defer {
            try? fm.removeItem(at: staging)
            Interruption.shared.forget(cleanup)
        }

        let library = staging.appendingPathComponent("module.so")
        var flags: [String]
        switch options.backend {
        case .c:
            let source = staging.appendingPathComponent("module.c")
            // The C compiler uses one core: the entry points are split into
            // one translation unit per core, compiled side by side.
            let parts = max(1, min(ProcessInfo.processInfo.activeProcessorCount, lowered.count))
            try CEmitter.emit(lowered, parts: parts).write(to: source, atomically: true, encoding: .utf8)
            flags = cFlags + disabledCPUFeatures.map { "-mno-" + $0 }
            do {
                if parts == 1 {
                    try runTool("cc", flags + ["-o", library.path, source.path, "-lm"])
                } else {
                    let objects = (0..<parts).map { staging.appendingPathComponent("module.part\($0).o") }
                    let compileFlags = flags.filter { $0 != "-shared" }
                    try concurrentPerformThrowing(iterations: parts) { part in
                        _ = try runTool("cc", compileFlags + ["-c", "-DDDP_PART=\(part)", "-o", objects[part].path, source.path])
                    }
                    try runTool("cc", ["-shared", "-o", library.path] + objects.map(\.path) + ["-lm"])
                    for object in objects { try? fm.removeItem(at: object) }
                }
            } catch let error as ToolError {
                throw RuntimeError("the C compiler rejected the generated code (a ddepc bug; please report it):\n\(error)")
            }
        case .llvm:
            // As with C, one module per core, compiled side by side.
            let parts = max(1, min(ProcessInfo.processInfo.activeProcessorCount, lowered.count))
            let objects = (0..<parts).map { staging.appendingPathComponent("module.part\($0).o") }
            try LLVMEmitter.emitObjects(lowered, to: objects, moduleName: output.deletingPathExtension().lastPathComponent,
                                        irOutput: staging.appendingPathComponent("module.ll"),
                                        disabledFeatures: disabledCPUFeatures)
            try LLVMEmitter.linkSharedLibrary(objects: objects, output: library)
            for object in objects { try? fm.removeItem(at: object) }
            flags = ["llvm:default<O3>", "cpu:host"] + disabledCPUFeatures.map { "-" + $0 }
        }
        let codegenSeconds = Date().timeIntervalSince(codegenStart)

        let optimizer = module.functions.contains(where: isCompiledStep) ? options.optimizer?.settings : nil
        let fingerprint = ArtifactFingerprint(batch: options.batch, size: options.size, classes: options.classes, layout: layout,
                                              optimizer: optimizer)
        let finalIR = fingerprint.line + "\n" + Printer.print(module)
        try finalIR.write(to: staging.appendingPathComponent("final.ddir"), atomically: true, encoding: .utf8)
        let manifest = Manifest(backend: options.backend.rawValue, irHash: Hashing.fnv1a(finalIR), source: options.source,
                                compileFlags: flags, batch: options.batch, size: options.size, classes: options.classes,
                                layout: layout, moduleHash: Hashing.fnv1a(try Data(contentsOf: library)),
                                dataParallel: module.functions.contains { $0.nodes.contains { $0.op == "allreduce" } } ? true : nil,
                                optimizer: optimizer)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(manifest).write(to: staging.appendingPathComponent("manifest.json"))

        try install(staging, at: output)
        var warnings = layout.entries.compactMap { entry -> String? in
            let bytes = MemoryBudget.bytes(of: entry, in: layout)
            guard bytes > MemoryBudget.physicalBytes else { return nil }
            return "@\(entry.name) needs \(ByteCount.text(bytes)) of memory, more than this machine has (\(ByteCount.text(MemoryBudget.physicalBytes))); it cannot run here. A smaller --batch or --size fits."
        }
        if let budget = options.memoryBudget {
            // Inference has nothing to recompute; only training steps are held to it.
            for entry in layout.entries where entry.arenaBytes > budget && !entry.trains.isEmpty {
                let held = memory.first { $0.function == entry.name }.map { report in
                    " At its peak it holds " + report.heldAtPeak.prefix(3).map(\.description).joined(separator: ", ") + "."
                } ?? ""
                warnings.append("@\(entry.name)'s arena is \(ByteCount.text(Double(entry.arenaBytes))), above --memory-budget \(ByteCount.text(Double(budget))): that is the least recomputing convolutions and matmuls got it to.\(held) A smaller --batch or --size lowers it further.")
            }
        }
        return CompileReport(artifact: output, memory: memory, passSeconds: passSeconds, codegenSeconds: codegenSeconds,
                             nodeCounts: Dictionary(uniqueKeysWithValues: module.functions.map { ($0.name, $0.nodes.count) }),
                             warnings: warnings)
    }

    /// A training step a previous compile already differentiated and gave its
    /// optimizer (the final IR of an artifact, as `dump-ir` prints it).
    static func isCompiledStep(_ function: Function) -> Bool {
        function.output(named: Autodiff.lossName) != nil && AdamOptimizer.inputNames.allSatisfy { function.argument(named: $0) != nil }
    }

    /// The standard pipeline; for a module of compiled steps (dump-ir
    /// output, optimized already) only what lowers it again: the choice of
    /// convolution algorithm (`--conv-algorithm` may ask for another), loop
    /// groups and memory. Differentiating it again would differentiate the
    /// steps twice, and optimizing it again would not give the same IR: CSE
    /// merges rematerialize's copies back into their originals, and the
    /// copies chosen again from that start differ.
    static func pipeline(for module: Module, optimizer: AdamOptimizer?, dataParallel: Bool = false,
                         convAlgorithm: SelectConvAlgorithm.Mode = .auto, convCosts: ConvCostTable? = nil,
                         panelRows: Int, memoryBudget: Int? = nil,
                         momentsInEpilogue: Bool = false) throws -> [any Pass] {
        let compiled = module.functions.filter(isCompiledStep).map { "@" + $0.name }
        guard !compiled.isEmpty else {
            return PassManager.standardPipeline(optimizer: optimizer, dataParallel: dataParallel, convAlgorithm: convAlgorithm, convCosts: convCosts,
                                                panelRows: panelRows, memoryBudget: memoryBudget, momentsInEpilogue: momentsInEpilogue)
        }
        if memoryBudget != nil {
            throw RuntimeError("--memory-budget: the module's training steps (\(compiled.joined(separator: ", "))) are compiled already, and what they recompute was chosen then; compile the model itself (its .swift file or zoo name) with --memory-budget")
        }
        if dataParallel, !module.functions.contains(where: { $0.nodes.contains { $0.op == "allreduce" } }) {
            throw RuntimeError("--data-parallel: the module's training steps (\(compiled.joined(separator: ", "))) are compiled already, without allreduce; compile the model itself (its .swift file or zoo name) with --data-parallel")
        }
        let uncompiled = module.functions.filter { function in
            function.output(named: Autodiff.lossName) != nil && !isCompiledStep(function)
                && !function.outputs.contains { $0.name.hasPrefix(Autodiff.gradientPrefix) }
        }.map { "@" + $0.name }
        guard uncompiled.isEmpty else {
            throw RuntimeError("the module mixes training steps that are compiled already (\(compiled.joined(separator: ", ")): they have optimizer inputs such as lr) with steps that are not (\(uncompiled.joined(separator: ", "))); compile them from separate files, or compile the model itself")
        }
        return [SelectConvAlgorithm(mode: convAlgorithm, costs: convCosts), GroupLoops()] + (momentsInEpilogue ? [FuseConvMoments()] : []) + [PlanMemory()]
    }

    /// Move a finished artifact into place; an existing artifact is replaced
    /// only once the new one is complete, and anything else is never touched.
    static func install(_ staging: URL, at output: URL) throws {
        let fm = FileManager.default
        guard fm.fileExists(atPath: output.path) else {
            try fm.moveItem(at: staging, to: output)
            return
        }
        try requireReplaceableArtifact(output)
        let old = output.deletingLastPathComponent().appendingPathComponent(".\(output.lastPathComponent).old-\(UUID().uuidString)")
        try fm.moveItem(at: output, to: old)
        do {
            try fm.moveItem(at: staging, to: output)
        } catch {
            try? fm.moveItem(at: old, to: output)
            throw error
        }
        try? fm.removeItem(at: old)
    }

    /// Cleans up after compiles of `output` that were killed. Staging folders
    /// (`.NAME.tmp-UUID`) are incomplete builds and are removed. A previous
    /// artifact moved aside by an install (`.NAME.old-UUID`) is moved back
    /// when the install did not finish (`output` is missing), and removed
    /// when it did.
    public static func recoverInterruptedInstall(of output: URL) {
        let fm = FileManager.default
        let parent = output.deletingLastPathComponent()
        let names = (try? fm.contentsOfDirectory(atPath: parent.path)) ?? []
        func ours(_ kind: String) -> [URL] {
            let prefix = ".\(output.lastPathComponent).\(kind)-"
            return names.filter { $0.hasPrefix(prefix) && UUID(uuidString: String($0.dropFirst(prefix.count))) != nil }
                .map { parent.appendingPathComponent($0) }
        }
        for staging in ours("tmp") { try? fm.removeItem(at: staging) }
        for old in ours("old") where (try? requireReplaceableArtifact(old)) != nil {
            if !fm.fileExists(atPath: output.path) {
                try? fm.moveItem(at: old, to: output)
            } else {
                try? fm.removeItem(at: old)
            }
        }
    }

    /// The files a compile writes into an artifact directory (either backend).
    static let artifactFiles: Set<String> = ["manifest.json", "final.ddir", "module.so", "module.c", "module.ll", "module.o"]

    /// Throws unless `directory` is an artifact ddepc wrote: its manifest.json
    /// decodes as a ddepc manifest (of any version: an old artifact may be
    /// recompiled in place) and it holds nothing but artifact files. A
    /// directory that merely has a manifest.json (web apps, extensions) is
    /// the user's, and replacing it would delete their work.
    static func requireReplaceableArtifact(_ directory: URL) throws {
        let path = directory.path
        let refusal = "refusing to replace it (nothing was changed). Choose another -o path, or remove it yourself if it is no longer needed."
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw RuntimeError("\(path) exists and is a file, not a ddepc artifact; \(refusal)")
        }
        /// The fields every ddepc manifest has had; enough to tell ours from another tool's manifest.json.
        struct ManifestIdentity: Decodable {
            var format: Int
            var ddepcVersion: String
            var irHash: String
            var kernelABI: String
        }
        let manifest = directory.appendingPathComponent("manifest.json")
        guard let data = try? Data(contentsOf: manifest), (try? JSONDecoder().decode(ManifestIdentity.self, from: data)) != nil else {
            let what = FileManager.default.fileExists(atPath: manifest.path)
                ? "its manifest.json is not a ddepc manifest" : "it has no manifest.json"
            throw RuntimeError("\(path) exists and is not a ddepc artifact (\(what)); \(refusal)")
        }
        let contents = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        let foreign = contents.filter { !artifactFiles.contains($0) }.sorted()
        guard foreign.isEmpty else {
            let listed = foreign.prefix(5).joined(separator: ", ") + (foreign.count > 5 ? ", ..." : "")
            throw RuntimeError("\(path) is a ddepc artifact but also holds files ddepc did not write (\(listed)); \(refusal)")
        }
    }
}
