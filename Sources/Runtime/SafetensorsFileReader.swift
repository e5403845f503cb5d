import Foundation

/// A safetensors file on disk whose header is read and checked as
/// `SafetensorsFile(contentsOf:)` checks it, and whose tensors are read one
/// at a time into memory the caller owns. A checkpoint loads straight into
/// the weights: read whole, a TransUNet checkpoint (1.26 GB of weights and
/// Adam's moments) was held beside them, twice, and a training process that
/// resumed or started from one peaked at 4.1 GB for a step that needs 1.8.
public final class SafetensorsFileReader {
    /// A tensor's type, shape and place in the file.
    public struct Tensor {
        public let dtype: SafetensorsDType
        public let shape: [Int]
        /// Its first byte's offset from the start of the file.
        let offset: Int
        public let byteCount: Int
    }

    public let path: String
    /// Free-form string metadata from the header.
    public let metadata: [String: String]
    /// The tensors by name.
    public let tensors: [String: Tensor]
    /// The tensor names, sorted.
    public var names: [String] { tensors.keys.sorted() }

    private let descriptor: Int32

    /// Opens the file at `url` and reads and checks its header: a damaged or
    /// hostile file is a `SafetensorsError` naming it, as it is for a file
    /// read whole.
    public init(contentsOf url: URL) throws {
        path = url.path
        descriptor = open(url.path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw SafetensorsError(file: url.path, problem: "cannot read the file (\(String(cString: strerror(errno))))",
                                   remedy: "Check that the path is right and that the file is readable.")
        }
        do {
            var status = stat()
            guard fstat(descriptor, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else {
                throw SafetensorsError(problem: "it is not a regular file", remedy: "Pass a .safetensors file.")
            }
            let fileLength = Int(status.st_size)
            let lengthField = try Self.read(descriptor, count: min(8, fileLength), at: 0)
            let headerEnd = try SafetensorsFile.headerEnd(lengthField: lengthField, fileLength: fileLength)
            let header = try SafetensorsFile.parseHeader(try Self.read(descriptor, count: headerEnd - 8, at: 8),
                                                         dataLength: fileLength - headerEnd)
            metadata = header.metadata
            tensors = Dictionary(uniqueKeysWithValues: header.entries.map {
                ($0.name, Tensor(dtype: $0.dtype, shape: $0.shape, offset: headerEnd + $0.begin, byteCount: $0.end - $0.begin))
            })
        } catch var error as SafetensorsError {
            close(descriptor)
            error.file = url.path
            throw error
        }
    }

    deinit { close(descriptor) }

    /// The tensor `name`, or an error listing the tensors that do exist.
    public func tensor(_ name: String) throws -> Tensor {
        guard let tensor = tensors[name] else { throw SafetensorsFile.noSuchTensor(name, in: path, holding: names) }
        return tensor
    }

    /// Reads tensor `name`'s bytes into `destination`, which must be its size.
    public func read(_ name: String, into destination: UnsafeMutableRawBufferPointer) throws {
        let tensor = try tensor(name)
        precondition(destination.count == tensor.byteCount, "a destination of \(destination.count) bytes for \(tensor.byteCount)")
        do {
            try Self.read(descriptor, into: destination, at: tensor.offset)
        } catch var error as SafetensorsError {
            error.file = path
            error.tensor = name
            throw error
        }
    }

    private static func read(_ descriptor: Int32, count: Int, at offset: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try read(descriptor, into: $0, at: offset) }
        return bytes
    }

    /// Fills `destination` from `offset` on; a file that ends first was cut
    /// short after its header was read.
    private static func read(_ descriptor: Int32, into destination: UnsafeMutableRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < destination.count {
            let result = pread(descriptor, destination.baseAddress! + done, destination.count - done, off_t(offset + done))
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else {
                throw SafetensorsError(problem: result < 0 ? "cannot read the file (\(String(cString: strerror(errno))))"
                                                           : "the file ended while it was being read (it was changed or truncated meanwhile)",
                                       remedy: "Check the file and the disk, and try again.")
            }
            done += result
        }
    }
}
