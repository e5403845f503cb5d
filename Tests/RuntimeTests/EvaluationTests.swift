import Foundation
import XCTest

@testable import Runtime

/// Metrics against hand-computed confusion matrices, and test-time
/// tiling, flips and scales on fake models whose answers are known.
final class EvaluationTests: XCTestCase {
    // MARK: Metrics

    func testConfusionMatrixAndMetricsMatchAHandComputedExample() throws {
        var m = ConfusionMatrix(classes: 3)
        m.add(groundTruth: [0, 0, 1, 1, 2, 255, 2, 0], prediction: [0, 1, 1, 1, 0, 2, 2, 0])
        // Pairs (gt, prediction) without the ignored pixel:
        // (0,0) (0,1) (1,1) (1,1) (2,0) (2,2) (0,0)
        XCTAssertEqual(m.counts, [2, 1, 0,
                                  0, 2, 0,
                                  1, 0, 1])
        let metrics = m.metrics
        // IoU = TP / (TP + FP + FN): 2/(2+1+1), 2/(2+1+0), 1/(1+0+1).
        XCTAssertEqual(metrics.iou.map { $0! }, [0.5, 2.0 / 3, 0.5])
        XCTAssertEqual(metrics.meanIoU, (0.5 + 2.0 / 3 + 0.5) / 3, accuracy: 1e-15)
        XCTAssertEqual(metrics.pixelAccuracy, 5.0 / 7, accuracy: 1e-15)
        XCTAssertEqual(metrics.accuracy.map { $0! }, [2.0 / 3, 1, 0.5])
        XCTAssertEqual(metrics.meanAccuracy, (2.0 / 3 + 1 + 0.5) / 3, accuracy: 1e-15)
        XCTAssertEqual(metrics.labeledPixels, 7)
    }

    /// Classes in neither ground truth nor prediction are left out of the
    /// mean; a class only predicted counts with IoU 0.
    func testAbsentClassesAreLeftOutAndFalsePositiveOnlyClassesCount() {
        var m = ConfusionMatrix(classes: 4)
        m.add(groundTruth: [0, 0, 1, 1], prediction: [0, 2, 1, 1])
        let metrics = m.metrics
        XCTAssertEqual(metrics.iou[0], 0.5)
        XCTAssertEqual(metrics.iou[1], 1)
        XCTAssertEqual(metrics.iou[2], 0, "predicted, never in the ground truth")
        XCTAssertNil(metrics.iou[3], "in neither: no IoU")
        XCTAssertNil(metrics.accuracy[2])
        XCTAssertEqual(metrics.classesCounted, 3)
        XCTAssertEqual(metrics.meanIoU, 0.5, accuracy: 1e-15)
        XCTAssertEqual(metrics.pixelAccuracy, 0.75)

        var total = ConfusionMatrix(classes: 4)
        total.merge(m)
        total.merge(m)
        XCTAssertEqual(total.counts, m.counts.map { 2 * $0 })
        XCTAssertEqual(total.metrics.meanIoU, metrics.meanIoU)
        XCTAssertTrue(ConfusionMatrix(classes: 2).metrics.meanIoU.isNaN, "nothing counted yet")
    }

