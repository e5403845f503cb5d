import Foundation

/// Runs a tool and returns its standard output; throws with its standard
/// error (and the command line) when it fails.
@discardableResult
func runTool(_ executable: String, _ arguments: [String], currentDirectory: URL? = nil) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = [executable] + arguments
    if let currentDirectory { process.currentDirectoryURL = currentDirectory }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    // Read both pipes concurrently so a chatty tool cannot block on a full pipe.
    final class Collected: @unchecked Sendable { var data = Data() }
    let errData = Collected()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        errData.data = err.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    let stdout = String(decoding: outData, as: UTF8.self)
    guard process.terminationStatus == 0 else {
        throw ToolError(command: ([executable] + arguments).joined(separator: " "), status: process.terminationStatus,
                        stderr: String(decoding: errData.data, as: UTF8.self), stdout: stdout)
    }
    return stdout
}

struct ToolError: Error, CustomStringConvertible {
    var command: String
    var status: Int32
    var stderr: String
    var stdout: String
    var description: String { "`\(command)` failed with status \(status):\n\(stderr)\(stdout)" }
}
