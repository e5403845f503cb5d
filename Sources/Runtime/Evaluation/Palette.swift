/// Colours for class ids: the PASCAL VOC colour map (class 0 black, 1 dark
/// red, 2 dark green, ...; the bits of the id spread over R, G and B), the
/// usual colours of segmentation masks. The ignore label 255 is white.
public enum Palette {
    public static func color(_ label: UInt8) -> (UInt8, UInt8, UInt8) {
        if label == LabelMap.ignoreLabel { return (255, 255, 255) }
        var r = 0, g = 0, b = 0, c = Int(label)
        for shift in stride(from: 7, through: 0, by: -1) {
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        }
        return (UInt8(r), UInt8(g), UInt8(b))
    }

    /// The mask as an RGB image in palette colours.
    public static func colorize(_ mask: LabelMap) throws -> Image {
        var pixels = [UInt8](repeating: 0, count: mask.labels.count * 3)
        for (i, label) in mask.labels.enumerated() {
            let (r, g, b) = color(label)
            pixels[3 * i] = r
            pixels[3 * i + 1] = g
            pixels[3 * i + 2] = b
        }
        return try Image(width: mask.width, height: mask.height, channels: 3, pixels: pixels)
    }

    /// The image with the mask's colours blended over it (`alpha` of the colour).
    public static func overlay(_ mask: LabelMap, on image: Image, alpha: Double = 0.5) throws -> Image {
        let rgb = try image.rgb()
        precondition(rgb.width == mask.width && rgb.height == mask.height, "overlay: mask and image sizes differ")
        var pixels = rgb.pixels
        for (i, label) in mask.labels.enumerated() {
            let (r, g, b) = color(label)
            for (k, value) in [r, g, b].enumerated() {
                let blended = (1 - alpha) * Double(pixels[3 * i + k]) + alpha * Double(value)
                pixels[3 * i + k] = UInt8(min(255, max(0, blended.rounded())))
            }
        }
        return try Image(width: rgb.width, height: rgb.height, channels: 3, pixels: pixels)
    }
}
