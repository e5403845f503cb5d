import IR

/// Chooses how each convolution is computed, visibly: it sets
/// `algorithm="winograd"` on the conv2d, fused_conv2d, conv2d_grad_input and
/// conv2d_grad_weight nodes that Winograd's F(4×4, 3×3) computes faster than
/// im2col + GEMM.
///
/// Winograd does a quarter of the multiplications of a 3×3 convolution but
/// transforms the filters on every call (36 matrices of O × C), so it pays
/// only when there are enough output tiles to spread that over. Measured per
/// layer of unet-r18, ResNet-50 and TransUNet's decoder on AVX-512 (2
/// threads): from 128 tiles up the forward and input gradient were 1.3–2.4×
/// faster at every channel count from 16 to 768 (1.0–1.3× at 16 channels)
/// and the weight gradient 1.1–2.0× (16 channels in and out: 0.95–1.06×);
/// at 64 tiles (256 channels on 14×14) the forward was 5% slower, at 32
/// (8×8 images) 10–20% slower, at 8 (512 channels on 4×4) 3× slower.
///
/// Its rounding differs from the direct sum's (about 1e-5 of the output's
/// magnitude against 1e-7): `mode = .direct` keeps every convolution on
/// im2col + GEMM, and removes algorithms a recompiled module carries.
public struct SelectConvAlgorithm: Pass {
    public static let name = "select-conv-algorithm"

    public enum Mode: String, CaseIterable, Sendable {
        /// Winograd where the tile count says it is faster.
        case auto
        /// im2col + GEMM everywhere.
        case direct
        /// Winograd wherever it applies (tests, experiments).
        case winograd
    }

    /// Fewest output tiles at which `auto` picks Winograd.
    public static let minimumTiles = 128

    public var mode: Mode
    public init(mode: Mode = .auto) { self.mode = mode }

    public func run(_ module: inout Module) throws -> Bool {
        var changed = false
        for f in module.functions.indices {
            let types = module.functions[f].types
            for n in module.functions[f].nodes.indices {
                let node = module.functions[f].nodes[n]
                guard let tiles = ConvOps.winogradTiles(node, operandTypes: node.operands.map { types[$0]! }) else { continue }
                let wanted: Bool
                switch mode {
                case .auto: wanted = node.attrs[ConvOps.Algorithm.key] != nil || tiles >= Self.minimumTiles
                case .direct: wanted = false
                case .winograd: wanted = true
                }
                let value: Attr? = wanted ? .string(ConvOps.Algorithm.winograd) : nil
                if node.attrs[ConvOps.Algorithm.key] != value {
                    module.functions[f].nodes[n].attrs[ConvOps.Algorithm.key] = value
                    changed = true
                }
            }
        }
        return changed
    }
}
