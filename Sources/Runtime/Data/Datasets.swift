import Foundation

/// A file of a data set that cannot be used, or a data set that cannot be
/// opened: what, where and what to do.
public struct DataError: Error, CustomStringConvertible {
    public enum Kind: Sendable {
        /// The file is missing, unreadable or not a valid image (what
        /// `--on-bad-file skip` skips).
        case unreadable
        /// Mask values outside the class range, and data-set level problems:
        /// always errors, since they mean a wrong configuration.
        case invalid
    }

    public let kind: Kind
    public let file: String?
    public let problem: String

    public init(_ kind: Kind, file: String?, _ problem: String) {
        self.kind = kind
        self.file = file
        self.problem = problem
    }

    public var description: String { file.map { "\($0): \(problem)" } ?? problem }
}

/// What to do with a corrupt or unreadable training file.
public enum BadFilePolicy: String, CaseIterable, Sendable, Codable {
    /// Stop with an error naming the file (the default).
    case fail
    /// Report the file once on stderr and use the next file in the epoch's order instead.
    case skip
}

/// One training or evaluation example: where its image (and mask) come from.
public protocol ExampleSource: Sendable {
    /// The number of examples.
    var count: Int { get }
    /// A stable name of example `index` (its path relative to the data set).
    func name(at index: Int) -> String
    /// The image, and the mask with labels mapped to `0..<classes` or 255.
    func load(at index: Int) throws -> (image: Image, mask: LabelMap?)
}

// MARK: - Unlabeled images

/// Every PNG and JPEG file under a directory, recursively: the unlabeled set
/// for denoising pretraining. Sorted by relative path, so index `i` names
/// the same file on every machine.
public struct ImageCollection: ExampleSource {
    public let directory: URL
    public let relativePaths: [String]

    public init(directory: URL) throws {
        relativePaths = try listFiles(in: directory, what: "training images") { ImageFormat.isImagePath($0) }
        guard !relativePaths.isEmpty else {
            throw DataError(.invalid, file: directory.path, "no .png, .jpg or .jpeg files in the directory or its subdirectories; add images to train on")
        }
        self.directory = directory
    }

    public var count: Int { relativePaths.count }
    public func name(at index: Int) -> String { relativePaths[index] }

    public func load(at index: Int) throws -> (image: Image, mask: LabelMap?) {
        (try loadImage(directory.appendingPathComponent(relativePaths[index])), nil)
    }
}

/// Lists the regular files under `directory` (relative paths, sorted) that `keep` accepts.
func listFiles(in directory: URL, what: String, keep: (String) -> Bool) throws -> [String] {
    let fm = FileManager.default
    var isDirectory: ObjCBool = false
    guard fm.fileExists(atPath: directory.path, isDirectory: &isDirectory) else {
        throw DataError(.invalid, file: directory.path, "no such directory; check the path to the \(what)")
    }
    guard isDirectory.boolValue else {
        throw DataError(.invalid, file: directory.path, "not a directory; pass the directory that holds the \(what)")
    }
    let subpaths: [String]
    do {
        subpaths = try fm.subpathsOfDirectory(atPath: directory.path)
    } catch {
        throw DataError(.invalid, file: directory.path, "cannot list the directory (\(error.localizedDescription))")
    }
    return subpaths.filter { path in
        guard keep(path) else { return false }
        let full = directory.path + "/" + path
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: full, isDirectory: &isDir) { return !isDir.boolValue }
        // A dangling link is listed, so it fails (or is skipped) by name like any unreadable file.
        return (try? fm.destinationOfSymbolicLink(atPath: full)) != nil
    }.sorted()
}

/// Loads an image file as RGB, turning its errors into `DataError(.unreadable)`.
func loadImage(_ url: URL) throws -> Image {
    do {
        return try Image.load(url).rgb()
    } catch let error as ImageError {
        throw DataError(.unreadable, file: error.file ?? url.path, error.problem)
    }
}

// MARK: - Labeled data sets

