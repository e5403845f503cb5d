import Foundation

/// Pixel counts of (ground truth, prediction) pairs, exact in integers.
/// Rows are ground-truth classes, columns predicted classes; pixels whose
/// ground truth is the ignore label (255) are not counted.
public struct ConfusionMatrix: Equatable, Sendable {
    public let classes: Int
    /// `classes × classes` counts, row-major (`counts[gt * classes + prediction]`).
    public private(set) var counts: [Int64]

    public init(classes: Int) {
        precondition(classes > 0)
        self.classes = classes
        counts = [Int64](repeating: 0, count: classes * classes)
    }

    public subscript(groundTruth: Int, prediction: Int) -> Int64 { counts[groundTruth * classes + prediction] }

    /// Counts one image. Ground-truth values must be classes or the ignore
    /// label; predictions must be classes.
    public mutating func add(groundTruth: [UInt8], prediction: [UInt8]) {
        precondition(groundTruth.count == prediction.count, "ConfusionMatrix.add: \(groundTruth.count) labels, \(prediction.count) predictions")
        let ignore = LabelMap.ignoreLabel
        let n = classes
        counts.withUnsafeMutableBufferPointer { c in
            for i in groundTruth.indices {
                let gt = groundTruth[i]
                guard gt != ignore else { continue }
                let p = Int(prediction[i])
                precondition(Int(gt) < n && p < n, "ConfusionMatrix.add: label \(gt) or prediction \(p) outside \(n) classes")
                c[Int(gt) * n + p] += 1
            }
        }
    }

    public mutating func merge(_ other: ConfusionMatrix) {
        precondition(other.classes == classes)
        for i in counts.indices { counts[i] += other.counts[i] }
    }

    /// Pixels of class `c` in the ground truth (row sum).
    public func groundTruthPixels(_ c: Int) -> Int64 { (0..<classes).reduce(0) { $0 + self[c, $1] } }
    /// Pixels predicted as class `c` (column sum).
    public func predictedPixels(_ c: Int) -> Int64 { (0..<classes).reduce(0) { $0 + self[$1, c] } }

    public var metrics: SegmentationMetrics { SegmentationMetrics(self) }
}

/// mIoU, per-class IoU and accuracies from a confusion matrix.
///
/// IoU of class c = TP / (TP + FP + FN). A class that is in neither the
/// ground truth nor the predictions (TP + FP + FN = 0) has no IoU (nil) and
/// is left out of the mean: mIoU is the mean over classes present in the
/// ground truth or the predictions — the nanmean convention of mmseg and
/// torchmetrics. A class predicted but never in the ground truth counts,
/// with IoU 0.
public struct SegmentationMetrics: Equatable, Sendable {
    public let iou: [Double?]
    public let meanIoU: Double
    /// Correct pixels / labeled pixels.
    public let pixelAccuracy: Double
    /// Per-class recall TP / (TP + FN), nil for classes absent from the ground truth.
    public let accuracy: [Double?]
    /// Mean of the defined per-class accuracies.
    public let meanAccuracy: Double
    /// Classes that entered the mean IoU.
    public let classesCounted: Int
    public let labeledPixels: Int64

    public init(_ m: ConfusionMatrix) {
        var iou: [Double?] = [], accuracy: [Double?] = []
        var correct: Int64 = 0, total: Int64 = 0
        for c in 0..<m.classes {
            let tp = m[c, c], gt = m.groundTruthPixels(c), predicted = m.predictedPixels(c)
            let union = gt + predicted - tp
            iou.append(union > 0 ? Double(tp) / Double(union) : nil)
            accuracy.append(gt > 0 ? Double(tp) / Double(gt) : nil)
            correct += tp
            total += gt
        }
        let counted = iou.compactMap { $0 }, accuracies = accuracy.compactMap { $0 }
        self.iou = iou
        self.accuracy = accuracy
        meanIoU = counted.isEmpty ? .nan : counted.reduce(0, +) / Double(counted.count)
        meanAccuracy = accuracies.isEmpty ? .nan : accuracies.reduce(0, +) / Double(accuracies.count)
        pixelAccuracy = total > 0 ? Double(correct) / Double(total) : .nan
        classesCounted = counted.count
        labeledPixels = total
    }
}

