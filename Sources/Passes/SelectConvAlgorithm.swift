import IR

/// Chooses how each convolution is computed, visibly: it sets `algorithm`
/// to "winograd4" (F(4×4, 3×3)) or "winograd2" (F(2×2, 3×3)) on the conv2d,
/// fused_conv2d, conv2d_grad_input, fused_conv2d_grad_input and
/// conv2d_grad_weight nodes that Winograd computes faster than im2col + GEMM.
///
/// With a cost table (`ddepc tune` times each algorithm on each of a
/// model's convolutions on the machine it runs on), `auto` gives every
/// convolution the table has the algorithm that was fastest there (the
/// rule's choice where it measured within 3% of that). The tile-count rule
/// below, measured on one AVX-512 machine, decides the rest.
///
/// Winograd does fewer multiplications than a direct 3×3 convolution (a
/// quarter with 4×4 tiles, 1/2.25 with 2×2) but transforms the filters on
/// every call (36 or 16 matrices of O × C), so it pays only when there are
/// enough output tiles to spread that over. Measured per layer of unet-r18,
/// ResNet-50 and TransUNet's decoder on AVX-512 (2 threads), forward, input
/// gradient and weight gradient:
/// - from 128 tiles of 4×4 up, F(4×4) was 1.3–2.4× faster than im2col at
///   every channel count from 16 to 1024 (16 channels in and out: 0.95–1.15×);
///   at 64 tiles (256 channels on 14×14) it was 5% slower, at 32 (8×8
///   images) 10–20% slower, at 8 (512 channels on 4×4) 3× slower;
/// - below that, from 128 tiles of 2×2 up (8×8 images at batch 8, 14×14 at
///   batch 4), F(2×2) was 1.05–1.5× faster; at 32 (4×4 images) it was
///   0.65–0.95×.
///
/// A convolution whose filters prepare-weights transforms once (inference:
/// `infer`, `denoise`) pays only for the products, and then Winograd wins
/// from fewer tiles: on unet-r18's inference (batch 8, 128 px) F(4×4) on
/// its 8×8 images (32 tiles) and F(2×2) on its 4×4 ones (32 tiles, 512
/// channels) made the step 7% faster on AVX-512 (minimums 38.4 → 35.7 ms
/// over 3 interleaved rounds) and 17% on the AVX2 path (57.0 → 47.1 ms);
/// F(4×4) on the 4×4 images (8 tiles) was 2× slower than im2col there, its
/// GEMMs a quarter of a panel wide. TransUNet's inference did not move
/// (its 14×14 decoder layers go from F(2×2) to F(4×4)). The prepared
/// filters take more memory: unet-r18's from 54 to 142 MB.
///
/// F(4×4)'s rounding differs from the direct sum's (about 1e-5 of the
/// output's magnitude against 1e-7); F(2×2)'s does not measurably.
/// `mode = .direct` keeps every convolution on im2col + GEMM, and removes
/// algorithms a recompiled module carries.
public struct SelectConvAlgorithm: Pass {
    public static let name = "select-conv-algorithm"

    public enum Mode: String, CaseIterable, Sendable {
        /// Winograd where the measured costs (or, for a convolution they do
        /// not have, the tile counts) say it is faster.
        case auto
        /// im2col + GEMM everywhere.
        case direct
        /// F(4×4) wherever Winograd applies (tests, experiments).
        case winograd
        /// Each convolution keeps the algorithm its node names, none meaning
        /// im2col (`ddepc tune`'s measurements).
        case asWritten = "as-written"
    }

    /// Fewest output tiles at which `auto` picks a tile size.
    public static let minimumTiles = 128
    /// The same for a convolution whose filters are prepared once.
    public static let minimumPreparedTiles = 32

    public var mode: Mode
    /// Whether prepare-weights runs after this pass (the standard pipeline's
    /// does where it has GEMM panel rows to pack for).
    public var weightsPrepared: Bool
    /// What each algorithm took on this machine (`ddepc tune`); `auto`
    /// takes the fastest for the convolutions it has.
    public var costs: ConvCostTable?
    public init(mode: Mode = .auto, weightsPrepared: Bool = false, costs: ConvCostTable? = nil) {
        self.mode = mode
        self.weightsPrepared = weightsPrepared
        self.costs = costs
    }

    /// The algorithm the tile-count rule picks for a node.
    static func automatic(_ node: Node, operandTypes: [TensorType], prepared: Bool) -> String? {
        let fewest = prepared ? minimumPreparedTiles : minimumTiles
        for tile in [4, 2] {
            if let tiles = ConvOps.winogradTiles(node, operandTypes: operandTypes, tile: tile), tiles >= fewest {
                return ConvOps.Algorithm.winograd(tile: tile)
            }
        }
        return nil
    }

    /// The nodes of `function` this pass chooses an algorithm for, each with
    /// the convolution it computes (what `ddepc tune` measures).
    public static func candidates(in function: Function, weightsPrepared: Bool) -> [(index: Int, convolution: ConvCostTable.Convolution)] {
        let types = function.types
        let weightArguments = Set(function.args.filter { $0.role.isWeight }.map(\.id))
        return function.nodes.indices.compactMap { n in
            let node = function.nodes[n]
            // A recompiled convolution with a prologue or a gathered input
            // keeps its Winograd algorithm: only those kernels apply one.
            guard node.attrs[FusedConvOps.Prologue.key] == nil, node.attrs[FusedConvOps.Gather.key] == nil else { return nil }
            let prepared = weightsPrepared && PrepareWeights.prepares(node, weightArguments: weightArguments, in: function)
            return ConvCostTable.convolution(of: node, operandTypes: node.operands.map { types[$0]! }, preparedFilters: prepared)
                .map { (n, $0) }
        }
    }

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            let types = module.functions[f].types
            for (n, convolution) in Self.candidates(in: module.functions[f], weightsPrepared: weightsPrepared) {
                let node = module.functions[f].nodes[n]
                let wanted: String?
                switch mode {
                case .auto:
                    // A recompiled module keeps the choices it carries.
                    if case .string(let chosen)? = node.attrs[ConvOps.Algorithm.key] {
                        wanted = chosen
                    } else {
                        let rule = Self.automatic(node, operandTypes: node.operands.map { types[$0]! },
                                                  prepared: convolution.preparedFilters)
                        if let measured = costs?.measurement(of: convolution) {
                            wanted = measured.choice(preferring: rule)
                        } else {
                            wanted = rule
                        }
                    }
                case .direct: wanted = nil
                case .winograd: wanted = ConvOps.Algorithm.winograd(tile: 4)
                case .asWritten: continue
                }
                let value = wanted.map(Attr.string)
                if node.attrs[ConvOps.Algorithm.key] != value {
                    module.functions[f].nodes[n].attrs[ConvOps.Algorithm.key] = value
                    changed = true
                }
            }
        }
        return changed
    }
}
