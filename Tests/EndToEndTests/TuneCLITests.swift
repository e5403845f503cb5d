import Driver
import Foundation
import IR
import ModelZoo
import Passes
import Runtime
import XCTest

/// `ddepc tune` measures every convolution select-conv-algorithm chooses
/// for, and `ddepc compile --conv-costs` follows what it measured.
final class TuneCLITests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-tune-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func algorithmCounts(_ artifact: String) throws -> [String: Int] {
        let finalIR = try String(contentsOf: directory.appendingPathComponent(artifact).appendingPathComponent("final.ddir"), encoding: .utf8)
        return Dictionary(uniqueKeysWithValues: ConvOps.Algorithm.winograd.keys.map { name in
            (name, finalIR.components(separatedBy: "\(ConvOps.Algorithm.key)=\"\(name)\"").count - 1)
        })
    }

    func testTuneMeasuresEveryConvolutionAndCompileFollowsTheTable() throws {
        let tuned = try DdepcCommand.run(["tune", "unet-small", "--batch", "2", "--size", "32", "--rounds", "2", "-o", "costs.json"],
                                         in: directory)
        XCTAssertEqual(tuned.status, 0, tuned.all)
        let costs = directory.appendingPathComponent("costs.json")
        let table = try ConvCostFile.read(costs)

        // Exactly the convolutions the compile chooses for: forward (filters
        // prepared for inference, per call in training) and both gradients.
        var options = CompileOptions()
        (options.batch, options.size) = (2, 32)
        let expected = try ConvTuner.convolutions(of: try buildModule(UNet.small, config: EntryConfig(batch: 2, size: 32, classes: 2)),
                                                  options: options)
        XCTAssertEqual(table.measurements.map(\.convolution), expected)
        XCTAssertEqual(Set(expected.map(\.kernel)), Set(ConvCostTable.Kernel.allCases))
        XCTAssertTrue(expected.contains { $0.preparedFilters } && expected.contains { !$0.preparedFilters && $0.kernel == .forward })
        for measured in table.measurements {
            XCTAssertEqual(Set(measured.seconds.keys), Set(ConvCostTable.algorithms), "\(measured.convolution)")
            XCTAssertTrue(measured.seconds.values.allSatisfy { $0 > 0 && $0 < 1 }, "\(measured)")
        }
        XCTAssertTrue(tuned.stdout.contains("\(expected.count) convolutions"), tuned.stdout)

        // With each algorithm made the fastest on every convolution in turn,
        // the compiled steps use that one alone (recomputed copies and split
        // gradients inherit it), whatever the tile counts say.
        for fastest in ConvCostTable.algorithms {
            var rewritten = table
            for i in rewritten.measurements.indices {
                rewritten.measurements[i].seconds = Dictionary(uniqueKeysWithValues: ConvCostTable.algorithms.map { ($0, $0 == fastest ? 1e-3 : 2e-3) })
            }
            try ConvCostFile.write(rewritten, to: costs)
            let compiled = try DdepcCommand.run(["compile", "unet-small", "--batch", "2", "--size", "32", "--conv-costs", "costs.json",
                                                 "-o", "\(fastest).ddepc"], in: directory)
            XCTAssertEqual(compiled.status, 0, compiled.all)
            XCTAssertFalse(compiled.stderr.contains("warning"), compiled.stderr)
            let counts = try algorithmCounts("\(fastest).ddepc")
            for (name, count) in counts {
                if name == fastest { XCTAssertGreaterThan(count, 10, "\(fastest): \(counts)") } else { XCTAssertEqual(count, 0, "\(fastest): \(counts)") }
            }
        }
        // Without the table the rule mixes them at this size.
        let ruled = try DdepcCommand.run(["compile", "unet-small", "--batch", "2", "--size", "32", "-o", "rule.ddepc"], in: directory)
        XCTAssertEqual(ruled.status, 0, ruled.all)
        XCTAssertGreaterThan(try algorithmCounts("rule.ddepc")["winograd4"] ?? 0, 0)
    }

    /// A file that is not a cost table is refused with what to do, and never
    /// replaced; a table measured at another thread count or ISA is used
    /// with a warning that says so.
    func testCostFilesThatAreNotTablesAreRefusedAndForeignTablesWarned() throws {
        let notes = directory.appendingPathComponent("notes.json")
        try Data("{\"mine\": true}".utf8).write(to: notes)
        let compiled = try DdepcCommand.run(["compile", "unet-small", "--size", "32", "--conv-costs", "notes.json", "-o", "a.ddepc"], in: directory)
        XCTAssertEqual(compiled.status, 1)
        XCTAssertTrue(compiled.stderr.contains("notes.json is not a convolution cost table that ddepc tune wrote"), compiled.stderr)
        XCTAssertTrue(compiled.stderr.contains("ddepc tune MODEL -o"), compiled.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory.appendingPathComponent("a.ddepc").path))

        let tuned = try DdepcCommand.run(["tune", "unet-small", "--size", "32", "-o", "notes.json"], in: directory)
        XCTAssertEqual(tuned.status, 1)
        XCTAssertTrue(tuned.stderr.contains("refusing to replace it (nothing was changed)"), tuned.stderr)
        XCTAssertEqual(try String(contentsOf: notes, encoding: .utf8), "{\"mine\": true}")

        let elsewhere = ConvCostTable(isa: "avx2", threads: 64, cpu: "another machine", measurements: [])
        try ConvCostFile.write(elsewhere, to: directory.appendingPathComponent("elsewhere.json"))
        let warned = try DdepcCommand.run(["compile", "unet-small", "--size", "32", "--conv-costs", "elsewhere.json", "-o", "b.ddepc"],
                                          in: directory)
        XCTAssertEqual(warned.status, 0, warned.all)
        XCTAssertTrue(warned.stderr.contains("was measured with the avx2 kernels on 64 thread(s) (another machine)"), warned.stderr)
        XCTAssertTrue(warned.stderr.contains("run `ddepc tune` on this machine"), warned.stderr)
    }
}
