import Foundation
import Runtime
import XCTest

/// Runs the `ddepc` built beside the test bundle, as a user would.
enum DdepcCommand {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
        var all: String { stdout + stderr }
    }

    static var binary: URL { Bundle.main.executableURL!.deletingLastPathComponent().appendingPathComponent("ddepc") }

    /// `executable`: another program that runs ddepc (a shell setting limits).
    /// `environment`: variables set on top of this process's.
    static func run(_ arguments: [String], in directory: URL, executable: URL? = nil,
                    environment: [String: String] = [:]) throws -> Result {
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("ddepc is not built; run `swift build` before `swift test`")
        }
        let process = Process()
        process.executableURL = executable ?? binary
        process.arguments = arguments
        process.currentDirectoryURL = directory
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        final class Box: @unchecked Sendable { var data = Data() }
        let errData = Box()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            errData.data = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                      stderr: String(decoding: errData.data, as: UTF8.self))
    }

    /// Starts a training run and kills it with SIGKILL once its `metrics`
    /// file has `steps` lines (or after a minute). Returns whether the kill
    /// ended it (rather than the run finishing first) and the steps logged.
    static func killMidRun(_ arguments: [String], in directory: URL, metrics: String,
                           afterSteps steps: Int) throws -> (killed: Bool, logged: Int) {
        let victim = Process()
        victim.executableURL = binary
        victim.arguments = arguments
        victim.currentDirectoryURL = directory
        victim.standardOutput = FileHandle.nullDevice
        try victim.run()
        let deadline = Date().addingTimeInterval(60)
        var logged = 0
        while victim.isRunning, Date() < deadline {
            logged = ((try? String(contentsOfFile: metrics, encoding: .utf8)) ?? "").split(separator: "\n").count
            if logged >= steps { break }
            usleep(1000)
        }
        kill(victim.processIdentifier, SIGKILL)
        victim.waitUntilExit()
        return (victim.terminationReason == .uncaughtSignal, logged)
    }
}

/// Synthetic labeled scenes: a class-0 background and one rectangle per
/// other class, each class in its own colour (so a small model can learn
/// them quickly); masks are 8-bit class ids.
enum SceneFixtures {
    static let colours: [(UInt8, UInt8, UInt8)] = [(40, 40, 40), (220, 30, 30), (30, 200, 40), (40, 60, 230)]

    static func scene(width: Int, height: Int, classes: Int, seed: UInt64) throws -> (Image, LabelMap) {
        var rng = SplitMix64(seed: seed)
        var labels = [UInt8](repeating: 0, count: width * height)
        for c in 1..<classes {
            let w = width / 3, h = height / 3
            let x0 = Int.random(in: 0...(width - w), using: &rng), y0 = Int.random(in: 0...(height - h), using: &rng)
            for y in y0..<(y0 + h) { for x in x0..<(x0 + w) { labels[y * width + x] = UInt8(c) } }
        }
        var pixels: [UInt8] = []
        for label in labels {
            let c = colours[Int(label) % colours.count]
            pixels += [c.0, c.1, c.2]
        }
        return (try Image(width: width, height: height, channels: 3, pixels: pixels), LabelMap(width: width, height: height, labels: labels))
    }

    /// `root/images/sceneN.png` + `root/masks/sceneN.png` + `classes.txt`.
    static func writeGeneric(at root: URL, count: Int, classes: Int, width: Int, height: Int, seed: UInt64) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: root.appendingPathComponent("images"), withIntermediateDirectories: true)
        try fm.createDirectory(at: root.appendingPathComponent("masks"), withIntermediateDirectories: true)
        for i in 0..<count {
            let (image, mask) = try scene(width: width, height: height, classes: classes, seed: seed &+ UInt64(i))
            try image.writePNG(to: root.appendingPathComponent("images/scene\(i).png"))
            try mask.image.writePNG(to: root.appendingPathComponent("masks/scene\(i).png"))
        }
        try (0..<classes).map { "class\($0)" }.joined(separator: "\n")
            .write(to: root.appendingPathComponent("classes.txt"), atomically: true, encoding: .utf8)
    }
}

/// A class-level setUp (compiling the artifact a suite shares) that failed:
/// thrown by each test, so the suite fails instead of being skipped.
struct SharedSetUpFailed: Error, CustomStringConvertible {
    var description: String
}
