import Foundation
import XCTest

@testable import Runtime

/// Augmentation, the epoch order, batches that depend only on the step,
/// the background prefetcher and --on-bad-file.
final class LoaderTests: TemporaryDirectoryTestCase {
    func crop(_ augmentation: Augmentation, _ image: Image, _ mask: LabelMap?, seed: UInt64) -> ([Float], [Int32]) {
        let s = augmentation.cropSize
        var x = [Float](repeating: .nan, count: 3 * s * s), labels = [Int32](repeating: -1, count: s * s)
        var rng = SplitMix64(seed: seed)
        x.withUnsafeMutableBufferPointer { xs in
            labels.withUnsafeMutableBufferPointer { ls in
                augmentation.apply(image, mask: mask, rng: &rng, x: xs, labels: mask == nil ? nil : ls)
            }
        }
        return (x, labels)
    }

    func testCropOfAnExactSizeImageIsTheImageOrItsMirrorInMinusOneToOne() throws {
        let (image, mask) = try scene(width: 8, height: 8, classes: 3, seed: 4)
        var seen = Set<Bool>()
        for seed in 0..<16 as Range<UInt64> {
            let (x, labels) = crop(Augmentation(cropSize: 8), image, mask, seed: seed)
            let flipped = labels[0] != Int32(mask.labels[0]) || labels[7] != Int32(mask.labels[7])
                ? true : zip(0..<64, labels).allSatisfy { Int32(mask.labels[$0]) == $1 } ? false : true
            seen.insert(flipped)
            for y in 0..<8 { for col in 0..<8 {
                let source = y * 8 + (flipped ? 7 - col : col)
                XCTAssertEqual(labels[y * 8 + col], Int32(mask.labels[source]))
                for c in 0..<3 { XCTAssertEqual(x[c * 64 + y * 8 + col], Float(image.pixels[source * 3 + c]) / 127.5 - 1) }
            } }
        }
        XCTAssertEqual(seen, [false, true], "both flipped and unflipped crops occur")
        let (_, noFlip) = crop(Augmentation(cropSize: 8, flip: false), image, mask, seed: 3)
        XCTAssertEqual(noFlip, mask.labels.map { Int32($0) })
    }

    /// Through resizing, random scales, crops and flips, image and mask stay aligned.
    func testImageAndMaskStayAlignedThroughResizeScaleCropAndFlip() throws {
        let (image, mask) = try scene(width: 90, height: 60, classes: 4, seed: 11)
        let augmentation = Augmentation(cropSize: 32, resizeShortSide: 48, scaleRange: 0.75...1.5)
        for seed in 0..<10 as Range<UInt64> {
            let (x, labels) = crop(augmentation, image, mask, seed: seed)
            var agree = 0
            for p in 0..<(32 * 32) {
                let colour = classColour(Int(labels[p]))
                let rgb = (0..<3).map { (x[$0 * 1024 + p] + 1) * 127.5 }
                if abs(rgb[0] - Float(colour.0)) < 2 && abs(rgb[1] - Float(colour.1)) < 2 && abs(rgb[2] - Float(colour.2)) < 2 { agree += 1 }
            }
            // Only pixels on class boundaries may blend.
            XCTAssertGreaterThan(agree, 900, "seed \(seed)")
            XCTAssertTrue(x.allSatisfy { (-1...1).contains($0) })
        }
        var rng = SplitMix64(seed: 1)
        for _ in 0..<50 {
            let p = augmentation.place(width: 90, height: 60, rng: &rng)
            XCTAssertGreaterThanOrEqual(p.scaledHeight, 36)
            XCTAssertLessThanOrEqual(p.scaledHeight, 72)
            XCTAssertEqual(Double(p.scaledWidth) / Double(p.scaledHeight), 1.5, accuracy: 0.05)
            XCTAssertLessThanOrEqual(p.left + 32, p.scaledWidth)
            XCTAssertLessThanOrEqual(p.top + 32, p.scaledHeight)
        }
        // Small images are upscaled to fit the crop.
        let tiny = Augmentation(cropSize: 32).place(width: 10, height: 20, rng: &rng)
        XCTAssertEqual(tiny.scaledWidth, 32)
        XCTAssertEqual(tiny.scaledHeight, 64)
        // Absurd factors give a capped size, not an Int overflow trap; the crop still fits.
        let absurd = Augmentation(cropSize: 8, resizeShortSide: Int.max / 2, scaleRange: 1e300...1e300)
        let (x, labels) = crop(absurd, try Image(width: 3, height: 2, channels: 3, pixels: [UInt8](repeating: 9, count: 18)),
                               LabelMap(width: 3, height: 2, labels: [UInt8](repeating: 1, count: 6)), seed: 1)
        XCTAssertTrue(x.allSatisfy { $0.isFinite } && labels.allSatisfy { $0 == 1 })
    }

