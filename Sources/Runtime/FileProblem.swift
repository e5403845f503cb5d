import Foundation

/// Readable messages for failed file operations. Foundation's errors bury
/// the path and the operating system's reason in `userInfo`
/// ("Error Domain=NSCocoaErrorDomain Code=512 ..."); this names both and
/// says what to do.
public enum FileProblem {
    /// The operating system's reason for `error` (e.g. "Not a directory"),
    /// else the error's own description.
    public static func reason(_ error: Error) -> String {
        if let code = posixCode(error) { return String(cString: strerror(code)) }
        let nsError = error as NSError
        if nsError.domain == NSCocoaErrorDomain {
            switch CocoaError.Code(rawValue: nsError.code) {
            case .fileWriteFileExists: return "File exists"
            case .fileWriteNoPermission, .fileReadNoPermission: return "Permission denied"
            case .fileNoSuchFile, .fileReadNoSuchFile: return "No such file or directory"
            case .fileWriteOutOfSpace: return "No space left on device"
            case .fileReadCorruptFile, .fileReadInapplicableStringEncoding: return "the file is not valid UTF-8 text"
            default: break
            }
        }
        return nsError.localizedDescription
    }

    /// What to do about a problem, by its cause.
    static func advice(_ error: Error) -> String {
        let code = posixCode(error) ?? {
            switch CocoaError.Code(rawValue: (error as NSError).code) {
            case .fileWriteFileExists: return EEXIST
            case .fileWriteNoPermission, .fileReadNoPermission: return EACCES
            case .fileNoSuchFile, .fileReadNoSuchFile: return ENOENT
            case .fileWriteOutOfSpace: return ENOSPC
            default: return 0
            }
        }()
        switch code {
        case EEXIST: return "something with that name is in the way; choose another path"
        case ENOTDIR: return "a part of the path is a file, not a folder; choose another path"
        case EACCES, EPERM, EROFS: return "choose a location you can write to"
        case ENOSPC, EDQUOT, EFBIG: return "free disk space (or raise the file size limit) and try again"
        case ENOENT: return "check the path"
        default: return "check that the folder exists, is writable and that the disk is not full"
        }
    }

    /// `error` as a message naming `path`, what failed and what to do;
    /// nil when `error` is not a file-system error.
    public static func message(_ error: Error, path: String? = nil, action: String? = nil) -> String? {
        let nsError = error as NSError
        guard nsError.domain == NSCocoaErrorDomain || nsError.domain == NSPOSIXErrorDomain else { return nil }
        guard let path = path ?? filePath(nsError) else { return nil }
        let what = action.map { "could not \($0): " } ?? ""
        return "\(path): \(what)\(reason(error)); \(advice(error))"
    }

    /// `error` as a RuntimeError naming `path` (errors that are not about
    /// files keep their own description).
    public static func error(_ error: Error, path: String, action: String) -> RuntimeError {
        RuntimeError(message(error, path: path, action: action) ?? "\(path): could not \(action): \(error)")
    }

    static func filePath(_ error: NSError) -> String? {
        if let path = error.userInfo[NSFilePathErrorKey] as? String { return path }
        if let url = error.userInfo[NSURLErrorKey] as? URL { return url.path }
        return underlying(error).flatMap(filePath)
    }

    static func posixCode(_ error: Error) -> Int32? {
        if let posix = error as? POSIXError { return posix.code.rawValue }
        let nsError = error as NSError
        if nsError.domain == NSPOSIXErrorDomain { return Int32(nsError.code) }
        return underlying(nsError).flatMap(posixCode)
    }

    /// The underlying error; on Linux it may be a Swift `POSIXError` value
    /// rather than an NSError.
    static func underlying(_ error: NSError) -> NSError? {
        (error.userInfo[NSUnderlyingErrorKey] as? Error).map { $0 as NSError }
    }
}
