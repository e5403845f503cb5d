import CZLib
import Foundation

/// Reads gzip files with zlib.
public enum Gzip {
    public static func decompress(_ data: Data, name: String) throws -> Data {
        var stream = z_stream()
        // 16 + MAX_WBITS: expect a gzip header.
        guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw RuntimeError("\(name): zlib could not start decompressing")
        }
        defer { inflateEnd(&stream) }
        var output = Data()
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var status: Int32 = Z_OK
        try data.withUnsafeBytes { (input: UnsafeRawBufferPointer) in
            stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
            stream.avail_in = uInt(input.count)
            repeat {
                let produced = chunk.withUnsafeMutableBufferPointer { buffer -> Int in
                    stream.next_out = buffer.baseAddress
                    stream.avail_out = uInt(buffer.count)
                    status = inflate(&stream, Z_NO_FLUSH)
                    return buffer.count - Int(stream.avail_out)
                }
                guard status == Z_OK || status == Z_STREAM_END else {
                    throw RuntimeError("\(name) is not a valid gzip file (zlib status \(status)); download or install it again")
                }
                output.append(contentsOf: chunk[0..<produced])
                if status == Z_OK && produced == 0 && stream.avail_in == 0 {
                    throw RuntimeError("\(name) is truncated; download or install it again")
                }
            } while status != Z_STREAM_END
        }
        return output
    }
}

/// The Fashion-MNIST idx files (Debian's `dataset-fashion-mnist` installs
/// them in /usr/share/datasets/fashion-mnist): 28×28 grey images, 10 classes.
public struct FashionMNIST {
    public static let classNames = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    public static let defaultDirectory = URL(fileURLWithPath: "/usr/share/datasets/fashion-mnist")

    public enum Split: String, Sendable { case train, test }

    public let count: Int
    public let rows: Int
    public let columns: Int
    /// count × rows × columns bytes, row-major.
    public let pixels: [UInt8]
    public let labels: [UInt8]

    public init(directory: URL = FashionMNIST.defaultDirectory, split: Split = .train) throws {
        let prefix = split == .train ? "train" : "t10k"
        let imagesURL = directory.appendingPathComponent("\(prefix)-images-idx3-ubyte.gz")
        let labelsURL = directory.appendingPathComponent("\(prefix)-labels-idx1-ubyte.gz")
        let images = try Self.readIdx(imagesURL, magic: 0x0803)
        let labels = try Self.readIdx(labelsURL, magic: 0x0801)
        guard images.dimensions.count == 3, labels.dimensions.count == 1, images.dimensions[0] == labels.dimensions[0] else {
            throw RuntimeError("\(imagesURL.path) and \(labelsURL.path) do not describe the same number of images")
        }
        count = images.dimensions[0]
        rows = images.dimensions[1]
        columns = images.dimensions[2]
        pixels = images.bytes
        if let bad = labels.bytes.first(where: { $0 >= 10 }) {
            throw RuntimeError("\(labelsURL.path) holds the label \(bad), outside Fashion-MNIST's 10 classes")
        }
        self.labels = labels.bytes
    }

    public func image(_ index: Int) -> ArraySlice<UInt8> {
        pixels[(index * rows * columns)..<((index + 1) * rows * columns)]
    }

    /// An idx file: big-endian magic, dimensions, then unsigned bytes.
    static func readIdx(_ url: URL, magic: UInt32) throws -> (dimensions: [Int], bytes: [UInt8]) {
        guard let compressed = FileManager.default.contents(atPath: url.path) else {
            throw RuntimeError("cannot read \(url.path); install Debian's dataset-fashion-mnist or pass the folder that holds the idx .gz files")
        }
        let data = [UInt8](try Gzip.decompress(compressed, name: url.path))
        func word(_ offset: Int) -> UInt32 {
            data[offset..<(offset + 4)].reduce(0) { $0 << 8 | UInt32($1) }
        }
        let rank = Int(magic & 0xff)
        guard data.count >= 4 + 4 * rank, word(0) == magic else {
            throw RuntimeError("\(url.path) is not an idx file of the expected kind (magic \(String(format: "%08x", magic)))")
        }
        let dimensions = (0..<rank).map { Int(word(4 + 4 * $0)) }
        let start = 4 + 4 * rank
        guard data.count == start + dimensions.reduce(1, *) else {
            throw RuntimeError("\(url.path) holds \(data.count - start) bytes of data but its header promises \(dimensions.reduce(1, *))")
        }
        return (dimensions, Array(data[start...]))
    }
}
