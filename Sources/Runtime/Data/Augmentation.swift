import Foundation

/// Training-time augmentation of one image (and its mask) into a square
/// crop: optional resize, optional random scale, random crop, random
/// horizontal flip; pixels scaled to [-1, 1] (`v / 127.5 − 1`).
///
/// Images are resampled bilinearly (half-pixel centres, like PyTorch's
/// `align_corners=False`), masks by nearest neighbour. Only the crop's
/// pixels are computed.
public struct Augmentation: Equatable, Sendable, Codable {
    /// The side of the square crop (the artifact's input size).
    public var cropSize: Int
    /// Resize so the short side is this many pixels first (nil: keep the size).
    public var resizeShortSide: Int?
    /// Then multiply the size by a factor drawn uniformly from this range.
    public var scaleRange: ClosedRange<Double>?
    /// Flip horizontally with probability 1/2.
    public var flip = true

    public init(cropSize: Int, resizeShortSide: Int? = nil, scaleRange: ClosedRange<Double>? = nil, flip: Bool = true) {
        self.cropSize = cropSize
        self.resizeShortSide = resizeShortSide
        self.scaleRange = scaleRange
        self.flip = flip
    }

    /// The crop's geometry: the scaled image size, the crop's top-left
    /// corner in it and whether it is mirrored. Draws, in order: the scale
    /// factor (if any), x, y, the flip (if enabled).
    public struct Placement: Equatable, Sendable {
        public var scaledWidth: Int
        public var scaledHeight: Int
        public var left: Int
        public var top: Int
        public var flipped: Bool
    }

    /// The largest side an image is scaled to (pixels).
    static let maxScaledSide = 1e15

    public func place(width: Int, height: Int, rng: inout SplitMix64) -> Placement {
        let short = Double(min(width, height))
        var factor = resizeShortSide.map { Double($0) / short } ?? 1
        if let scaleRange {
            factor *= scaleRange.lowerBound + (scaleRange.upperBound - scaleRange.lowerBound) * Double(rng.next() >> 11) * 0x1p-53
        }
        // Never smaller than the crop: upscale so the short side fits.
        factor = max(factor, Double(cropSize) / short)
        // Only the crop is sampled, so a huge scaled size costs nothing; it is
        // capped far beyond any image so an absurd --resize or --scale-range
        // cannot overflow Int.
        let w = max(cropSize, Int(min(Double(width) * factor, Self.maxScaledSide).rounded()))
        let h = max(cropSize, Int(min(Double(height) * factor, Self.maxScaledSide).rounded()))
        let left = Int.random(in: 0...(w - cropSize), using: &rng)
        let top = Int.random(in: 0...(h - cropSize), using: &rng)
        let flipped = flip ? Bool.random(using: &rng) : false
        return Placement(scaledWidth: w, scaledHeight: h, left: left, top: top, flipped: flipped)
    }

    /// Writes the crop of `image` (RGB) as CHW floats into `x` (3·S·S values)
    /// and, given a mask, its labels into `labels` (S·S values).
    public func apply(_ image: Image, mask: LabelMap?, rng: inout SplitMix64,
                      x: UnsafeMutableBufferPointer<Float>, labels: UnsafeMutableBufferPointer<Int32>?) {
        precondition(image.channels == 3, "Augmentation.apply needs an RGB image")
        let s = cropSize
        let p = place(width: image.width, height: image.height, rng: &rng)
        let columns = (0..<s).map { p.left + (p.flipped ? s - 1 - $0 : $0) }
        let rows = (0..<s).map { p.top + $0 }
        sampleBilinear(image, scaledWidth: p.scaledWidth, scaledHeight: p.scaledHeight, columns: columns, rows: rows, into: x)
        if let mask, let labels {
            let cx = columns.map { nearestSource($0, scaled: p.scaledWidth, size: mask.width) }
            let cy = rows.map { nearestSource($0, scaled: p.scaledHeight, size: mask.height) }
            for (y, sy) in cy.enumerated() {
                let row = sy * mask.width
                for (xi, sx) in cx.enumerated() { labels[y * s + xi] = Int32(mask.labels[row + sx]) }
            }
        }
    }
}

