import IR

/// Chooses how each convolution is computed, visibly: it sets
/// `algorithm="winograd"` on the conv2d, fused_conv2d and conv2d_grad_input
/// nodes that Winograd's F(4×4, 3×3) computes faster than im2col + GEMM.
///
/// Winograd does a quarter of the multiplications of a 3×3 convolution but
/// transforms the filters on every call (36 matrices of O × C), so it pays
/// only when there are enough output tiles to spread that over. Measured per
/// layer of unet-r18 and TransUNet's decoder on AVX-512 (2 threads), forward
/// and input gradient alike: at 128 tiles and more it was 1.4–2.5× faster at
/// every channel count from 16 to 768; at 32 tiles (256 or more channels on
/// 8×8 images) and 8 tiles (512 on 4×4) it was 1.3–6× slower.
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
    public static let minimumTiles = 64

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