/// The directory layouts of labeled segmentation data (see the README).
public enum DatasetLayout: String, CaseIterable, Sendable, Codable {
    /// `images/NAME.{png,jpg}` + `masks/NAME.png`, optional `classes.txt`.
    case generic
    /// `leftImg8bit/SPLIT/CITY/*_leftImg8bit.png` + `gtFine/SPLIT/CITY/*_gtFine_labelTrainIds.png`.
    case cityscapes
    /// `[ADEChallengeData2016/]images/{training,validation}/*.jpg` + `annotations/.../*.png`.
    case ade20k
    /// `JPEGImages/*.jpg` + `SegmentationClassContext/*.png` + `ImageSets/SegmentationContext/SPLIT.txt`.
    case pascalContext = "pascal-context"

    /// The layout a directory has, judged by its folders.
    public static func detect(_ root: URL) -> DatasetLayout? {
        func has(_ path: String) -> Bool { FileManager.default.fileExists(atPath: root.appendingPathComponent(path).path) }
        if has("leftImg8bit") && has("gtFine") { return .cityscapes }
        if has("ADEChallengeData2016") || (has("images/training") || has("images/validation")) && has("annotations") { return .ade20k }
        if has("JPEGImages") && has("SegmentationClassContext") { return .pascalContext }
        if has("images") && has("masks") { return .generic }
        // Generic with one folder per split: ROOT/train/{images,masks}, ...
        let children = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        if children.contains(where: { has($0 + "/images") && has($0 + "/masks") }) { return .generic }
        return nil
    }

    /// How mask files store classes.
    public var encoding: LabelEncoding? {
        switch self {
        case .generic: return nil
        case .cityscapes: return LabelEncoding(classes: 19, reduceZero: false)
        case .ade20k: return LabelEncoding(classes: 150, reduceZero: true)
        case .pascalContext: return LabelEncoding(classes: 59, reduceZero: true)
        }
    }
}

/// How a mask file's 8-bit values map to class ids.
public struct LabelEncoding: Equatable, Sendable, Codable {
    /// The number of classes; ids are `0..<classes`.
    public var classes: Int
    /// Files store classes as `1...classes` and 0 for "no label" (ADE20K,
    /// Pascal Context 59): 0 → 255 (ignored), v → v − 1. Otherwise values
    /// are class ids as they are, and 255 is ignored.
    public var reduceZero: Bool

    public init(classes: Int, reduceZero: Bool) {
        self.classes = classes
        self.reduceZero = reduceZero
    }

    /// The valid stored values, in words, for error messages.
    var convention: String {
        reduceZero
            ? "this layout stores classes as 1...\(classes) and 0 for unlabeled pixels (255 is also ignored)"
            : "class ids are 0...\(classes - 1) and 255 marks unlabeled pixels"
    }

    /// Maps stored values to class ids in place; throws for the first value
    /// that is neither a class nor the ignore label, naming the file, the
    /// value and where it is.
    func map(_ mask: inout LabelMap, file: String) throws {
        let ignore = LabelMap.ignoreLabel
        var table = [UInt8](repeating: 0, count: 256)
        var valid = [Bool](repeating: false, count: 256)
        for raw in 0..<256 {
            let mapped: Int = reduceZero ? (raw == 0 || raw == 255 ? 255 : raw - 1) : raw
            table[raw] = UInt8(mapped)
            valid[raw] = mapped == Int(ignore) || mapped < classes
        }
        for i in mask.labels.indices {
            let raw = mask.labels[i]
            guard valid[Int(raw)] else {
                throw DataError(.invalid, file: file,
                                "mask value \(raw) at x=\(i % mask.width), y=\(i / mask.width) is outside the class range: \(convention). Check --classes, the data set layout, or the mask")
            }
            mask.labels[i] = table[Int(raw)]
        }
    }
}

/// An image and its mask.
public struct LabeledSample: Sendable, Hashable {
    /// The image's path relative to the data set root (the name recorded in `label_subset.txt`).
    public let name: String
    public let image: URL
    public let mask: URL
}

/// A labeled segmentation set in one of the `DatasetLayout`s: its samples
/// (sorted by name), class count and names, and how masks store classes.
public struct LabeledDataset: ExampleSource {
    public let root: URL
    public let layout: DatasetLayout
    public let split: String
    public let samples: [LabeledSample]
    public let encoding: LabelEncoding
    public let classNames: [String]
    /// Images left out because their mask (or, for Pascal Context, a listed
    /// file) is missing, with `onBadFile: .skip`; one message each.
    public let skipped: [String]
    public var classes: Int { encoding.classes }
    public var count: Int { samples.count }

