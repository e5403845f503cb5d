import Foundation

/// Byte counts as people read them, in powers of 1000: "45.1 GB", "512.0 MB".
public enum ByteCount {
    public static func text(_ bytes: Double) -> String {
        guard bytes < 1e21 else { return "over 1000 EB" }
        let units = ["bytes", "KB", "MB", "GB", "TB", "PB", "EB"]
        var value = bytes, unit = 0
        while value >= 1000, unit < units.count - 1 {
            value /= 1000
            unit += 1
        }
        return unit == 0 ? "\(Int(value)) bytes" : String(format: "%.1f %@", value, units[unit])
    }
}
