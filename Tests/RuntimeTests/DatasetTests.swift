import Foundation
import XCTest

@testable import Runtime

/// Each labeled layout on a small fixture: files found and paired, class
/// counts and ignore conventions, label fractions, bad masks.
final class DatasetTests: TemporaryDirectoryTestCase {
    func testGenericLayoutWithClassesFileAndNestedNames() throws {
        for (i, name) in ["b", "a", "sub/c"].enumerated() {
            let (image, mask) = try scene(width: 20, height: 12, classes: 3, seed: UInt64(i))
            try write(image, "set/images/\(name)" + (i == 0 ? ".jpg" : ".png"))
            try write(mask, "set/masks/\(name).png")
        }
        try writeText("background\nred\n\ngreen\n", "set/classes.txt")
        let set = try LabeledDataset(root: url("set"))
        XCTAssertEqual(set.layout, .generic)
        XCTAssertEqual(set.classes, 3)
        XCTAssertEqual(set.classNames, ["background", "red", "green"])
        XCTAssertEqual(set.samples.map(\.name), ["images/a.png", "images/b.jpg", "images/sub/c.png"])
        let (image, mask) = try set.load(at: 2)
        XCTAssertEqual(image.channels, 3)
        XCTAssertEqual(mask, try scene(width: 20, height: 12, classes: 3, seed: 2).1)

        // The model's class count must agree with classes.txt.
        XCTAssertThrowsError(try LabeledDataset(root: url("set"), classes: 5)) {
            XCTAssertTrue("\($0)".contains("lists 3 classes but the model has 5"), "\($0)")
        }
    }

    func testGenericLayoutWithoutClassesFileTakesTheModelsCountAndSplitFolders() throws {
        for split in ["train", "val"] {
            let (image, mask) = try scene(width: 8, height: 8, classes: 2, seed: 1)
            try write(image, "set/\(split)/images/x.png")
            try write(mask, "set/\(split)/masks/x.png")
        }
        XCTAssertThrowsError(try LabeledDataset(root: url("set"), layout: .generic)) {
            XCTAssertTrue("\($0)".contains("classes.txt"), "\($0)")
        }
        XCTAssertEqual(DatasetLayout.detect(url("set")), .generic, "split folders are detected too")
        let val = try LabeledDataset(root: url("set"), split: "val", classes: 2)
        XCTAssertEqual(val.samples.map(\.name), ["val/images/x.png"])
        XCTAssertEqual(val.classes, 2)
    }

    func testCityscapesLayout() throws {
        for (city, frame) in [("aachen", "aachen_000001_000019"), ("bremen", "bremen_000000_000019")] {
            let (image, mask) = try scene(width: 16, height: 8, classes: 19, seed: 3)
            try write(image, "cs/leftImg8bit/train/\(city)/\(frame)_leftImg8bit.png")
            var labels = mask
            labels.labels[0] = 255  // ignored
            try write(labels, "cs/gtFine/train/\(city)/\(frame)_gtFine_labelTrainIds.png")
            // Other gtFine files are not masks.
            try write(mask, "cs/gtFine/train/\(city)/\(frame)_gtFine_labelIds.png")
        }
        let set = try LabeledDataset(root: url("cs"))
        XCTAssertEqual(set.layout, .cityscapes)
        XCTAssertEqual(set.classes, 19)
        XCTAssertEqual(set.classNames.first, "road")
        XCTAssertEqual(set.samples.map(\.name), ["leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png",
                                                 "leftImg8bit/train/bremen/bremen_000000_000019_leftImg8bit.png"])
        let mask = try XCTUnwrap(try set.load(at: 0).mask)
        XCTAssertEqual(mask.labels[0], 255)
        XCTAssertEqual(Set(mask.labels).subtracting([255]).max().map { $0 < 19 }, true)
        XCTAssertThrowsError(try LabeledDataset(root: url("cs"), classes: 2)) {
            XCTAssertTrue("\($0)".contains("has 19 classes"), "\($0)")
        }
        // A missing split is an error naming it.
        XCTAssertThrowsError(try LabeledDataset(root: url("cs"), split: "val")) {
            XCTAssertTrue("\($0)".contains("leftImg8bit/val"), "\($0)")
        }
    }

