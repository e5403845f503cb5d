import Foundation

/// Composes labeled segmentation scenes from Fashion-MNIST objects: each
/// scene is a textured background with a few objects pasted at random
/// places, scales and tints; every pixel of an object is labeled with the
/// object's class + 1 (0 is background), so the masks are exact. Written in
/// the generic layout: `images/NAME.png`, `masks/NAME.png`, `classes.txt`.
public struct SceneComposer {
    public var size = 64
    public var objectsPerScene = 2...4
    /// Object side as a fraction of the scene side.
    public var objectScale = 0.35...0.6
    /// Fashion-MNIST pixels at or above this intensity belong to the object.
    public var objectThreshold: UInt8 = 32

    public static let classNames = ["background"] + FashionMNIST.classNames

    public init() {}

    /// One scene: HWC RGB pixels and its H×W mask.
    public func scene(from source: FashionMNIST, rng: inout SplitMix64) -> (image: [UInt8], mask: [UInt8]) {
        let n = size
        var image = [UInt8](repeating: 0, count: n * n * 3)
        var mask = [UInt8](repeating: 0, count: n * n)
        // Background: a smooth colour gradient with mild noise.
        let base = (0..<3).map { _ in Double.random(in: 40...140, using: &rng) }
        let slope = (0..<3).map { _ in Double.random(in: -40...40, using: &rng) }
        for y in 0..<n {
            for x in 0..<n {
                for c in 0..<3 {
                    let ramp = slope[c] * (Double(x + y) / Double(2 * n) - 0.5)
                    let value = base[c] + ramp + Double.random(in: -12...12, using: &rng)
                    image[(y * n + x) * 3 + c] = UInt8(max(0, min(255, value)))
                }
            }
        }
        for _ in 0..<Int.random(in: objectsPerScene, using: &rng) {
            let index = Int.random(in: 0..<source.count, using: &rng)
            let label = source.labels[index]
            let glyph = source.image(index)
            let side = max(8, Int(Double(n) * Double.random(in: objectScale, using: &rng)))
            let top = Int.random(in: 0...(n - side), using: &rng), left = Int.random(in: 0...(n - side), using: &rng)
            let tint = (0..<3).map { _ in Double.random(in: 0.5...1.0, using: &rng) }
            for y in 0..<side {
                for x in 0..<side {
                    // Nearest-neighbour resize of the 28×28 glyph.
                    let sy = y * source.rows / side, sx = x * source.columns / side
                    let v = glyph[glyph.startIndex + sy * source.columns + sx]
                    guard v >= objectThreshold else { continue }
                    let p = (top + y) * n + left + x
                    mask[p] = label + 1
                    for c in 0..<3 { image[p * 3 + c] = UInt8(min(255, Double(v) * tint[c] + 30)) }
                }
            }
        }
        return (image, mask)
    }

    /// Throws when one scene of `size` does not fit in memory: its pixels, its
    /// mask and their PNG encodings (about 8 bytes per pixel).
    public func requireMemory() throws {
        try MemoryBudget.require(Double(size) * Double(size) * 8, for: "a \(size)×\(size) scene",
                                 advice: "use a smaller --size")
    }

    /// Write `count` scenes into `directory` (created; must be empty or new).
    public func write(from source: FashionMNIST, count: Int, seed: UInt64, to directory: URL) throws {
        try requireMemory()
        let fm = FileManager.default
        let images = directory.appendingPathComponent("images"), masks = directory.appendingPathComponent("masks")
        try OutputFolder.requireNewOrEmpty(directory, advice: "choose a new folder for the scenes")
        try fm.createDirectory(at: images, withIntermediateDirectories: true)
        try fm.createDirectory(at: masks, withIntermediateDirectories: true)
        var rng = SplitMix64(seed: seed)
        let digits = String(count).count
        for i in 0..<count {
            let (pixels, mask) = scene(from: source, rng: &rng)
            let name = "scene_" + String(repeating: "0", count: digits - String(i).count) + String(i) + ".png"
            try Image(width: size, height: size, channels: 3, pixels: pixels).writePNG(to: images.appendingPathComponent(name))
            try Image(width: size, height: size, channels: 1, pixels: mask).writePNG(to: masks.appendingPathComponent(name))
        }
        try writeAtomically(Data((Self.classNames.joined(separator: "\n") + "\n").utf8),
                            to: directory.appendingPathComponent("classes.txt"))
    }
}
