import CPNG
import Foundation

/// An image that cannot be read, written or built: which file (if any) and
/// what is wrong.
public struct ImageError: Error, CustomStringConvertible {
    /// The file or directory concerned, if any.
    public let file: String?
    /// What is wrong and, where it helps, what to do.
    public let problem: String

    public var description: String {
        file.map { "\($0): \(problem)" } ?? problem
    }
}

/// An 8-bit image with 1 (grey) or 3 (RGB) channels, stored row by row with
/// the channels of each pixel together (HWC).
public struct Image: Equatable, Sendable {
    public let width: Int
    public let height: Int
    /// 1 for grey, 3 for RGB.
    public let channels: Int
    /// `height * width * channels` samples, HWC order.
    public let pixels: [UInt8]

    /// The largest image `loadPNG` decodes, in pixels (e.g. 11585×11585);
    /// larger claims are treated as corrupt rather than exhausting memory.
    public static let maxPixelCount = 1 << 27

    /// Creates an image, checking that the pixel count matches the size.
    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) throws {
        guard width > 0, height > 0, channels == 1 || channels == 3 else {
            throw ImageError(
                file: nil,
                problem: "invalid image size \(width)×\(height) with \(channels) channels; "
                    + "width and height must be positive and channels 1 (grey) or 3 (RGB)")
        }
        let (rowLength, rowOverflow) = width.multipliedReportingOverflow(by: channels)
        let (count, overflow) = rowLength.multipliedReportingOverflow(by: height)
        guard !rowOverflow, !overflow, count == pixels.count else {
            throw ImageError(
                file: nil,
                problem: "a \(width)×\(height) image with \(channels) channels needs "
                    + "\(width)·\(height)·\(channels) samples, but \(pixels.count) were given")
        }
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// Reads a PNG file as 8-bit grey (grey sources) or RGB (colour sources).
    ///
    /// Palette, 16-bit and low-bit-depth images are converted to 8 bits
    /// (16-bit files without gamma information are taken to be sRGB); an
    /// alpha channel is dropped (the colour values are kept as they are).
    public static func loadPNG(_ url: URL) throws -> Image {
        let path = url.path
        let bytes: Data
        do {
            bytes = try Data(contentsOf: url)
        } catch {
            let problem = FileManager.default.fileExists(atPath: path)
                ? "cannot read the file (\(error.localizedDescription))"
                : "no such file; check the path"
            throw ImageError(file: path, problem: problem)
        }
        return try decodePNG(bytes, name: path)
    }

    /// Decodes PNG bytes; `name` identifies them in errors.
    static func decodePNG(_ bytes: Data, name: String) throws -> Image {
        let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        guard bytes.starts(with: signature) else {
            throw ImageError(file: name, problem: "not a PNG file (it does not start with the PNG signature)")
        }
        func corrupt(_ detail: String) -> ImageError {
            ImageError(file: name, problem: "corrupt PNG data (\(detail)); re-export or replace the file")
        }

        // libpng keeps pointers to the png_image and to the input until
        // png_image_finish_read or png_image_free, so both must stay put.
        let image = UnsafeMutablePointer<png_image>.allocate(capacity: 1)
        image.initialize(to: png_image())
        defer {
            png_image_free(image)  // Harmless after libpng has freed it.
            image.deallocate()
        }
        image.pointee.version = png_uint_32(PNG_IMAGE_VERSION)

        return try bytes.withUnsafeBytes { (input: UnsafeRawBufferPointer) -> Image in
            guard png_image_begin_read_from_memory(image, input.baseAddress, input.count) != 0 else {
                throw corrupt(message(of: image))
            }
            let width = Int(image.pointee.width)
            let height = Int(image.pointee.height)
            // PNG dimensions are below 2³¹, so the product cannot overflow.
            guard width * height <= maxPixelCount else {
                // Valid but too large (or a header that lies): either way, not decoded.
                throw ImageError(file: name, problem: "the PNG is \(width)×\(height) pixels, more than the limit of \(maxPixelCount) pixels; downscale it (or replace it, if it is damaged)")
            }
            // 16-bit files without gamma information are, in practice, sRGB
            // like 8-bit ones; libpng would otherwise assume linear values.
            image.pointee.flags |= png_uint_32(PNG_IMAGE_FLAG_16BIT_sRGB)
            let sourceFormat = image.pointee.format
            let hasAlpha = sourceFormat & PNG_FORMAT_FLAG_ALPHA != 0
            let channels = sourceFormat & PNG_FORMAT_FLAG_COLOR != 0 ? 3 : 1
            let decodedChannels = channels + (hasAlpha ? 1 : 0)
            image.pointee.format = (channels == 3 ? PNG_FORMAT_FLAG_COLOR : 0) | (hasAlpha ? PNG_FORMAT_FLAG_ALPHA : 0)

            var decoded = [UInt8](repeating: 0, count: width * height * decodedChannels)
            let finished = decoded.withUnsafeMutableBytes { output in
                png_image_finish_read(image, nil, output.baseAddress, png_int_32(width * decodedChannels), nil)
            }
            guard finished != 0 else {
                throw corrupt(message(of: image))
            }
            let pixels = hasAlpha ? dropLastChannel(decoded, keeping: channels) : decoded
            return try Image(width: width, height: height, channels: channels, pixels: pixels)
        }
    }

    /// Writes the image as an 8-bit grey or RGB PNG file, atomically (see
    /// `writeAtomically(_:to:)`, whose `AtomicWriteError` it may throw).
    public func writePNG(to url: URL) throws {
        try writeAtomically(try encodePNG(name: url.path), to: url)
    }

    /// The image encoded as PNG; `name` identifies it in errors.
    func encodePNG(name: String) throws -> Data {
        let image = UnsafeMutablePointer<png_image>.allocate(capacity: 1)
        image.initialize(to: png_image())
        defer {
            png_image_free(image)
            image.deallocate()
        }
        guard width <= Int(Int32.max) / channels, height <= Int(Int32.max) else {
            throw ImageError(file: name, problem: "a \(width)×\(height) image is too large for PNG")
        }
        image.pointee.version = png_uint_32(PNG_IMAGE_VERSION)
        image.pointee.width = png_uint_32(width)
        image.pointee.height = png_uint_32(height)
        image.pointee.format = channels == 3 ? PNG_FORMAT_FLAG_COLOR : 0
        let rowStride = png_int_32(width * channels)

        func encode(into memory: UnsafeMutableRawPointer?, size: inout png_alloc_size_t) throws {
            let ok = pixels.withUnsafeBytes { input in
                png_image_write_to_memory(image, memory, &size, 0, input.baseAddress, rowStride, nil)
            }
            guard ok != 0 else {
                throw ImageError(file: name, problem: "cannot encode the PNG (\(message(of: image)))")
            }
        }
        var size: png_alloc_size_t = 0
        try encode(into: nil, size: &size)
        var encoded = Data(count: Int(size))
        try encoded.withUnsafeMutableBytes { try encode(into: $0.baseAddress, size: &size) }
        return encoded.prefix(Int(size))
    }
}

/// The text libpng left in `image.message`.
private func message(of image: UnsafeMutablePointer<png_image>) -> String {
    withUnsafeBytes(of: image.pointee.message) { raw in
        let text = String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        return text.isEmpty ? "libpng gave no reason" : text
    }
}

/// `samples` with interleaved `channels + 1` components per pixel, without the
/// last component of each pixel.
private func dropLastChannel(_ samples: [UInt8], keeping channels: Int) -> [UInt8] {
    let stride = channels + 1
    var result: [UInt8] = []
    result.reserveCapacity(samples.count / stride * channels)
    for start in Swift.stride(from: 0, to: samples.count, by: stride) {
        result.append(contentsOf: samples[start..<(start + channels)])
    }
    return result
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
