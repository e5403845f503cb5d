import Foundation

/// Folders ddepc fills with its own files (scenes, runs). It writes only into
/// a folder that is new or empty, or one the caller recognizes as its own
/// earlier output, so nothing the user already had is overwritten.
public enum OutputFolder {
    /// Throws unless `directory` does not exist, is an empty folder, or
    /// `isOwn` recognizes it. `advice` says what to do instead, e.g.
    /// "choose a new folder for the scenes".
    public static func requireNewOrEmpty(_ directory: URL, advice: String,
                                         unless isOwn: (URL) -> Bool = { _ in false }) throws {
        let path = directory.path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return }
        guard isDirectory.boolValue else {
            throw RuntimeError("\(path) is a file, not a folder; \(advice) (nothing was overwritten)")
        }
        let contents: [String]
        do {
            contents = try FileManager.default.contentsOfDirectory(atPath: path)
        } catch {
            throw RuntimeError("cannot list \(path): \(FileProblem.reason(error)); \(advice)")
        }
        if contents.isEmpty || isOwn(directory) { return }
        throw RuntimeError("\(path) is not empty; \(advice) (nothing was overwritten)")
    }
}
