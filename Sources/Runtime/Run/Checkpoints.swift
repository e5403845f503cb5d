import Foundation

/// The checkpoints of a run directory:
///
///     RUN/checkpoints/step-00000120.safetensors   (the last K, each written atomically)
///     RUN/last.safetensors -> checkpoints/step-00000120.safetensors
///
/// A checkpoint is written to a temporary file, flushed and renamed into
/// place; only then is `last.safetensors` (a relative symbolic link)
/// replaced, again by a rename; only then are older checkpoints beyond the
/// last `keep` removed. A crash at any point leaves every complete
/// checkpoint readable and never a partial one under a checkpoint's name.
public struct CheckpointDirectory {
    public let run: URL

    public init(run: URL) { self.run = run }

    public var directory: URL { run.appendingPathComponent("checkpoints") }
    public var lastLink: URL { run.appendingPathComponent("last.safetensors") }

    public func url(step: Int) -> URL {
        directory.appendingPathComponent(String(format: "step-%08d.safetensors", step))
    }

    /// The run's checkpoints by step, oldest first.
    public func checkpoints() -> [(step: Int, url: URL)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.compactMap { name -> (Int, URL)? in
            guard name.hasPrefix("step-"), name.hasSuffix(".safetensors"),
                  let step = Int(name.dropFirst(5).dropLast(12)) else { return nil }
            return (step, directory.appendingPathComponent(name))
        }.sorted { $0.0 < $1.0 }
    }

    /// Writes the checkpoint of `step`, points `last.safetensors` at it and
    /// keeps only the newest `keep` (at least 1) checkpoints.
    @discardableResult
    public func write(_ file: SafetensorsFile, step: Int, keep: Int) throws -> URL {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let target = url(step: step)
        try file.write(to: target)
        try replaceLink(lastLink, with: "checkpoints/" + target.lastPathComponent)
        for old in checkpoints().dropLast(max(keep, 1)) where old.url != target {
            try? FileManager.default.removeItem(at: old.url)
        }
        return target
    }

    /// The newest checkpoint whose header reads as a safetensors file's,
    /// open for its tensors to be read; damaged ones (which an atomic write
    /// never leaves, but a disk can) are skipped and reported through
    /// `skipped`. Falls back to a plain `last.safetensors` file (runs from
    /// before checkpoints were kept by step).
    public func latestValid(skipped: (URL, Error) -> Void = { _, _ in }) -> (url: URL, file: SafetensorsFileReader)? {
        for (_, url) in checkpoints().reversed() {
            do {
                return (url, try SafetensorsFileReader(contentsOf: url))
            } catch {
                skipped(url, error)
            }
        }
        if let file = try? SafetensorsFileReader(contentsOf: lastLink) { return (lastLink, file) }
        return nil
    }

    /// Removes what interrupted atomic writes left behind: `.NAME.tmp-UUID`
    /// files in the run folder and in checkpoints/ (up to a checkpoint's size
    /// each). Only ddepc makes such names, and `keep` never counts them.
    public func removeLeftoverTemporaryFiles() {
        for folder in [run, directory] {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
            for name in names where Self.isTemporaryName(name) {
                try? FileManager.default.removeItem(at: folder.appendingPathComponent(name))
            }
        }
    }

    /// `.NAME.tmp-UUID`, as `writeAtomically` and `replaceLink` name their temporary files.
    static func isTemporaryName(_ name: String) -> Bool {
        guard name.hasPrefix("."), let range = name.range(of: ".tmp-", options: .backwards) else { return false }
        return UUID(uuidString: String(name[range.upperBound...])) != nil
    }

    /// Atomically makes `link` a symbolic link to `destination`.
    func replaceLink(_ link: URL, with destination: String) throws {
        let temporary = link.deletingLastPathComponent()
            .appendingPathComponent(".\(link.lastPathComponent).tmp-\(UUID().uuidString)").path
        guard symlink(destination, temporary) == 0 else {
            throw AtomicWriteError(path: link.path, step: "create a symbolic link", code: errno)
        }
        guard rename(temporary, link.path) == 0 else {
            let code = errno
            unlink(temporary)
            throw AtomicWriteError(path: link.path, step: "replace the link", code: code)
        }
    }
}

/// A checkpoint or run directory given on the command line, resolved to a
/// checkpoint file: a run directory means its newest valid checkpoint.
public func resolveCheckpoint(_ path: String) throws -> URL {
    let url = URL(fileURLWithPath: path)
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
        throw RuntimeError("\(path) does not exist; pass a checkpoint (.safetensors) or a run directory")
    }
    guard isDirectory.boolValue else { return url }
    guard let latest = CheckpointDirectory(run: url).latestValid() else {
        throw RuntimeError("\(path) holds no checkpoint (checkpoints/step-*.safetensors or last.safetensors); train first or pass a checkpoint file")
    }
    return latest.url
}
