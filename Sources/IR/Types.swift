/// Element types. `f64` exists for the reference interpreter's oracle path;
/// compiled code is f32 with i32 labels and i64 seeds.
public enum DType: String, CaseIterable, Sendable {
    case f32, f64, i32, i64

    public var byteSize: Int {
        switch self {
        case .f32, .i32: return 4
        case .f64, .i64: return 8
        }
    }

    public var isFloat: Bool { self == .f32 || self == .f64 }
}

/// A tensor type: element type and static shape, printed `f32[8,3,224,224]`
/// (a scalar is `f32[]`).
public struct TensorType: Hashable, CustomStringConvertible, Sendable {
    public var dtype: DType
    public var shape: [Int]

    public init(_ dtype: DType, _ shape: [Int]) {
        self.dtype = dtype
        self.shape = shape
    }

    public static func f32(_ shape: [Int]) -> TensorType { TensorType(.f32, shape) }

    public var rank: Int { shape.count }
    public var count: Int { shape.reduce(1, *) }
    public var byteSize: Int { count * dtype.byteSize }

    /// The byte size, or nil when it does not fit in an Int (or a dimension
    /// is negative): such a type cannot be allocated, and `count` would trap.
    public var checkedByteSize: Int? {
        var bytes = dtype.byteSize
        for dimension in shape {
            guard dimension >= 0 else { return nil }
            let (product, overflow) = bytes.multipliedReportingOverflow(by: dimension)
            if overflow { return nil }
            bytes = product
        }
        return bytes
    }

    public var description: String {
        "\(dtype.rawValue)[\(shape.map(String.init).joined(separator: ","))]"
    }

    /// Row-major strides in elements.
    public var strides: [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var running = 1
        for axis in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[axis] = running
            running *= shape[axis]
        }
        return strides
    }

    public func with(shape: [Int]) -> TensorType { TensorType(dtype, shape) }
}

/// Where a node came from: a model-file line (or a DSL line).
public struct SourceLoc: Hashable, CustomStringConvertible, Sendable {
    public var file: String
    public var line: Int

    public init(file: String, line: Int) {
        self.file = file
        self.line = line
    }

    public var description: String { "\(file):\(line)" }
}

/// Any error the IR layer reports to a user: what, where, what to do.
public struct IRError: Error, CustomStringConvertible {
    public var message: String
    public var loc: SourceLoc?

    public init(_ message: String, loc: SourceLoc? = nil) {
        self.message = message
        self.loc = loc
    }

    public var description: String {
        if let loc { return "\(loc): error: \(message)" }
        return "error: \(message)"
    }
}

/// numpy-style broadcasting of shapes (right-aligned; 1 stretches).
public func broadcastShapes(_ shapes: [[Int]]) -> [Int]? {
    let rank = shapes.map(\.count).max() ?? 0
    var result = [Int](repeating: 1, count: rank)
    for shape in shapes {
        let offset = rank - shape.count
        for (axis, size) in shape.enumerated() {
            let current = result[offset + axis]
            if current == 1 {
                result[offset + axis] = size
            } else if size != 1 && size != current {
                return nil
            }
        }
    }
    return result
}
