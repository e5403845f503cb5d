import Foundation
import JPEGCodec

/// The image file formats ddepc reads.
public enum ImageFormat: String, Sendable {
    case png, jpeg

    /// The file name extensions (lower case) that mark an image file.
    public static let extensions: Set<String> = ["png", "jpg", "jpeg"]

    /// Whether `path` names an image file by its extension (any letter case).
    public static func isImagePath(_ path: String) -> Bool {
        extensions.contains((path as NSString).pathExtension.lowercased())
    }

    /// The format of `bytes` by their signature.
    static func sniff(_ bytes: Data) -> ImageFormat? {
        if bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]) { return .png }
        if bytes.starts(with: [0xFF, 0xD8, 0xFF]) { return .jpeg }
        return nil
    }
}

extension Image {
    /// Reads a PNG or JPEG file (told apart by content, not by name) as 8-bit
    /// grey or RGB.
    public static func load(_ url: URL) throws -> Image {
        let bytes = try readFile(url)
        switch ImageFormat.sniff(bytes) {
        case .png: return try decodePNG(bytes, name: url.path)
        case .jpeg: return try decodeJPEG(bytes, name: url.path)
        case nil:
            throw ImageError(file: url.path, problem: bytes.isEmpty
                ? "the file is empty; replace it or remove it from the data set"
                : "neither a PNG nor a JPEG file (unknown signature); convert it or remove it from the data set")
        }
    }

    /// Reads a JPEG file as 8-bit grey (grey sources) or RGB (colour and CMYK sources).
    public static func loadJPEG(_ url: URL) throws -> Image {
        try decodeJPEG(try readFile(url), name: url.path)
    }

    /// Decodes JPEG bytes; `name` identifies them in errors. Damaged data
    /// (including a truncated file, which libjpeg would pad with grey) is an
    /// error, never a crash or an exit.
    static func decodeJPEG(_ bytes: Data, name: String) throws -> Image {
        var decoded = ddp_jpeg_image()
        var message = [CChar](repeating: 0, count: 256)
        let status = bytes.withUnsafeBytes { raw in
            ddp_jpeg_decode(raw.bindMemory(to: UInt8.self).baseAddress, raw.count, maxPixelCount, &decoded, &message, message.count)
        }
        defer { ddp_jpeg_free(decoded.pixels) }
        guard status == 0, let pixels = decoded.pixels else {
            let reason = String(cString: message)
            throw ImageError(file: name, problem: "corrupt JPEG data (\(reason.isEmpty ? "libjpeg gave no reason" : reason)); re-export or replace the file")
        }
        let count = Int(decoded.width) * Int(decoded.height) * Int(decoded.channels)
        return try Image(width: Int(decoded.width), height: Int(decoded.height), channels: Int(decoded.channels),
                         pixels: Array(UnsafeBufferPointer(start: pixels, count: count)))
    }

    /// The image encoded as a baseline JPEG of `quality` (1...100).
    public func jpegData(quality: Int = 95) throws -> Data {
        var output: UnsafeMutablePointer<UInt8>?
        var size: UInt = 0
        var message = [CChar](repeating: 0, count: 256)
        let status = pixels.withUnsafeBufferPointer { input in
            ddp_jpeg_encode(input.baseAddress, Int32(width), Int32(height), Int32(channels), Int32(min(max(quality, 1), 100)),
                            &output, &size, &message, message.count)
        }
        defer { ddp_jpeg_free(output) }
        guard status == 0, let output else {
            throw ImageError(file: nil, problem: "cannot encode the JPEG (\(String(cString: message)))")
        }
        return Data(bytes: output, count: Int(size))
    }

    /// Writes the image as a JPEG file, atomically.
    public func writeJPEG(to url: URL, quality: Int = 95) throws {
        try writeAtomically(try jpegData(quality: quality), to: url)
    }
}

/// The bytes of `url`, or an `ImageError` saying why they cannot be read.
func readFile(_ url: URL) throws -> Data {
    do {
        return try Data(contentsOf: url)
    } catch {
        let problem = FileManager.default.fileExists(atPath: url.path)
            ? "cannot read the file (\(error.localizedDescription))"
            : "no such file; check the path"
        throw ImageError(file: url.path, problem: problem)
    }
}

/// A segmentation mask: one 8-bit class id per pixel, row by row.
public struct LabelMap: Equatable, Sendable {
    public let width: Int
    public let height: Int
    /// `width * height` class ids; `ignoreLabel` marks pixels without a label.
    public var labels: [UInt8]

    /// The label of pixels that count in neither the loss nor the metrics.
    public static let ignoreLabel: UInt8 = 255

    public init(width: Int, height: Int, labels: [UInt8]) {
        precondition(labels.count == width * height, "LabelMap: \(labels.count) labels for \(width)×\(height)")
        self.width = width
        self.height = height
        self.labels = labels
    }

    /// Reads a mask: an 8-bit single-channel PNG of class ids (grey, or
    /// grey with alpha, whose alpha is dropped). Colour, palette and 16-bit
    /// PNGs are refused, since converting them would change the ids.
    public static func load(_ url: URL) throws -> LabelMap {
        let bytes = try readFile(url)
        guard !bytes.isEmpty else {
            throw ImageError(file: url.path, problem: "the mask file is empty; replace it or remove its image from the data set")
        }
        guard ImageFormat.sniff(bytes) == .png else {
            throw ImageError(file: url.path, problem: "a mask must be a PNG of 8-bit class ids (lossy JPEG would change them); this file is not a PNG")
        }
        // IHDR: signature (8), length (4), "IHDR" (4), width, height (4 each), bit depth, colour type.
        if bytes.count >= 26 {
            let depth = bytes[bytes.startIndex + 24], colourType = bytes[bytes.startIndex + 25]
            let kinds: [UInt8: String] = [2: "RGB", 3: "palette", 6: "RGBA"]
            if let kind = kinds[colourType] {
                throw ImageError(file: url.path, problem: "the mask is a \(kind) PNG; masks must be 8-bit greyscale PNGs whose values are class ids (convert palette masks to their index values)")
            }
            if depth != 8 {
                throw ImageError(file: url.path, problem: "the mask has \(depth)-bit samples; masks must be 8-bit greyscale PNGs whose values are class ids")
            }
        }
        let image = try Image.decodePNG(bytes, name: url.path)
        guard image.channels == 1 else {
            throw ImageError(file: url.path, problem: "the mask has \(image.channels) channels; masks must be 8-bit greyscale PNGs of class ids")
        }
        return LabelMap(width: image.width, height: image.height, labels: image.pixels)
    }

    /// The mask as a grey image (for writing it as PNG).
    public var image: Image {
        get throws { try Image(width: width, height: height, channels: 1, pixels: labels) }
    }
}
