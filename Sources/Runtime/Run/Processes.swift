import DDPKernels
import Foundation

/// The processes of a data-parallel run (`mpirun -np N ddepc train`), over
/// MPI (see ddp_mpi.c): one process without mpirun. Rank 0 writes the run
/// directory; every rank trains on its own part of each global batch.
public struct Processes: Sendable {
    public let rank: Int
    public let count: Int

    public static let single = Processes(rank: 0, count: 1)

    public init(rank: Int, count: Int) {
        self.rank = rank
        self.count = count
    }

    /// Joins the job mpirun started (MPI_Init), or one process without it.
    public static func start() throws -> Processes {
        var message = [CChar](repeating: 0, count: 2048)
        if ddp_mpi_init(&message, Int64(message.count)) != 0 {
            throw RuntimeError(String(cString: message))
        }
        return Processes(rank: Int(ddp_mpi_rank()), count: Int(ddp_mpi_size()))
    }

    public var isLeader: Bool { rank == 0 }

    /// How messages of this process begin ("rank 1 of 2: ").
    public var prefix: String { count > 1 ? "rank \(rank) of \(count): " : "" }

    func failure(_ what: String) -> RuntimeError {
        RuntimeError("\(what): \(String(cString: ddp_mpi_last_error()))")
    }

    /// Rank 0's bytes in every process.
    public func broadcast(_ pointer: UnsafeMutableRawPointer, bytes: Int) throws {
        guard count > 1, bytes > 0 else { return }
        if ddp_mpi_broadcast(pointer, Int64(bytes), 0) != 0 { throw failure("sending rank 0's weights to the other processes") }
    }

    public func broadcast(_ value: Int) throws -> Int {
        var copy = Int64(value)
        try broadcast(&copy, bytes: MemoryLayout<Int64>.size)
        return Int(copy)
    }

    /// Whether every process holds `value`.
    public func allEqual(_ value: UInt64) throws -> Bool {
        let result = ddp_mpi_all_equal(value)
        if result < 0 { throw failure("comparing the processes' weights") }
        return result == 1
    }

    /// Seconds spent exchanging gradients so far.
    public var communicationSeconds: Double { ddp_mpi_comm_seconds() }

    /// What rank 0 prints when mpirun stops it because another process died.
    public func setStopMessage(_ text: String) {
        guard count > 1 else { return }
        ddp_mpi_set_stop_message(text + "\n")
    }

    /// Ends the whole job (every process) after an error in this one.
    public func abort(code: Int32) -> Never {
        ddp_mpi_abort(code)
        exit(code)
    }

    public func finish() { ddp_mpi_finalize() }
}
