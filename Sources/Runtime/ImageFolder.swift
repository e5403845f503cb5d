import Foundation

/// A training set of PNG images found recursively under a directory, served
/// as randomly cropped and flipped NCHW batches.
///
/// The file list is sorted by path relative to the directory, so index `i`
/// names the same image on every machine. Decoded images are cached in
/// memory (the data sets used here are small).
public struct ImageFolder: Sendable {
    /// The directory that was searched.
    public let directory: URL
    /// The PNG files' paths relative to `directory`, sorted.
    public let relativePaths: [String]
    private let cache = ImageCache()

    /// The largest crop size `batch` accepts.
    public static let maxCropSize = 1 << 14

    /// The number of images.
    public var count: Int { relativePaths.count }

    /// The PNG files, in index order.
    public var files: [URL] { relativePaths.map { directory.appendingPathComponent($0) } }

    /// Finds every `.png` file (any letter case) under `directory`, recursively.
    /// Throws if the directory does not exist or holds no PNG file.
    public init(directory: URL) throws {
        let fileManager = FileManager.default
        let root = directory.path
        var isDirectory: ObjCBool = false
        guard fileManager.fileExists(atPath: root, isDirectory: &isDirectory) else {
            throw ImageError(file: root, problem: "no such directory; check the path to the training images")
        }
        guard isDirectory.boolValue else {
            throw ImageError(file: root, problem: "not a directory; pass the directory that holds the training images")
        }
        let subpaths: [String]
        do {
            subpaths = try fileManager.subpathsOfDirectory(atPath: root)
        } catch {
            throw ImageError(file: root, problem: "cannot list the directory (\(error.localizedDescription))")
        }
        relativePaths = subpaths.filter { subpath in
            var isDirectory: ObjCBool = false
            return subpath.lowercased().hasSuffix(".png")
                && fileManager.fileExists(atPath: root + "/" + subpath, isDirectory: &isDirectory)
                && !isDirectory.boolValue
        }.sorted()
        guard !relativePaths.isEmpty else {
            throw ImageError(file: root, problem: "no .png files found in the directory or its subdirectories; add PNG images to train on")
        }
        self.directory = directory
    }

    /// Image `index` as 8-bit RGB (grey images are expanded), decoded once
    /// and then served from memory.
    public func image(at index: Int) throws -> Image {
        guard relativePaths.indices.contains(index) else {
            throw ImageError(
                file: directory.path,
                problem: "image index \(index) is out of range; the folder holds \(count) images")
        }
        if let image = cache[index] {
            return image
        }
        let image = try Image.loadPNG(directory.appendingPathComponent(relativePaths[index])).rgb()
        cache[index] = image
        return image
    }

    /// A batch of augmented `size`×`size` RGB crops of the images at
    /// `indices`, as NCHW `Float`s scaled to [-1, 1] (`v / 127.5 - 1`).
    ///
    /// For each image, in order: if a side is shorter than `size`, the image
    /// is first upscaled (nearest neighbour) so its short side equals `size`;
    /// then a crop position is drawn uniformly (x, then y) and a horizontal
    /// flip with probability 1/2, all from `rng`, so the same seed gives the
    /// same batch.
    public func batch(indices: [Int], size: Int, rng: inout SplitMix64) throws -> [Float] {
        guard (1...Self.maxCropSize).contains(size) else {
            throw ImageError(
                file: directory.path,
                problem: "crop size \(size) is out of range; use a size from 1 to \(Self.maxCropSize)")
        }
        let plane = size * size
        var batch = [Float](repeating: 0, count: indices.count * 3 * plane)
        for (n, index) in indices.enumerated() {
            let image = try image(at: index)
            let (width, height) = Self.scaledSize(width: image.width, height: image.height, minimum: size)
            let left = Int.random(in: 0...(width - size), using: &rng)
            let top = Int.random(in: 0...(height - size), using: &rng)
            let flip = Bool.random(using: &rng)
            // Source column of each output column (nearest neighbour).
            let columns = (0..<size).map { x in
                (left + (flip ? size - 1 - x : x)) * image.width / width
            }
            for y in 0..<size {
                let row = (top + y) * image.height / height * image.width
                for (x, column) in columns.enumerated() {
                    let pixel = (row + column) * 3
                    for c in 0..<3 {
                        batch[(n * 3 + c) * plane + y * size + x] = Float(image.pixels[pixel + c]) / 127.5 - 1
                    }
                }
            }
        }
        return batch
    }

    /// The size an image is upscaled to so that both sides are at least
    /// `minimum`: unchanged if they already are, otherwise scaled so the short
    /// side equals `minimum` (the long side rounded up).
    static func scaledSize(width: Int, height: Int, minimum: Int) -> (width: Int, height: Int) {
        guard width < minimum || height < minimum else { return (width, height) }
        let short = min(width, height)
        func scale(_ side: Int) -> Int { (side * minimum + short - 1) / short }
        return (scale(width), scale(height))
    }
}

extension Image {
    /// The image with 3 channels: grey is copied to R, G and B.
    public func rgb() throws -> Image {
        guard channels == 1 else { return self }
        var rgb: [UInt8] = []
        rgb.reserveCapacity(pixels.count * 3)
        for value in pixels {
            rgb += [value, value, value]
        }
        return try Image(width: width, height: height, channels: 3, pixels: rgb)
    }
}

/// Decoded images by index, shared by copies of an `ImageFolder` and safe to
/// use from several threads.
private final class ImageCache: @unchecked Sendable {
    private let lock = NSLock()
    private var images: [Int: Image] = [:]

    subscript(index: Int) -> Image? {
        get { lock.withLock { images[index] } }
        set { lock.withLock { images[index] = newValue } }
    }
}
