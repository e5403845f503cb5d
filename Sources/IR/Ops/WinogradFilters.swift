/// Winograd filters transformed once, ahead of the convolutions that read
/// them.
///
/// `%u = winograd_filters(%w) {algorithm="winograd4", panel=12}` holds the
/// filters w[O,C,3,3] as the Winograd kernels multiply with them: the
/// (m+2)² planes U[ξ] = (G g Gᵀ)[ξ] (O × C), each packed for the GEMM in
/// row panels of `panel` rows and blocks of `packDepth` columns, rows padded
/// with zeros to a multiple of the panel (the layout ddp_gemm_pack_a
/// writes). A `fused_conv2d` with `panel` and `weight_shape` attributes reads
/// such a value in place of w. `prepare-weights` makes both, so that an
/// inference entry point stops transforming its filters on every call.
public enum WinogradFilterOps {
    static let f = TensorType.f32

    /// Columns per block of the GEMM's packed operand (ddp_gemm.c's KC):
    /// part of the layout.
    public static let packDepth = 256
    public static let panelKey = "panel"
    /// Panel rows the kernels can take (ddp_winograd.c's PANEL_LANES).
    static let panels = 1...16

    /// Where element (row i, column k) of plane ξ lives in the packed value.
    struct Layout: Equatable {
        var tile, outputs, inputs, panel: Int
        var points: Int { (tile + 2) * (tile + 2) }
        var paddedRows: Int { (outputs + panel - 1) / panel * panel }
        var planeFloats: Int { paddedRows * inputs }
        var floats: Int { points * planeFloats }

        func index(_ xi: Int, _ i: Int, _ k: Int) -> Int {
            let block = k / packDepth * packDepth, depth = min(packDepth, inputs - block)
            return xi * planeFloats + block * paddedRows + i / panel * panel * depth + (k - block) * panel + i % panel
        }

        /// From the filters' shape [O,C,3,3] and the attributes.
        init(weight: [Int], attrs: Attributes) throws {
            guard weight.count == 4, weight[2] == 3, weight[3] == 3 else {
                throw IRError("winograd filters are 3×3: [O,C,3,3], got \(weight)")
            }
            let name = try attrs.string(ConvOps.Algorithm.key)
            guard let tile = ConvOps.Algorithm.winograd[name] else {
                throw IRError("algorithm \"\(name)\" is not a Winograd algorithm (\(ConvOps.Algorithm.winograd.keys.sorted().joined(separator: ", ")))")
            }
            let panel = try attrs.int(panelKey)
            guard panels.contains(panel) else { throw IRError("panel=\(panel): the kernels pack panels of \(panels.lowerBound) to \(panels.upperBound) rows") }
            (self.tile, outputs, inputs, self.panel) = (tile, weight[0], weight[1], panel)
        }
    }

    /// G (points × 3): u = G·g for one column g of a filter (ddp_winograd_tile.h's FILTER_TRANSFORM).
    static func filterTransform(tile: Int) -> [[Double]] {
        let sixth = 1.0 / 6, twelfth = 1.0 / 12, twentyFourth = 1.0 / 24
        let f4: [[Double]] = [[0.25, 0, 0], [-sixth, -sixth, -sixth], [-sixth, sixth, -sixth],
                              [twentyFourth, twelfth, sixth], [twentyFourth, -twelfth, sixth], [0, 0, 1]]
        let f2: [[Double]] = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        return tile == 4 ? f4 : f2
    }

    /// L (3 × points) with L·G = I: g = L·U·Lᵀ gives the filter back.
    static func leftInverse(tile: Int) -> [[Double]] {
        let f4: [[Double]] = [[4, 0, 0, 0, 0, 0], [-4, -6, 0, 0, 0, -1], [0, 0, 0, 0, 0, 1]]
        let f2: [[Double]] = [[1, 0, 0, 0], [-1, 2, 0, -1], [0, 0, 0, 1]]
        return tile == 4 ? f4 : f2
    }

    /// M·X·Mᵀ for a square X of side M's columns, row-major.
    static func sandwich(_ m: [[Double]], _ x: [Double]) -> [Double] {
        let rows = m.count, side = m[0].count
        var out = [Double](repeating: 0, count: rows * rows)
        for r in 0..<rows {
            for s in 0..<rows {
                var sum = 0.0
                for i in 0..<side where m[r][i] != 0 {
                    for j in 0..<side where m[s][j] != 0 { sum += m[r][i] * x[i * side + j] * m[s][j] }
                }
                out[r * rows + s] = sum
            }
        }
        return out
    }

    /// The packed value of filters `w`.
    static func pack(_ w: HostTensor, _ layout: Layout, type: TensorType) -> HostTensor {
        var u = [Double](repeating: 0, count: layout.floats)
        let g = filterTransform(tile: layout.tile)
        for i in 0..<layout.outputs {
            for k in 0..<layout.inputs {
                let filter = Array(w.data[((i * layout.inputs + k) * 9)..<((i * layout.inputs + k) * 9 + 9)])
                for (xi, value) in sandwich(g, filter).enumerated() { u[layout.index(xi, i, k)] = value }
            }
        }
        return HostTensor(type, u)
    }

    /// The filters [O,C,3,3] a packed value was made from.
    static func unpack(_ u: HostTensor, _ layout: Layout) -> HostTensor {
        var w = [Double](repeating: 0, count: layout.outputs * layout.inputs * 9)
        let inverse = leftInverse(tile: layout.tile)
        for i in 0..<layout.outputs {
            for k in 0..<layout.inputs {
                let plane = (0..<layout.points).map { u.data[layout.index($0, i, k)] }
                for (tap, value) in sandwich(inverse, plane).enumerated() { w[(i * layout.inputs + k) * 9 + tap] = value }
            }
        }
        return HostTensor(f([layout.outputs, layout.inputs, 3, 3]), w)
    }

    static func example(_ algorithm: String, panel: Int) -> Attributes {
        [ConvOps.Algorithm.key: .string(algorithm), panelKey: .int(panel)]
    }

    public static let all: [OpSpec] = [
        OpSpec(name: "winograd_filters",
               doc: "%u = winograd_filters(%w) {algorithm=\"winograd4\", panel=12}: w[O,C,3,3]'s Winograd transforms G·g·Gᵀ, packed for the GEMM in panels of `panel` rows",
               arity: 1...1, requiredAttributes: [ConvOps.Algorithm.key, panelKey],
               inferType: { operands, attrs in
                   guard operands[0].dtype == .f32 else { throw IRError("needs f32 filters") }
                   return f([try Layout(weight: operands[0].shape, attrs: attrs).floats])
               },
               evaluate: { operands, attrs, type in pack(operands[0], try Layout(weight: operands[0].shape, attrs: attrs), type: type) },
               // Made by prepare-weights, for entry points nothing differentiates.
               gradient: nil,
               lowering: .kernels { operands, _, attrs in
                   let layout = try Layout(weight: operands[0].shape, attrs: attrs)
                   return [KernelCall("winograd_filters", [.operand(0), .result],
                                      ints: [layout.outputs, layout.inputs, layout.tile, layout.panel])]
               },
               examples: [
                   ([f([5, 3, 3, 3])], example("winograd4", panel: 12)),
                   ([f([7, 2, 3, 3])], example("winograd2", panel: 6)),
                   // more input channels than a block of the packed layout's columns
                   ([f([3, 260, 3, 3])], example("winograd2", panel: 12)),
               ]),
    ]
}