    func testReportJSONAndTable() throws {
        var m = ConfusionMatrix(classes: 3)
        m.add(groundTruth: [0, 0, 1, 1, 2, 255, 2, 0], prediction: [0, 1, 1, 1, 0, 2, 2, 0])
        let report = EvaluationReport(matrix: m, classNames: ["road", "car", "sky"], images: 1, details: ["flip": "true"])
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: try report.json()) as? [String: Any])
        XCTAssertEqual((object["mIoU"] as? NSNumber)?.doubleValue ?? 0, (0.5 + 2.0 / 3 + 0.5) / 3, accuracy: 1e-12)
        XCTAssertEqual(object["confusion_matrix"] as? [[Int]], [[2, 1, 0], [0, 2, 0], [1, 0, 1]])
        XCTAssertEqual(object["flip"] as? String, "true")
        let perClass = try XCTUnwrap(object["per_class"] as? [[String: Any]])
        XCTAssertEqual(perClass.map { $0["name"] as? String }, ["road", "car", "sky"])
        XCTAssertEqual(perClass[1]["ground_truth_pixels"] as? Int, 2)
        let table = report.table()
        XCTAssertTrue(table.contains("mIoU  55.56 %"), table)
        XCTAssertTrue(table.contains("   1  car"), table)
        XCTAssertTrue(table.contains("confusion matrix (rows: ground truth, columns: prediction)"), table)
    }

    // MARK: Tiles, flips, scales

    func testTileStarts() {
        XCTAssertEqual(SegmentationPredictor.tileStarts(length: 64, tile: 32, stride: 32), [0, 32])
        XCTAssertEqual(SegmentationPredictor.tileStarts(length: 70, tile: 32, stride: 32), [0, 32, 38])
        XCTAssertEqual(SegmentationPredictor.tileStarts(length: 20, tile: 32, stride: 32), [0])
        XCTAssertEqual(SegmentationPredictor.tileStarts(length: 64, tile: 32, stride: 16), [0, 16, 32])
    }

    /// An image twice as wide as the model's input is run as its two halves
    /// (Cityscapes' evaluation of 1024×2048 images at 1024).
    func testWideImageIsRunAsTwoSquareHalves() throws {
        var rng = SplitMix64(seed: 1)
        let image = try Image(width: 16, height: 8, channels: 3, pixels: (0..<(16 * 8 * 3)).map { _ in UInt8.random(in: 0...255, using: &rng) })
        var calls: [[Float]] = []
        let predictor = SegmentationPredictor(batch: 4, size: 8, classes: 2, options: InferenceOptions()) { x in
            calls.append(x)
            return [Float](repeating: 0, count: 4 * 2 * 64)
        }
        _ = try predictor.predict(image)
        XCTAssertEqual(calls.count, 1, "both halves in one batch")
        let planes = image.normalizedPlanes()
        for half in 0..<2 { for c in 0..<3 { for y in 0..<8 { for x in 0..<8 {
            XCTAssertEqual(calls[0][((half * 3 + c) * 8 + y) * 8 + x], planes[(c * 8 + y) * 16 + half * 8 + x])
        } } } }
        XCTAssertTrue(calls[0][(2 * 3 * 64)...].allSatisfy { $0 == 0 }, "unused batch slots are zero")
        XCTAssertEqual(predictor.calls(width: 16, height: 8), calls.count, "the announced number of calls")
    }

    /// The number of calls announced before a large prediction counts every
    /// scale and flip, `batch` tiles per call.
    func testCallCountCoversScalesAndFlips() {
        let options = InferenceOptions(flip: true, scales: [1, 0.5])
        let predictor = SegmentationPredictor(batch: 2, size: 32, classes: 2, options: options) { _ in [] }
        // Scale 1: 2×1 tiles, flipped too: 4 tiles, 2 calls; scale 0.5: 1 tile, twice: 1 call.
        XCTAssertEqual(predictor.calls(width: 64, height: 32), 3)
    }

    /// A pointwise "model" (logit c = channel c) must give the per-pixel
    /// answer whatever the tiling, overlap, padding, flips and scales.
    func testTilingFlipsAndScalesReassembleAPointwiseModelExactly() throws {
        let (w, h) = (45, 37)
        var pixels = [UInt8](repeating: 0, count: w * h * 3)
        var expected = [UInt8](repeating: 0, count: w * h)
        for y in 0..<h { for x in 0..<w {
            let c = (x / 15 + y / 12) % 3  // blocks of one dominant channel
            expected[y * w + x] = UInt8(c)
            for k in 0..<3 { pixels[(y * w + x) * 3 + k] = k == c ? 220 : 30 }
        } }
        let image = try Image(width: w, height: h, channels: 3, pixels: pixels)
        let pointwise: ([Float]) throws -> [Float] = { $0 }  // 3 classes = the 3 input channels
        for options in [InferenceOptions(), InferenceOptions(stride: 10), InferenceOptions(flip: true, stride: 7)] {
            let predictor = SegmentationPredictor(batch: 3, size: 16, classes: 3, options: options, run: pointwise)
            XCTAssertEqual(try predictor.predict(image).labels, expected, "\(options)")
        }
        // A smaller image than the model's input is padded.
        let small = try Image(width: 10, height: 7, channels: 3, pixels: Array(pixels.prefix(10 * 7 * 3)))
        let predictor = SegmentationPredictor(batch: 2, size: 16, classes: 3, options: InferenceOptions(), run: pointwise)
        XCTAssertEqual(try predictor.predict(small).labels.count, 70)
        // Several scales: away from block edges, the same answer.
        let multi = SegmentationPredictor(batch: 4, size: 16, classes: 3,
                                          options: InferenceOptions(flip: true, scales: [0.5, 0.75, 1, 1.25, 1.5, 1.75]), run: pointwise)
        let labels = try multi.predict(image).labels
        var interior = 0, agree = 0
        for y in 0..<h { for x in 0..<w where x % 15 > 2 && x % 15 < 12 && y % 12 > 2 && y % 12 < 9 {
            interior += 1
            if labels[y * w + x] == expected[y * w + x] { agree += 1 }
        } }
        XCTAssertEqual(agree, interior)
    }

    /// Flip averaging is the mean of the softmax of the image's logits and
    /// of the mirrored image's logits mirrored back.
    func testFlipAveragesTheMirroredPassMirroredBack() throws {
        let s = 8
        let image = try Image(width: s, height: s, channels: 3, pixels: Array(repeating: 128, count: s * s * 3))
        // Logit 0 grows with the column inside the input, logit 1 is 0.5.
        let model: ([Float]) throws -> [Float] = { _ in
            (0..<2).flatMap { c in (0..<(s * s)).map { p in c == 0 ? Float(p % s) / Float(s) : 0.5 } }
        }
        let predictor = SegmentationPredictor(batch: 1, size: s, classes: 2, options: InferenceOptions(flip: true), run: model)
        let probabilities = try predictor.probabilities(image)
        func sigmoid(_ z: Double) -> Double { 1 / (1 + exp(-z)) }
        for x in 0..<s {
            let direct = sigmoid(Double(x) / Double(s) - 0.5), mirrored = sigmoid(Double(s - 1 - x) / Double(s) - 0.5)
            XCTAssertEqual(Double(probabilities[x]), (direct + mirrored) / 2, accuracy: 1e-6, "column \(x)")
            XCTAssertEqual(Double(probabilities[s * s + x]), 1 - (direct + mirrored) / 2, accuracy: 1e-6)
        }
    }

    func testPaletteAndOverlay() throws {
        XCTAssertTrue(Palette.color(0) == (0, 0, 0))
        XCTAssertTrue(Palette.color(1) == (128, 0, 0))
        XCTAssertTrue(Palette.color(2) == (0, 128, 0))
        XCTAssertTrue(Palette.color(15) == (192, 128, 128), "VOC person")
        let mask = LabelMap(width: 2, height: 1, labels: [1, 2])
        XCTAssertEqual(try Palette.colorize(mask).pixels, [128, 0, 0, 0, 128, 0])
        let image = try Image(width: 2, height: 1, channels: 1, pixels: [100, 200])
        XCTAssertEqual(try Palette.overlay(mask, on: image, alpha: 0.5).pixels, [114, 50, 50, 100, 164, 100])
    }
}