    func testResizeBilinearMatchesHalfPixelCentres() {
        // 2 → 4 with align_corners=False: [a, a·3/4 + b/4, a/4 + b·3/4, b].
        let up = resizeBilinear([0, 4], channels: 1, width: 2, height: 1, newWidth: 4, newHeight: 1)
        XCTAssertEqual(up, [0, 1, 3, 4])
        let down = resizeBilinear([0, 2, 4, 6], channels: 1, width: 4, height: 1, newWidth: 2, newHeight: 1)
        XCTAssertEqual(down, [1, 5])
        let constant = resizeBilinear([Float](repeating: 3, count: 2 * 5 * 7), channels: 2, width: 5, height: 7, newWidth: 11, newHeight: 3)
        XCTAssertTrue(constant.allSatisfy { $0 == 3 })
    }

    func testEpochOrderIsAPermutationPerEpochFromTheSeed() {
        let order = SampleOrder(count: 10, seed: 5)
        let first = (0..<10).map { order.index(at: $0) }, second = (10..<20).map { order.index(at: $0) }
        XCTAssertEqual(first.sorted(), Array(0..<10))
        XCTAssertEqual(second.sorted(), Array(0..<10))
        XCTAssertNotEqual(first, second)
        let again = SampleOrder(count: 10, seed: 5)
        XCTAssertEqual((10..<20).map { again.index(at: $0) }, second, "an epoch's order needs no earlier epoch")
        XCTAssertNotEqual((0..<10).map { SampleOrder(count: 10, seed: 6).index(at: $0) }, first)
    }

    func makeSet(count: Int) throws -> LabeledDataset {
        for i in 0..<count {
            let (image, mask) = try scene(width: 24, height: 20, classes: 3, seed: UInt64(i))
            try write(image, "set/images/\(i).png")
            try write(mask, "set/masks/\(i).png")
        }
        return try LabeledDataset(root: url("set"), classes: 3)
    }

    /// A step's batch is the same whichever maker builds it, in whatever
    /// order, on one thread or several — what resuming relies on.
    func testBatchesDependOnlyOnTheStep() throws {
        let set = try makeSet(count: 5)
        let augmentation = Augmentation(cropSize: 16, scaleRange: 0.8...1.2)
        func maker(_ threads: Int) -> BatchMaker {
            BatchMaker(source: set, batchSize: 3, augmentation: augmentation, seed: 9, withLabels: true, threads: threads)
        }
        let a = maker(1), b = maker(2)
        let forward = try (0..<6).map { try a.batch(step: $0) }
        let backward = try (0..<6).reversed().map { try b.batch(step: $0) }.reversed()
        for (x, y) in zip(forward, backward) {
            XCTAssertEqual(x.floats, y.floats)
            XCTAssertEqual(x.ints, y.ints)
            XCTAssertEqual(x.names, y.names)
        }
        XCTAssertEqual(forward[0].floats["x"]?.count, 3 * 3 * 16 * 16)
        XCTAssertEqual(forward[0].ints["labels"]?.count, 3 * 16 * 16)
        // 6 steps × 3 = 18 positions: 3 full epochs and a bit, every image in each epoch.
        let names = forward.flatMap(\.names)
        XCTAssertEqual(Set(names.prefix(5)).count, 5)
        XCTAssertEqual(Set(names[5..<10]).count, 5)
        XCTAssertEqual(a.steps(forEpochs: 2), 4)
        XCTAssertNotEqual(try BatchMaker(source: set, batchSize: 3, augmentation: augmentation, seed: 10, withLabels: true).batch(step: 0).floats,
                          forward[0].floats)
    }

