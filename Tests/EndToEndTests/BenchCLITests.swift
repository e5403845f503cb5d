import Foundation
import XCTest

/// `ddepc bench`: the step alone timed, the FMA peak measured and its ISA
/// named, peak RSS, and with --profile the time per kernel and the slowest
/// calls with their IR nodes. Timings are printed, never asserted.
final class BenchCLITests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    let work = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-bench-\(UUID().uuidString)")

    override func tearDown() { try? FileManager.default.removeItem(at: work) }

    func ddepc(_ arguments: [String]) throws -> DdepcCommand.Result {
        try DdepcCommand.run(arguments, in: Self.repository)
    }

    func testBenchReportsStepTimesPeakAndKernelProfile() throws {
        let artifact = work.appendingPathComponent("bench.ddepc").path
        let compiled = try ddepc(["compile", "unet-small", "-o", artifact, "--batch", "2", "--size", "32"])
        XCTAssertEqual(compiled.status, 0, compiled.all)

        for isa in ["native", "avx2"] {
            let bench = try ddepc(["bench", artifact, "--entry", "infer", "--entry", "pretrain_step", "--calls", "2",
                                   "--profile", "--threads", "1", "--isa", isa, "--n", "128"])
            XCTAssertEqual(bench.status, 0, bench.all)
            let out = bench.stdout
            XCTAssertTrue(out.contains("fp32 FMA peak:") && out.contains("1 threads, measured now"), out)
            if isa == "avx2" { XCTAssertTrue(out.contains("(avx2,"), out) }
            XCTAssertTrue(out.contains("peak RSS of this process:"), out)
            XCTAssertTrue(out.contains("per-thread scratch lent from the arena:") && out.contains("requests served"), out)
            // Only the entries asked for, each with a per-kernel profile.
            XCTAssertTrue(out.contains("\ninfer ") && out.contains("\npretrain_step "), out)
            XCTAssertFalse(out.contains("finetune_step"), out)
            XCTAssertTrue(out.contains("  conv2d ") && out.contains("  conv2d_grad_weight ") && out.contains("small loops, copies"), out)
            // The slowest calls, each with the node of final.ddir it computes.
            XCTAssertEqual(out.components(separatedBy: "slowest calls").count - 1, 2, out)
            let calls = out.split(separator: "\n").filter { $0.contains("% ") && $0.contains(" = ") && $0.contains("loc(") }
            XCTAssertFalse(calls.isEmpty, out)
            XCTAssertTrue(calls.contains { $0.contains("conv2d_grad_weight") && $0.contains("= conv2d_grad_weight(%") }, out)
            // A convolution's call has its rate (GFLOP/s) before its kernel;
            // the loans of scratch around it have none.
            XCTAssertTrue(calls.contains { $0.range(of: #"%\s+[0-9]+\.[0-9]  conv2d"#, options: .regularExpression) != nil }, out)
            XCTAssertFalse(calls.contains { $0.range(of: #"[0-9]\.[0-9]  lend_"#, options: .regularExpression) != nil }, out)
        }

        // Held to fewer threads than its pool has, the parallel regions are
        // split among those threads only (the others used to run ranges past
        // the end: a crash on machines with more cores than --threads).
        let held = try DdepcCommand.run(["bench", artifact, "--entry", "pretrain_step", "--calls", "1", "--threads", "2", "--n", "64"],
                                        in: Self.repository, environment: ["DDEPC_THREADS": "5"])
        XCTAssertEqual(held.status, 0, held.all)
        XCTAssertTrue(held.stdout.contains("2 threads, measured now"), held.stdout)

        // Without --isa, DDEPC_ISA's choice stands (it used to be reset to native).
        let narrow = try DdepcCommand.run(["bench", artifact, "--entry", "infer", "--calls", "1", "--threads", "1", "--n", "64"],
                                          in: Self.repository, environment: ["DDEPC_ISA": "avx2"])
        XCTAssertEqual(narrow.status, 0, narrow.all)
        XCTAssertTrue(narrow.stdout.contains("(avx2, 1 threads"), narrow.stdout)

        let unknown = try ddepc(["bench", artifact, "--entry", "nope", "--calls", "1", "--n", "64"])
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.stderr.contains("no entry point 'nope'") && unknown.stderr.contains("infer"), unknown.stderr)
    }
}