    /// Opens the data set at `root`. `layout` nil detects it. `classes` is
    /// the class count for generic sets without `classes.txt` (the
    /// artifact's); for the named layouts it must match theirs if given.
    /// An image without its mask is an error, or with `onBadFile: .skip`
    /// left out (and listed in `skipped`).
    public init(root: URL, layout: DatasetLayout? = nil, split: String = "train", classes: Int? = nil,
                onBadFile: BadFilePolicy = .fail) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DataError(.invalid, file: root.path, "no such directory; pass the labeled data set's root directory")
        }
        guard let layout = layout ?? DatasetLayout.detect(root) else {
            throw DataError(.invalid, file: root.path, "not a known data set layout: expected images/ + masks/ (generic), leftImg8bit/ + gtFine/ (Cityscapes), images/training + annotations/ (ADE20K) or JPEGImages/ + SegmentationClassContext/ (Pascal Context); or pass --layout")
        }
        self.root = root
        self.layout = layout
        self.split = split
        var names: [String]?
        let missing = MissingFiles(policy: onBadFile)
        switch layout {
        case .generic:
            (samples, names) = try Self.generic(root, split: split, missing: missing)
        case .cityscapes:
            samples = try Self.cityscapes(root, split: split, missing: missing)
        case .ade20k:
            samples = try Self.ade20k(root, split: split, missing: missing)
        case .pascalContext:
            samples = try Self.pascalContext(root, split: split, missing: missing)
            names = pascalContext59Names
        }
        skipped = missing.skipped
        if layout == .cityscapes { names = cityscapesNames }
        guard !samples.isEmpty else {
            throw DataError(.invalid, file: root.path, "the \(layout.rawValue) data set has no images in split '\(split)'")
        }
        if let fixed = layout.encoding {
            if let classes, classes != fixed.classes {
                throw DataError(.invalid, file: root.path, "the \(layout.rawValue) layout has \(fixed.classes) classes but the model has \(classes); recompile the model with --classes \(fixed.classes)")
            }
            encoding = fixed
        } else if let names {
            if let classes, classes != names.count {
                throw DataError(.invalid, file: root.appendingPathComponent("classes.txt").path,
                                "lists \(names.count) classes but the model has \(classes); recompile the model with --classes \(names.count) or fix classes.txt")
            }
            encoding = LabelEncoding(classes: names.count, reduceZero: false)
        } else {
            guard let classes else {
                throw DataError(.invalid, file: root.path, "the class count is unknown: add classes.txt (one class name per line)")
            }
            encoding = LabelEncoding(classes: classes, reduceZero: false)
        }
        classNames = names ?? (0..<encoding.classes).map { "class \($0)" }
    }

    private init(copying other: LabeledDataset, samples: [LabeledSample]) {
        root = other.root
        layout = other.layout
        split = other.split
        encoding = other.encoding
        classNames = other.classNames
        skipped = other.skipped
        self.samples = samples
    }

    public func name(at index: Int) -> String { samples[index].name }

    /// The image (RGB) and its mask mapped to class ids, with sizes checked.
    public func load(at index: Int) throws -> (image: Image, mask: LabelMap?) {
        let sample = samples[index]
        let image = try loadImage(sample.image)
        var mask: LabelMap
        do {
            mask = try LabelMap.load(sample.mask)
        } catch let error as ImageError {
            throw DataError(.unreadable, file: error.file ?? sample.mask.path, error.problem)
        }
        guard mask.width == image.width, mask.height == image.height else {
            throw DataError(.unreadable, file: sample.mask.path,
                            "the mask is \(mask.width)×\(mask.height) but its image \(sample.image.path) is \(image.width)×\(image.height)")
        }
        try encoding.map(&mask, file: sample.mask.path)
        return (image, mask)
    }

    /// The samples chosen for a label fraction: a uniformly random subset of
    /// `fraction.count(of: count)` samples drawn from `seed` alone (the same
    /// seed and files give the same subset on every machine), in name order.
    public func subset(_ fraction: LabelFraction, seed: UInt64) -> LabeledDataset {
        let k = fraction.count(of: samples.count)
        guard k < samples.count else { return self }
        var rng = SplitMix64(seed: seed, keys: RandomStream.labelSubset.rawValue)
        var indices = Array(samples.indices)
        for i in 0..<k {
            let j = Int.random(in: i..<indices.count, using: &rng)
            indices.swapAt(i, j)
        }
        return LabeledDataset(copying: self, samples: indices.prefix(k).sorted().map { samples[$0] })
    }

    /// The samples with the given names (for a resumed run's recorded subset).
    public func restricted(to names: [String]) throws -> LabeledDataset {
        let byName = Dictionary(samples.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let chosen = try names.map { name in
            guard let sample = byName[name] else {
                throw DataError(.invalid, file: root.path, "the recorded label subset names \(name), which is not in the data set any more")
            }
            return sample
        }
        return LabeledDataset(copying: self, samples: chosen)
    }

    // MARK: Layouts

    private static func generic(_ root: URL, split: String, missing: MissingFiles) throws -> ([LabeledSample], [String]?) {
        // `ROOT/SPLIT/{images,masks}` if it exists, else `ROOT/{images,masks}`.
        let fm = FileManager.default
        let base = fm.fileExists(atPath: root.appendingPathComponent(split).appendingPathComponent("images").path)
            ? root.appendingPathComponent(split) : root
        let imageDir = base.appendingPathComponent("images"), maskDir = base.appendingPathComponent("masks")
        let images = try listFiles(in: imageDir, what: "images") { ImageFormat.isImagePath($0) }
        var seen: [String: String] = [:]
        var samples: [LabeledSample] = []
        for relative in images {
            let stem = (relative as NSString).deletingPathExtension
            if let other = seen[stem] {
                throw DataError(.invalid, file: imageDir.path, "\(other) and \(relative) would share the mask masks/\(stem).png; keep one of them")
            }
            seen[stem] = relative
            let mask = maskDir.appendingPathComponent(stem + ".png")
            guard fm.fileExists(atPath: mask.path) else {
                try missing.report(DataError(.unreadable, file: imageDir.appendingPathComponent(relative).path, "has no mask \(mask.path); every image needs masks/NAME.png"))
                continue
            }
            let name = base == root ? "images/" + relative : split + "/images/" + relative
            samples.append(LabeledSample(name: name, image: imageDir.appendingPathComponent(relative), mask: mask))
        }
        var names: [String]?
        for candidate in [base, root] {
            let url = candidate.appendingPathComponent("classes.txt")
            guard fm.fileExists(atPath: url.path) else { continue }
            guard let text = try? String(contentsOf: url, encoding: .utf8) else {
                throw DataError(.invalid, file: url.path, "cannot read the class list (UTF-8 text, one class name per line)")
            }
            names = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard let count = names?.count, (1...255).contains(count) else {
                throw DataError(.invalid, file: url.path, "lists \(names?.count ?? 0) classes; list 1 to 255 class names, one per line")
            }
            break
        }
        return (samples, names)
    }

    private static func cityscapes(_ root: URL, split: String, missing: MissingFiles) throws -> [LabeledSample] {
        let imageDir = root.appendingPathComponent("leftImg8bit").appendingPathComponent(split)
        let maskDir = root.appendingPathComponent("gtFine").appendingPathComponent(split)
        let suffix = "_leftImg8bit.png"
        let images = try listFiles(in: imageDir, what: "Cityscapes images") { $0.hasSuffix(suffix) }
        return try images.compactMap { relative in
            let stem = String(relative.dropLast(suffix.count))
            let mask = maskDir.appendingPathComponent(stem + "_gtFine_labelTrainIds.png")
            guard FileManager.default.fileExists(atPath: mask.path) else {
                try missing.report(DataError(.unreadable, file: imageDir.appendingPathComponent(relative).path,
                                             "has no mask \(mask.path); create the *_labelTrainIds.png files with cityscapesScripts' createTrainIdLabelImgs"))
                return nil
            }
            return LabeledSample(name: "leftImg8bit/\(split)/\(relative)", image: imageDir.appendingPathComponent(relative), mask: mask)
        }
    }

    private static func ade20k(_ root: URL, split: String, missing: MissingFiles) throws -> [LabeledSample] {
        let nested = root.appendingPathComponent("ADEChallengeData2016")
        let base = FileManager.default.fileExists(atPath: nested.path) ? nested : root
        let folder = ["train": "training", "val": "validation"][split] ?? split
        let imageDir = base.appendingPathComponent("images").appendingPathComponent(folder)
        let maskDir = base.appendingPathComponent("annotations").appendingPathComponent(folder)
        let images = try listFiles(in: imageDir, what: "ADE20K images") { ImageFormat.isImagePath($0) }
        return try images.compactMap { relative in
            let mask = maskDir.appendingPathComponent((relative as NSString).deletingPathExtension + ".png")
            guard FileManager.default.fileExists(atPath: mask.path) else {
                try missing.report(DataError(.unreadable, file: imageDir.appendingPathComponent(relative).path, "has no annotation \(mask.path)"))
                return nil
            }
            return LabeledSample(name: "images/\(folder)/\(relative)", image: imageDir.appendingPathComponent(relative), mask: mask)
        }
    }

    private static func pascalContext(_ root: URL, split: String, missing: MissingFiles) throws -> [LabeledSample] {
        let list = root.appendingPathComponent("ImageSets/SegmentationContext/\(split).txt")
        guard let text = try? String(contentsOf: list, encoding: .utf8) else {
            throw DataError(.invalid, file: list.path, "cannot read the split list (one image name per line, without extension)")
        }
        let names = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let fm = FileManager.default
        return try names.sorted().compactMap { name in
            let image = root.appendingPathComponent("JPEGImages/\(name).jpg")
            let mask = root.appendingPathComponent("SegmentationClassContext/\(name).png")
            if let absent = [image, mask].first(where: { !fm.fileExists(atPath: $0.path) }) {
                try missing.report(DataError(.unreadable, file: list.path, "lists \(name), but \(absent.path) does not exist"))
                return nil
            }
            return LabeledSample(name: "JPEGImages/\(name).jpg", image: image, mask: mask)
        }
    }
}