    func testPrefetcherDeliversInOrderFromAnyStartAndPassesErrorsOn() throws {
        let prefetcher = Prefetcher(steps: 7..<40, depth: 2) { step -> Int in
            if step == 30 { throw DataError(.unreadable, file: "f.png", "broken") }
            usleep(UInt32(step % 3) * 100)
            return step * step
        }
        for step in 7..<30 { XCTAssertEqual(try prefetcher.next(), step * step) }
        XCTAssertThrowsError(try prefetcher.next()) { XCTAssertEqual("\($0)", "f.png: broken") }
        // Released while its producer waits on a full queue: no hang.
        for _ in 0..<5 {
            let idle = Prefetcher(steps: 0..<1000, depth: 1) { $0 }
            XCTAssertEqual(try idle.next(), 0)
        }
    }

    func testBadFilesFailNamingTheFileOrAreSkippedDeterministically() throws {
        let image = try Image(width: 16, height: 16, channels: 3, pixels: Array(repeating: 100, count: 768))
        for i in 0..<6 { try write(image, "photos/\(i).png") }
        try Data("not an image".utf8).write(to: url("photos/3.png"))
        let collection = try ImageCollection(directory: url("photos"))
        let augmentation = Augmentation(cropSize: 16)

        let failing = BatchMaker(source: collection, batchSize: 6, augmentation: augmentation, seed: 1, withLabels: false)
        XCTAssertThrowsError(try failing.batch(step: 0)) {
            XCTAssertTrue("\($0)".hasPrefix(url("photos/3.png").path + ": "), "\($0)")
        }

        final class Warnings: @unchecked Sendable { var lines: [String] = []; let lock = NSLock() }
        let warnings = Warnings()
        func skipping() -> BatchMaker {
            BatchMaker(source: collection, batchSize: 4, augmentation: augmentation, seed: 1, withLabels: false, onBadFile: .skip,
                       threads: 2, warn: { line in warnings.lock.withLock { warnings.lines.append(line) } })
        }
        let maker = skipping()
        let batches = try (0..<6).map { try maker.batch(step: $0) }
        XCTAssertFalse(batches.flatMap(\.names).contains("3.png"))
        XCTAssertEqual(warnings.lines.count, 1, "\(warnings.lines)")
        XCTAssertTrue(warnings.lines[0].contains("skipping \(url("photos/3.png").path)"), warnings.lines[0])
        XCTAssertEqual(maker.skippedFiles.count, 1)
        // A fresh maker (a resumed run) builds step 4 the same without steps 0...3.
        XCTAssertEqual(try skipping().batch(step: 4).names, batches[4].names)

        // All files bad: an error, not an endless search.
        for i in 0..<6 { try Data("x".utf8).write(to: url("photos/\(i).png")) }
        XCTAssertThrowsError(try BatchMaker(source: try ImageCollection(directory: url("photos")), batchSize: 2, augmentation: augmentation,
                                            seed: 1, withLabels: false, onBadFile: .skip).batch(step: 0)) {
            XCTAssertTrue("\($0)".contains("unreadable"), "\($0)")
        }
    }

    /// A label outside the class range is a configuration error even with --on-bad-file skip.
    func testOutOfRangeLabelsFailEvenWhenSkipping() throws {
        let set = try makeSet(count: 3)
        var mask = try scene(width: 24, height: 20, classes: 3, seed: 1).1
        mask.labels[5] = 7
        try write(mask, "set/masks/1.png")
        let maker = BatchMaker(source: set, batchSize: 3, augmentation: Augmentation(cropSize: 8), seed: 1, withLabels: true, onBadFile: .skip)
        XCTAssertThrowsError(try maker.batch(step: 0)) { XCTAssertTrue("\($0)".contains("masks/1.png: mask value 7"), "\($0)") }
    }
}
