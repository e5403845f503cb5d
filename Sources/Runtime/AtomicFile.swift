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
/// content or the new, complete one (see `writeAtomically(to:_:)`).
public func writeAtomically(_ data: Data, to url: URL) throws {
    try writeAtomically(to: url) { try $0.write(data) }
}

/// The file `writeAtomically(to:_:)` is writing: what is appended goes
/// straight to the temporary file, so a large file (a checkpoint) is never
/// held whole in memory.
public struct AtomicFileWriter {
    fileprivate let fd: Int32
    fileprivate let failure: (String) -> AtomicWriteError

    /// Appends `bytes`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var written = 0
        while written < bytes.count {
            let result = Glibc.write(fd, bytes.baseAddress.map { $0 + written }, bytes.count - written)
            if result < 0 {
                if errno == EINTR { continue }
                throw failure("write the data")
            }
            written += result
        }
    }

    /// Appends `data`.
    public func write(_ data: Data) throws {
        try data.withUnsafeBytes { try write($0) }
    }

    /// Appends `bytes`.
    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }
}

/// Replaces the content of the file at `url` with what `produce` appends,
/// so that a crash or power loss never leaves a half-written file: readers
/// see either the old content or the new, complete one.
///
/// The data goes to a uniquely named temporary file in the same directory
/// (so that the final rename stays on one file system), is flushed to disk
/// with `fsync`, and is then `rename`d over the target. On any error,
/// `produce`'s included, the temporary file is removed and the target is
/// left untouched.
public func writeAtomically(to url: URL, _ produce: (AtomicFileWriter) throws -> Void) throws {
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
        try produce(AtomicFileWriter(fd: fd, failure: failure))
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
