import IR
import ModelZoo
import XCTest

/// The full-size TransUNets have exactly as many parameters as their PyTorch
/// references: tools/make_fixtures.py counts the official TransUNet
/// transcription's parameters (meta tensors, 224×224) for every decoder
/// preset and stores the counts in the tiny fixture's metadata. The
/// official model with 9 classes counts 105,277,081 (the paper's 105.28 M).
final class ParameterCountParityTests: XCTestCase {
    func count(_ function: Function, prefix: String) -> Int {
        function.args.filter { $0.role.isWeight && $0.name.hasPrefix(prefix) }.reduce(0) { $0 + $1.type.count }
    }

    func testFullSizeTransUNetCountsEqualPyTorch() throws {
        let metadata = try ParityFixture("transunet-tiny").file.metadata
        for preset in TransUNet.DecoderPreset.allCases {
            let model = TransUNet(.r50ViTB16, decoder: preset)
            let config = EntryConfig(batch: 1, size: 224, classes: 2, entries: [.finetuneStep])
            let function = try XCTUnwrap(try buildModule(model, config: config)["finetune_step"])
            for part in ["enc", "dec", "head.seg"] {
                let expected = try XCTUnwrap(metadata["count/transunet-\(preset.rawValue)/\(part)"].flatMap { Int($0) }, "\(preset) \(part)")
                XCTAssertEqual(count(function, prefix: part + "."), expected, "\(preset): \(part) parameters")
            }
        }
        let official = try buildModule(TransUNet.r50ViTB16, config: EntryConfig(batch: 1, size: 224, classes: 9, entries: [.infer]))
        let infer = try XCTUnwrap(official["infer"])
        XCTAssertEqual(count(infer, prefix: ""), try XCTUnwrap(metadata["count/transunet-official-9-classes/infer"].flatMap { Int($0) }))
        XCTAssertEqual(count(infer, prefix: ""), 105_277_081)
    }
}
