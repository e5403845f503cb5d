import ArgumentParser
import DDPKernels
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure this machine's OpenBLAS sgemm peak (the reference for achieved GFLOP/s).")
    @Option(help: "Matrix size n for the n×n×n sgemm.") var n = 1024
    @Option(help: "Repetitions.") var reps = 10

    func run() throws {
        print(String(format: "sgemm %d×%d×%d: %.1f GFLOP/s", n, n, n, ddp_sgemm_gflops(Int64(n), Int64(reps))))
    }
}
