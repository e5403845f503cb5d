import IR
import ModelZoo
import Passes
import XCTest

/// classify_step: supervised encoder pretraining with a pooled linear head.
final class ClassifyEntryTests: XCTestCase {
    func testClassifyStepTrainsOnlyTheEncoderAndItsHead() throws {
        let config = EntryConfig(batch: 2, size: 32, entries: [.classifyStep], imageClasses: 7)
        var module = try buildModule(UNet.small, config: config)
        let step = try XCTUnwrap(module["classify_step"])
        XCTAssertEqual(step.argument(named: "labels")?.type, TensorType(.i32, [2]))
        XCTAssertEqual(step.argument(named: "head.cls.weight")?.type, .f32([7, 64]))
        XCTAssertFalse(step.args.contains { $0.name.hasPrefix("dec.") || $0.name.hasPrefix("head.seg") })

        try PassManager([Autodiff(), AdamOptimizer(), DCE()]).run(&module)
        let trained = try XCTUnwrap(module["classify_step"]).updates.compactMap { update in
            module["classify_step"]!.args.first { $0.id == update.target && $0.role == .param }?.name
        }
        XCTAssertFalse(trained.isEmpty)
        XCTAssertTrue(trained.allSatisfy { $0.hasPrefix("enc.") || $0.hasPrefix("head.cls.") }, "\(trained)")
        XCTAssertTrue(trained.contains("head.cls.weight"))
        XCTAssertTrue(trained.contains("enc.conv1.weight"))
    }
}
