import Foundation

/// Images with one class each, for supervised encoder pretraining
/// (`--mode classify`): the Fashion-MNIST idx files, or a folder with one
/// subfolder of images per class (classes in sorted folder order).
///
/// The class travels through the shared loader as a mask filled with it, so
/// crops, flips and rescaling need no special case; the trainer reads one
/// label per image back from it.
public struct ClassifiedImages: ExampleSource {
    private enum Storage: @unchecked Sendable {
        case fashionMNIST(FashionMNIST)
        case folders(files: [(name: String, url: URL, label: Int)])
    }

    private let storage: Storage
    public let classNames: [String]

    /// Reads `directory` as Fashion-MNIST if it holds the idx files, else as
    /// one subfolder per class.
    public init(directory: URL) throws {
        let idx = directory.appendingPathComponent("train-images-idx3-ubyte.gz")
        if FileManager.default.fileExists(atPath: idx.path) {
            storage = .fashionMNIST(try FashionMNIST(directory: directory, split: .train))
            classNames = FashionMNIST.classNames
            return
        }
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw RuntimeError("\(directory.path) does not exist; --mode classify needs the Fashion-MNIST idx files or one folder of images per class")
        }
        let classes = try fm.contentsOfDirectory(atPath: directory.path).filter { name in
            var isDir: ObjCBool = false
            return fm.fileExists(atPath: directory.appendingPathComponent(name).path, isDirectory: &isDir) && isDir.boolValue
        }.sorted()
        var files: [(String, URL, Int)] = []
        for (label, name) in classes.enumerated() {
            let images = try ImageCollection(directory: directory.appendingPathComponent(name))
            for path in images.relativePaths {
                files.append((name + "/" + path, images.directory.appendingPathComponent(path), label))
            }
        }
        guard classes.count >= 2, !files.isEmpty else {
            throw RuntimeError("\(directory.path) has \(classes.count) class folder(s) with images; --mode classify needs at least two (one subfolder of images per class) or the Fashion-MNIST idx files")
        }
        storage = .folders(files: files)
        classNames = classes
    }

    public var count: Int {
        switch storage {
        case .fashionMNIST(let set): return set.count
        case .folders(let files): return files.count
        }
    }

    public func name(at index: Int) -> String {
        switch storage {
        case .fashionMNIST: return "fashion-mnist/train/\(index)"
        case .folders(let files): return files[index].name
        }
    }

    public func label(at index: Int) -> Int {
        switch storage {
        case .fashionMNIST(let set): return Int(set.labels[index])
        case .folders(let files): return files[index].label
        }
    }

    public func load(at index: Int) throws -> (image: Image, mask: LabelMap?) {
        let image: Image
        switch storage {
        case .fashionMNIST(let set):
            image = try Image(width: set.columns, height: set.rows, channels: 1, pixels: Array(set.image(index))).rgb()
        case .folders(let files):
            image = try Image.load(files[index].url).rgb()
        }
        let mask = LabelMap(width: image.width, height: image.height,
                            labels: [UInt8](repeating: UInt8(label(at: index)), count: image.width * image.height))
        return (image, mask)
    }

    /// One label per image from the loader's per-pixel labels: the most
    /// common one that is not ignored (every pixel carries the image's class).
    public static func imageLabels(fromPixels labels: [Int32], batch: Int) -> [Int32] {
        let plane = labels.count / max(batch, 1)
        return (0..<batch).map { slot in
            let pixels = labels[(slot * plane)..<((slot + 1) * plane)].filter { $0 != Int32(LabelMap.ignoreLabel) }
            let counts = Dictionary(grouping: pixels, by: { $0 }).mapValues(\.count)
            return counts.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }?.key ?? Int32(LabelMap.ignoreLabel)
        }
    }
}