/// An evaluation's results as written to JSON and printed as tables.
public struct EvaluationReport {
    public var matrix: ConfusionMatrix
    public var classNames: [String]
    public var images: Int
    /// Where the numbers came from (checkpoint, data, test-time augmentation).
    public var details: [String: String]

    public init(matrix: ConfusionMatrix, classNames: [String], images: Int, details: [String: String] = [:]) {
        self.matrix = matrix
        self.classNames = classNames
        self.images = images
        self.details = details
    }

    public static let convention = "IoU = TP/(TP+FP+FN) per class; mIoU is the mean over classes present in the ground truth or the predictions (classes in neither have IoU null and are left out, like nanmean in mmseg); pixels labeled 255 are ignored"

    /// `{"mIoU", "pixel_accuracy", "mean_accuracy", "per_class": [...], "confusion_matrix": [[...]], ...}`.
    public func json() throws -> Data {
        let m = matrix.metrics
        func number(_ x: Double?) -> Any { x.map { $0.isFinite ? $0 as Any : NSNull() } ?? NSNull() }
        let perClass: [[String: Any]] = (0..<matrix.classes).map { c in
            ["class": c, "name": classNames[c], "iou": number(m.iou[c]), "accuracy": number(m.accuracy[c]),
             "ground_truth_pixels": matrix.groundTruthPixels(c), "predicted_pixels": matrix.predictedPixels(c)]
        }
        let rows = (0..<matrix.classes).map { r in (0..<matrix.classes).map { matrix[r, $0] } }
        var object: [String: Any] = [
            "mIoU": number(m.meanIoU), "pixel_accuracy": number(m.pixelAccuracy), "mean_accuracy": number(m.meanAccuracy),
            "classes": matrix.classes, "classes_counted": m.classesCounted, "images": images, "labeled_pixels": m.labeledPixels,
            "per_class": perClass, "confusion_matrix": rows, "confusion_matrix_axes": "rows: ground truth, columns: prediction",
            "convention": Self.convention,
        ]
        for (key, value) in details { object[key] = value }
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    }

    /// The summary, the per-class table and (up to 25 classes) the confusion matrix.
    public func table() -> String {
        let m = matrix.metrics
        func percent(_ x: Double?) -> String { x.map { $0.isFinite ? String(format: "%6.2f", 100 * $0) : "     -" } ?? "     -" }
        var lines: [String] = []
        lines.append(String(format: "mIoU %@ %%  (%d of %d classes present)   pixel accuracy %@ %%   mean accuracy %@ %%   %d images",
                            percent(m.meanIoU), m.classesCounted, matrix.classes, percent(m.pixelAccuracy), percent(m.meanAccuracy), images))
        let width = max(12, classNames.map(\.count).max() ?? 0)
        lines.append("")
        lines.append("class".padding(toLength: width + 6, withPad: " ", startingAt: 0) + "   IoU %   acc %   ground truth px   predicted px")
        for c in 0..<matrix.classes {
            let name = String(format: "%4d  ", c) + classNames[c].padding(toLength: width, withPad: " ", startingAt: 0)
            lines.append(name + "  " + percent(m.iou[c]) + "  " + percent(m.accuracy[c])
                + String(format: "  %16lld  %13lld", matrix.groundTruthPixels(c), matrix.predictedPixels(c)))
        }
        lines.append("")
        if matrix.classes <= 25 {
            let cell = max(6, String(matrix.counts.max() ?? 0).count + 1)
            lines.append("confusion matrix (rows: ground truth, columns: prediction)")
            lines.append("      " + (0..<matrix.classes).map { String(repeating: " ", count: cell - String($0).count) + String($0) }.joined())
            for r in 0..<matrix.classes {
                let row = (0..<matrix.classes).map { c -> String in
                    let text = String(matrix[r, c])
                    return String(repeating: " ", count: max(0, cell - text.count)) + text
                }
                lines.append(String(format: "%4d  ", r) + row.joined())
            }
        } else {
            lines.append("(the \(matrix.classes)×\(matrix.classes) confusion matrix is in the JSON file)")
        }
        lines.append("")
        lines.append("mIoU: " + Self.convention + ".")
        return lines.joined(separator: "\n") + "\n"
    }
}
