import ArgumentParser
import DDPKernels
import Runtime

/// The kernels' thread count and vector ISA, for commands that run them.
struct KernelOptions: ParsableArguments {
    @Option(help: "Threads (default: the CPUs this process may use, or DDEPC_THREADS).") var threads: Int?
    @Option(help: "Micro-kernel ISA: native, avx512 or avx2 (default: DDEPC_ISA, else native).") var isa: String?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1 (got \(threads))") }
    }

    /// Sets what was asked for; without --isa, the choice DDEPC_ISA made
    /// stands (an artifact may have been compiled for it).
    func apply() throws {
        if let isa, ddp_set_isa(isa) == 0 {
            throw RuntimeError("--isa \(isa): this CPU cannot run it; use native, avx512 (where the CPU has it) or avx2")
        }
        if let threads { ddp_set_thread_limit(Int32(threads)) }
    }
}
