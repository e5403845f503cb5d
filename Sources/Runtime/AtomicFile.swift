import Foundation

/// A failed `writeAtomically(_:to:)`: which file, which step, and the
/// operating system's reason.
public struct AtomicWriteError: Error, CustomStringConvertible {
    /// The file that was being written.
    public let path: String
    /// The step that failed, e.g. "create a temporary file".
    public let step: String
    /// The `errno` value reported by the operating system.
    public let code: Int32

    public var description: String {
        let reason = String(cString: strerror(code))
        return "\(path): could not \(step): \(reason). "
            + "Check that the directory exists, is writable and that the disk is not full; "
            + "the previous content of the file, if any, is unchanged."
    }
}

/// Replaces the content of the file at `url` with `data` so that a crash or
/// power loss never leaves a half-written file: readers see either the old
/// content or the new, complete one.
///
/// The data goes to a uniquely named temporary file in the same directory
/// (so that the final rename stays on one file system), is flushed to disk
/// with `fsync`, and is then `rename`d over the target. On any error the
/// temporary file is removed and the target is left untouched.
public func writeAtomically(_ data: Data, to url: URL) throws {
    let target = url.path
    let directory = url.deletingLastPathComponent().path
    let temporary = directory + "/." + url.lastPathComponent + ".tmp-" + UUID().uuidString

    func failure(_ step: String) -> AtomicWriteError {
        AtomicWriteError(path: target, step: step, code: errno)
    }

    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
    guard fd >= 0 else { throw failure("create a temporary file in \(directory)") }
    var renamed = false
    defer {
        if !renamed { unlink(temporary) }
    }

    do {
        defer { close(fd) }
        try data.withUnsafeBytes { (buffer: UnsafeRawBufferPointer) in
            var written = 0
            while written < buffer.count {
                let result = write(fd, buffer.baseAddress.map { $0 + written }, buffer.count - written)
                if result < 0 {
                    if errno == EINTR { continue }
                    throw failure("write the data")
                }
                written += result
            }
        }
        guard fsync(fd) == 0 else { throw failure("flush the data to disk") }
    }

    guard rename(temporary, target) == 0 else { throw failure("replace the file") }
    renamed = true

    // Make the rename itself durable. The new content is already in place, so
    // a directory that cannot be opened or synced is not reported as an error.
    let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if directoryFD >= 0 {
        fsync(directoryFD)
        close(directoryFD)
    }
}
