import IR

/// Moves the Winograd filter transforms of entry points that change no
/// weight (inference: `infer`, `denoise`) out of them, into a companion
/// entry point (`prepare_infer`) that the runtime calls once after loading
/// or changing the weights.
///
/// A Winograd convolution transforms its filters on every call: (m+2)²
/// planes of O × C, written into the GEMM's packed layout. For a training
/// step that is the price of weights that change every step; for inference
/// it is the same work again and again. Here each such convolution reads a
/// state buffer `prepared.<weight>.<algorithm>.p<panel>` instead, which the
/// preparer fills with `winograd_filters` (packed for the panels of the
/// machine's GEMM micro-kernel: 12 rows with AVX-512, 6 with AVX2; the
/// kernel repacks it on each call if the ISA is changed after compiling).
/// Measured on unet-r18's inference (8 × 128², Zen 5, AVX-512): the
/// transforms were 3–4 ms of 42.
///
/// Only `fused_conv2d` nodes are prepared (every inference convolution is
/// fused with its bias, normalization or activation), and only where the
/// filters are a weight argument itself.
public struct PrepareWeights: Pass {
    public static let name = "prepare-weights"
    /// Rows of the GEMM panels the filters are packed for.
    public var panelRows: Int

    public init(panelRows: Int) { self.panelRows = panelRows }

    /// Whether this pass would prepare `node`'s filters: a fused
    /// convolution of a weight argument, in an entry point that updates no
    /// weight (once it has an algorithm). Select-conv-algorithm asks, since
    /// such a convolution no longer pays for its filter transform per call.
    static func prepares(_ node: Node, weightArguments: Set<ValueID>, in function: Function) -> Bool {
        function.updates.isEmpty && node.op == "fused_conv2d" && weightArguments.contains(node.operands[1])
    }

    public func run(_ module: inout Module) throws -> Bool {
        let existing = Set(module.functions.map(\.name))
        var preparers: [Function] = []
        for f in module.functions.indices where module.functions[f].updates.isEmpty {
            let name = PreparedWeights.preparerName(of: module.functions[f].name)
            guard !existing.contains(name), let preparer = try prepare(&module.functions[f], preparerName: name) else { continue }
            preparers.append(preparer)
        }
        module.functions += preparers
        return !preparers.isEmpty
    }

    /// Rewrites `function`'s Winograd convolutions of weight arguments to
    /// read prepared filters; returns the preparer, or nil when there were none.
    func prepare(_ function: inout Function, preparerName: String) throws -> Function? {
        let weights = Dictionary(uniqueKeysWithValues: function.args.filter { $0.role.isWeight }.map { ($0.id, $0) })
        let weightIDs = Set(weights.keys)
        let preparer = FunctionBuilder(name: preparerName)
        var preparerWeights: [ValueID: Value] = [:] // by the function's weight argument
        var prepared: [String: ValueID] = [:]        // the function's state argument, by name
        var nextID = function.nextID
        for n in function.nodes.indices {
            let node = function.nodes[n]
            // (A prepared convolution reads state, not a weight.)
            guard Self.prepares(node, weightArguments: weightIDs, in: function), let weight = weights[node.operands[1]],
                  case .string(let algorithm)? = node.attrs[ConvOps.Algorithm.key] else { continue }
            let stateName = "\(PreparedWeights.statePrefix)\(weight.name).\(algorithm).p\(panelRows)"
            if prepared[stateName] == nil {
                let w = preparerWeights[weight.id] ?? preparer.argument(weight.name, weight.type, role: weight.role, initRule: weight.initRule)
                preparerWeights[weight.id] = w
                let packed = try preparer.emit("winograd_filters", [w], [ConvOps.Algorithm.key: .string(algorithm),
                                                                         WinogradFilterOps.panelKey: .int(panelRows)], loc: node.loc)
                let target = preparer.argument(stateName, packed.type, role: .state, initRule: .zeros)
                preparer.update(target, with: packed)
                function.args.append(Argument(id: nextID, type: packed.type, role: .state, name: stateName, initRule: .zeros))
                prepared[stateName] = nextID
                nextID += 1
            }
            function.nodes[n].operands[1] = prepared[stateName]!
            function.nodes[n].attrs[WinogradFilterOps.panelKey] = .int(panelRows)
            function.nodes[n].attrs["weight_shape"] = .ints(weight.type.shape)
        }
        return prepared.isEmpty ? nil : preparer.function
    }
}
