import Foundation
import Runtime

/// Runs a tool and returns its standard output; throws with its standard
/// error (and the command line) when it fails, or `ToolTimeout` when it runs
/// longer than `timeout` seconds.
///
/// The tool runs in a process group of its own, so that a timeout, or
/// SIGINT/SIGTERM/SIGHUP of ddepc, ends the tool and everything it started
/// (a compiler's subprocesses, a model file's threads) instead of leaving
/// them running. Foundation's `Process` cannot set the process group, hence
/// `posix_spawn`.
@discardableResult
func runTool(_ executable: String, _ arguments: [String], timeout: Double? = nil) throws -> String {
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    // Its own group (pgid = its pid), default signal handling and no blocked signals.
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
    posix_spawnattr_setpgroup(&attributes, 0)
    var all = sigset_t(), none = sigset_t()
    sigfillset(&all)
    sigemptyset(&none)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setsigmask(&attributes, &none)

    var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1]
    guard pipe(&outPipe) == 0 else { throw RuntimeError("cannot run \(executable): \(String(cString: strerror(errno)))") }
    guard pipe(&errPipe) == 0 else {
        close(outPipe[0]); close(outPipe[1])
        throw RuntimeError("cannot run \(executable): \(String(cString: strerror(errno)))")
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
    posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
    for fd in outPipe + errPipe { posix_spawn_file_actions_addclose(&actions, fd) }

    // `env` finds the tool on PATH, as a shell would.
    let argv = (["/usr/bin/env", executable] + arguments).map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var pid: pid_t = 0
    var spawnStatus: Int32 = 0
    Interruption.shared.spawning {
        spawnStatus = posix_spawn(&pid, "/usr/bin/env", &actions, &attributes, argv, environ)
        return spawnStatus == 0 ? pid : nil
    }
    close(outPipe[1])
    close(errPipe[1])
    let stdoutHandle = FileHandle(fileDescriptor: outPipe[0], closeOnDealloc: true)
    let stderrHandle = FileHandle(fileDescriptor: errPipe[0], closeOnDealloc: true)
    // posix_spawn returns its error rather than setting errno.
    guard spawnStatus == 0 else { throw RuntimeError("cannot run \(executable): \(String(cString: strerror(spawnStatus)))") }
    defer { Interruption.shared.finished(group: pid) }

    // Read both pipes concurrently so a chatty tool cannot block on a full pipe.
    final class Collected: @unchecked Sendable { var data = Data() }
    let out = Collected(), err = Collected()
    let group = DispatchGroup()
    for (handle, collected) in [(stdoutHandle, out), (stderrHandle, err)] {
        group.enter()
        DispatchQueue.global().async {
            collected.data = handle.readDataToEndOfFile()
            group.leave()
        }
    }

    let deadline = timeout.map { Date().addingTimeInterval($0) }
    var status: Int32 = 0
    var timedOut = false
    while true {
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid || (result < 0 && errno != EINTR) { break }
        if let deadline, Date() >= deadline {
            kill(-pid, SIGKILL)
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            timedOut = true
            break
        }
        usleep(10_000)
    }
    // A descendant that outlived the tool would keep the pipes open.
    if timedOut { kill(-pid, SIGKILL) }
    group.wait()

    let command = ([executable] + arguments).joined(separator: " ")
    if timedOut { throw ToolTimeout(command: command, seconds: timeout ?? 0) }
    let stdout = String(decoding: out.data, as: UTF8.self)
    // Exit status in bits 8-15 when the low 7 bits (the signal) are 0.
    let signal = status & 0x7f, code = (status >> 8) & 0xff
    guard signal == 0, code == 0 else {
        throw ToolError(command: command, status: signal == 0 ? code : 128 + signal,
                        stderr: String(decoding: err.data, as: UTF8.self), stdout: stdout)
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

/// A tool that ran longer than it was allowed to; it and its process group were killed.
struct ToolTimeout: Error, CustomStringConvertible {
    var command: String
    var seconds: Double
    var description: String { "`\(command)` did not finish within \(Int(seconds)) s and was stopped" }
}

/// What ddepc undoes when SIGINT, SIGTERM or SIGHUP ends it: the process
/// groups of the tools it runs are killed and its temporary folders
/// removed; then the signal ends ddepc as it would have. The handlers are
/// installed on first use (while a tool runs or a folder is registered).
public final class Interruption: @unchecked Sendable {
    public static let shared = Interruption()
    static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    private let lock = NSLock()
    private var groups: Set<pid_t> = []
    private var folders: [UUID: URL] = [:]
    private var sources: [DispatchSourceSignal] = []

    /// Runs `spawn` (which returns the new process group, or nil) with the
    /// handlers installed, so a signal between spawning and registering
    /// cannot miss the group.
    func spawning(_ spawn: () -> pid_t?) {
        lock.lock()
        defer { lock.unlock() }
        installHandlers()
        if let group = spawn() { groups.insert(group) }
    }

    func finished(group: pid_t) {
        lock.lock()
        groups.remove(group)
        lock.unlock()
    }

    /// Removes `folder` if ddepc is interrupted before `removeFolder(_:)`.
    public func removeOnInterrupt(_ folder: URL) -> UUID {
        lock.lock()
        defer { lock.unlock() }
        installHandlers()
        let token = UUID()
        folders[token] = folder
        return token
    }

    /// The folder is gone or kept on purpose: no longer removed on interrupt.
    public func forget(_ token: UUID) {
        lock.lock()
        folders[token] = nil
        lock.unlock()
    }

    /// Called with the lock held.
    private func installHandlers() {
        guard sources.isEmpty else { return }
        for number in Self.signals {
            signal(number, SIG_IGN)  // delivered to the dispatch source instead
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [unowned self] in self.interrupted(by: number) }
            source.resume()
            sources.append(source)
        }
    }

    private func interrupted(by number: Int32) {
        lock.lock()
        for group in groups { kill(-group, SIGKILL) }
        for folder in folders.values { try? FileManager.default.removeItem(at: folder) }
        lock.unlock()
        signal(number, SIG_DFL)
        kill(getpid(), number)
    }
}