/// The source index of destination index `i` when `size` samples are
/// scaled to `scaled` (nearest neighbour, half-pixel centres).
@inline(__always)
func nearestSource(_ i: Int, scaled: Int, size: Int) -> Int {
    min(size - 1, Int((Double(i) + 0.5) * Double(size) / Double(scaled)))
}

/// Linear interpolation taps for destination indices `indices` when `size`
/// samples are scaled to `scaled`: (lower index, upper index, upper weight).
func linearTaps(_ indices: [Int], scaled: Int, size: Int) -> [(Int, Int, Float)] {
    let ratio = Double(size) / Double(scaled)
    return indices.map { i in
        let source = min(max((Double(i) + 0.5) * ratio - 0.5, 0), Double(size - 1))
        let lower = Int(source)
        return (lower, min(lower + 1, size - 1), Float(source - Double(lower)))
    }
}

/// Samples the pixels (`rows` × `columns`, in coordinates of the image
/// scaled to `scaledWidth`×`scaledHeight`) of an RGB image bilinearly, as CHW
/// floats in [-1, 1].
func sampleBilinear(_ image: Image, scaledWidth: Int, scaledHeight: Int, columns: [Int], rows: [Int],
                    into out: UnsafeMutableBufferPointer<Float>) {
    let tx = linearTaps(columns, scaled: scaledWidth, size: image.width)
    let ty = linearTaps(rows, scaled: scaledHeight, size: image.height)
    let plane = rows.count * columns.count
    precondition(out.count >= 3 * plane)
    image.pixels.withUnsafeBufferPointer { px in
        let w = image.width
        for (y, (y0, y1, wy)) in ty.enumerated() {
            for (x, (x0, x1, wx)) in tx.enumerated() {
                for c in 0..<3 {
                    let a = Float(px[(y0 * w + x0) * 3 + c]), b = Float(px[(y0 * w + x1) * 3 + c])
                    let d = Float(px[(y1 * w + x0) * 3 + c]), e = Float(px[(y1 * w + x1) * 3 + c])
                    let top = a + (b - a) * wx, bottom = d + (e - d) * wx
                    out[c * plane + y * columns.count + x] = (top + (bottom - top) * wy) / 127.5 - 1
                }
            }
        }
    }
}

/// Resizes `channels` planes of `width`×`height` floats to `newWidth`×`newHeight`
/// bilinearly (half-pixel centres, `align_corners=False`).
public func resizeBilinear(_ planes: [Float], channels: Int, width: Int, height: Int, newWidth: Int, newHeight: Int) -> [Float] {
    if width == newWidth && height == newHeight { return planes }
    let tx = linearTaps(Array(0..<newWidth), scaled: newWidth, size: width)
    let ty = linearTaps(Array(0..<newHeight), scaled: newHeight, size: height)
    var out = [Float](repeating: 0, count: channels * newWidth * newHeight)
    planes.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            for c in 0..<channels {
                let s = c * width * height, d = c * newWidth * newHeight
                for (y, (y0, y1, wy)) in ty.enumerated() {
                    for (x, (x0, x1, wx)) in tx.enumerated() {
                        let a = src[s + y0 * width + x0], b = src[s + y0 * width + x1]
                        let e = src[s + y1 * width + x0], f = src[s + y1 * width + x1]
                        let top = a + (b - a) * wx, bottom = e + (f - e) * wx
                        dst[d + y * newWidth + x] = top + (bottom - top) * wy
                    }
                }
            }
        }
    }
    return out
}

extension Image {
    /// The RGB image as CHW floats in [-1, 1], resized bilinearly to
    /// `width`×`height` (unchanged size: an exact conversion).
    public func normalizedPlanes(width: Int? = nil, height: Int? = nil) -> [Float] {
        let rgb = (try? self.rgb()) ?? self
        let w = width ?? rgb.width, h = height ?? rgb.height
        var out = [Float](repeating: 0, count: 3 * w * h)
        out.withUnsafeMutableBufferPointer { buffer in
            sampleBilinear(rgb, scaledWidth: w, scaledHeight: h, columns: Array(0..<w), rows: Array(0..<h), into: buffer)
        }
        return out
    }
}