/// Images whose mask is missing: an error, or with `--on-bad-file skip` a note.
private final class MissingFiles {
    let policy: BadFilePolicy
    var skipped: [String] = []
    init(policy: BadFilePolicy) { self.policy = policy }

    func report(_ error: DataError) throws {
        guard policy == .skip else { throw error }
        skipped.append(error.description)
    }
}

/// A fraction of a labeled set to train on: `1/30`, `5%`, `0.25` or `1`.
public struct LabelFraction: Equatable, Sendable, CustomStringConvertible {
    public let value: Double
    public let text: String

    public init?(_ text: String) {
        let t = text.trimmingCharacters(in: .whitespaces)
        var value: Double?
        if t.hasSuffix("%") {
            value = Double(t.dropLast()).map { $0 / 100 }
        } else if let slash = t.firstIndex(of: "/") {
            if let a = Double(t[..<slash]), let b = Double(t[t.index(after: slash)...]), b > 0 { value = a / b }
        } else {
            value = Double(t)
        }
        guard let value, value > 0, value <= 1, value.isFinite else { return nil }
        self.value = value
        self.text = t
    }

    public static let all = LabelFraction("1")!

    /// How many of `total` samples the fraction keeps: rounded to nearest, at least 1.
    public func count(of total: Int) -> Int {
        min(total, max(1, Int((Double(total) * value).rounded())))
    }

    public var description: String { text }
}

/// Independent random streams derived from the run seed.
public enum RandomStream: UInt64 {
    case dataOrder = 1, augmentation, gamma, labelSubset
}

extension SplitMix64 {
    /// A generator for one purpose, derived from `seed` and `keys` (e.g. a
    /// stream, an epoch, a step and a batch position). Draws at different
    /// keys do not depend on each other, so any batch can be made on its own.
    public init(seed: UInt64, keys: UInt64...) {
        var rng = SplitMix64(seed: seed)
        for key in keys { rng = SplitMix64(seed: rng.next() ^ (key &* 0xD1B5_4A32_D192_ED03)) }
        self = rng
    }
}

let cityscapesNames = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                       "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                       "motorcycle", "bicycle"]

let pascalContext59Names = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow",
    "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
]