    /// ADE20K stores classes 1...150 and 0 for "other": 0 → 255, v → v − 1.
    func testADE20KLayoutShiftsLabels() throws {
        let raw = LabelMap(width: 4, height: 2, labels: [0, 1, 2, 150, 150, 0, 7, 255])
        let image = try Image(width: 4, height: 2, channels: 3, pixels: Array(repeating: 9, count: 24))
        try write(image, "ADEChallengeData2016/images/training/ADE_train_00000001.jpg")
        try write(raw, "ADEChallengeData2016/annotations/training/ADE_train_00000001.png")
        try write(image, "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg")
        try write(LabelMap(width: 4, height: 2, labels: [151, 1, 1, 1, 1, 1, 1, 1]),
                  "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png")
        // Found from the folder above ADEChallengeData2016 and from inside it.
        for root in [directory!, url("ADEChallengeData2016")] {
            let set = try LabeledDataset(root: root)
            XCTAssertEqual(set.layout, .ade20k)
            XCTAssertEqual(set.classes, 150)
            XCTAssertEqual(set.samples.map(\.name), ["images/training/ADE_train_00000001.jpg"])
            XCTAssertEqual(try set.load(at: 0).mask?.labels, [255, 0, 1, 149, 149, 255, 6, 255])
        }
        // 151 is outside 1...150: an error naming the file and the value.
        let val = try LabeledDataset(root: directory, split: "val")
        XCTAssertThrowsError(try val.load(at: 0)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("ADE_val_00000001.png"), text)
            XCTAssertTrue(text.contains("mask value 151"), text)
            XCTAssertEqual((error as? DataError)?.kind, .invalid)
        }
    }

    /// Pascal Context (59 classes): split lists, 0 ignored, v → v − 1.
    func testPascalContextLayout() throws {
        let image = try Image(width: 3, height: 2, channels: 3, pixels: Array(repeating: 50, count: 18))
        for name in ["2008_000002", "2008_000003", "2008_000007"] {
            try write(image, "pc/JPEGImages/\(name).jpg")
            try write(LabelMap(width: 3, height: 2, labels: [0, 1, 59, 2, 3, 0]), "pc/SegmentationClassContext/\(name).png")
        }
        try writeText("2008_000003\n2008_000002\n", "pc/ImageSets/SegmentationContext/train.txt")
        try writeText("2008_000007\n2008_000099\n", "pc/ImageSets/SegmentationContext/val.txt")
        let set = try LabeledDataset(root: url("pc"))
        XCTAssertEqual(set.layout, .pascalContext)
        XCTAssertEqual(set.classes, 59)
        XCTAssertEqual(set.classNames.count, 59)
        XCTAssertEqual(set.samples.map(\.name), ["JPEGImages/2008_000002.jpg", "JPEGImages/2008_000003.jpg"])
        XCTAssertEqual(try set.load(at: 0).mask?.labels, [255, 0, 58, 1, 2, 255])
        XCTAssertThrowsError(try LabeledDataset(root: url("pc"), split: "val")) {
            XCTAssertTrue("\($0)".contains("2008_000099"), "\($0)")
        }
    }

    func testUnknownLayoutMissingMaskAndMaskProblems() throws {
        try writeText("x", "nothing/readme.txt")
        XCTAssertThrowsError(try LabeledDataset(root: url("nothing"))) { XCTAssertTrue("\($0)".contains("not a known data set layout"), "\($0)") }

        let (image, mask) = try scene(width: 10, height: 6, classes: 3, seed: 1)
        try write(image, "set/images/a.png")
        try write(image, "set/images/b.png")
        try write(mask, "set/masks/a.png")
        XCTAssertThrowsError(try LabeledDataset(root: url("set"), classes: 3)) { XCTAssertTrue("\($0)".contains("masks/b.png"), "\($0)") }
        let skipping = try LabeledDataset(root: url("set"), classes: 3, onBadFile: .skip)
        XCTAssertEqual(skipping.samples.map(\.name), ["images/a.png"])
        XCTAssertEqual(skipping.skipped.count, 1)
        XCTAssertTrue(skipping.skipped[0].contains("has no mask"), skipping.skipped[0])

        // Wrong size, a class outside the range, an RGB mask, a corrupt mask.
        try write(LabelMap(width: 9, height: 6, labels: Array(repeating: 0, count: 54)), "set/masks/b.png")
        let set = try LabeledDataset(root: url("set"), classes: 3)
        XCTAssertThrowsError(try set.load(at: 1)) {
            XCTAssertTrue("\($0)".contains("the mask is 9×6 but its image"), "\($0)")
            XCTAssertEqual(($0 as? DataError)?.kind, .unreadable)
        }
        var bad = mask
        bad.labels[13] = 3
        try write(bad, "set/masks/b.png")
        XCTAssertThrowsError(try set.load(at: 1)) {
            XCTAssertTrue("\($0)".contains("masks/b.png: mask value 3 at x=3, y=1 is outside the class range"), "\($0)")
        }
        try image.writePNG(to: url("set/masks/b.png"))
        XCTAssertThrowsError(try set.load(at: 1)) { XCTAssertTrue("\($0)".contains("RGB PNG"), "\($0)") }
        try Data([0x89, 0x50, 0x4E, 0x47, 1, 2, 3]).write(to: url("set/masks/b.png"))
        XCTAssertThrowsError(try set.load(at: 1)) {
            XCTAssertTrue("\($0)".contains("masks/b.png"), "\($0)")
            XCTAssertEqual(($0 as? DataError)?.kind, .unreadable)
        }
    }

    func testLabelFractionParsingAndCounts() {
        XCTAssertEqual(LabelFraction("1/30")?.value ?? 0, 1.0 / 30, accuracy: 1e-12)
        XCTAssertEqual(LabelFraction("5%")?.value ?? 0, 0.05, accuracy: 1e-12)
        XCTAssertEqual(LabelFraction("0.25")?.value, 0.25)
        XCTAssertEqual(LabelFraction("1")?.value, 1)
        for bad in ["0", "2", "-1/3", "1/0", "150%", "half", ""] { XCTAssertNil(LabelFraction(bad), bad) }
        XCTAssertEqual(LabelFraction("1/30")!.count(of: 2975), 99)
        XCTAssertEqual(LabelFraction("1/8")!.count(of: 2975), 372)
        XCTAssertEqual(LabelFraction("1%")!.count(of: 20), 1, "at least one image")
        XCTAssertEqual(LabelFraction("1")!.count(of: 20), 20)
    }

    /// The same seed picks the same subset (in name order), other seeds other subsets.
    func testLabelFractionSubsetIsReproducibleFromTheSeed() throws {
        let image = try Image(width: 2, height: 2, channels: 3, pixels: Array(repeating: 1, count: 12))
        for i in 0..<40 {
            try write(image, "set/images/img\(i).png")
            try write(LabelMap(width: 2, height: 2, labels: [0, 1, 0, 1]), "set/masks/img\(i).png")
        }
        let set = try LabeledDataset(root: url("set"), classes: 2)
        let quarter = LabelFraction("25%")!
        let a = set.subset(quarter, seed: 7), b = try LabeledDataset(root: url("set"), classes: 2).subset(quarter, seed: 7)
        XCTAssertEqual(a.samples.count, 10)
        XCTAssertEqual(a.samples, b.samples)
        XCTAssertEqual(a.samples.map(\.name), a.samples.map(\.name).sorted())
        XCTAssertNotEqual(set.subset(quarter, seed: 8).samples, a.samples)
        XCTAssertEqual(try set.restricted(to: a.samples.map(\.name)).samples, a.samples)
        XCTAssertEqual(set.subset(.all, seed: 7).samples, set.samples)
        // The draw is pinned: these names are what seed 7 chooses on every machine.
        XCTAssertEqual(a.samples.map(\.name).joined(separator: ","), Self.pinnedSubset)
    }

    static let pinnedSubset = "images/img1.png,images/img12.png,images/img16.png,images/img17.png,images/img20.png,images/img25.png,images/img29.png,images/img30.png,images/img35.png,images/img5.png"

    func testImageCollectionFindsPNGAndJPEGRecursively() throws {
        let image = try Image(width: 3, height: 3, channels: 1, pixels: Array(repeating: 128, count: 9))
        try write(image, "photos/b.png")
        try write(image, "photos/a/c.JPG")
        try write(image, "photos/a/d.jpeg")
        try writeText("not an image", "photos/notes.txt")
        let collection = try ImageCollection(directory: url("photos"))
        XCTAssertEqual(collection.relativePaths, ["a/c.JPG", "a/d.jpeg", "b.png"])
        let (loaded, mask) = try collection.load(at: 2)
        XCTAssertEqual(loaded.channels, 3, "grey becomes RGB")
        XCTAssertNil(mask)
        XCTAssertThrowsError(try ImageCollection(directory: url("photos/a/c.JPG")))
        try FileManager.default.createDirectory(at: url("empty"), withIntermediateDirectories: true)
        XCTAssertThrowsError(try ImageCollection(directory: url("empty"))) { XCTAssertTrue("\($0)".contains("no .png, .jpg or .jpeg"), "\($0)") }
    }
}
