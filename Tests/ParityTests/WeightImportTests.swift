import Foundation
import IR
import ModelZoo
import Runtime
import Driver
import XCTest

/// `timm-r50-vit-b16` import on the timm-named file tools/make_fixtures.py
/// writes from its PyTorch tiny TransUNet (fused qkv, a class-token row, a
/// classifier head): the result equals the fixture's own weights, the
/// position grid resizes like PyTorch's bilinear (corners aligned), every
/// misfit is named, damaged files are clear errors, and a DDeP run started
/// from the import keeps the imported encoder.
final class WeightImportTests: XCTestCase {
    static let work = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-import-\(UUID().uuidString)")
    static let timmFile = ParityFixture.directory.appendingPathComponent("transunet-tiny-timm.safetensors")

    override class func tearDown() { try? FileManager.default.removeItem(at: work) }

    /// The tiny TransUNet's weight shapes at an input size.
    func target(size: Int) throws -> [String: [Int]] {
        let module = try buildModule(TransUNet.tiny, config: EntryConfig(batch: 1, size: size, classes: 3, entries: [.infer]))
        let infer = try XCTUnwrap(module["infer"])
        return Dictionary(uniqueKeysWithValues: infer.args.filter(\.role.isWeight).map { ($0.name, $0.type.shape) })
    }

    func timm() throws -> SafetensorsFile { try SafetensorsFile(contentsOf: Self.timmFile) }

    func testImportReproducesTheFixtureEncoderExactly() throws {
        let fixture = try ParityFixture("transunet-tiny")
        let target = try target(size: 32)
        let (converted, report) = try WeightImporter.convert(try timm(), format: .timmR50ViTB16, target: target)
        let encoder = target.keys.filter { $0.hasPrefix("enc.") }.sorted()
        XCTAssertEqual(converted.names, encoder, "exactly the encoder, nothing else")
        for name in encoder {
            XCTAssertEqual(try converted.floats(name), try fixture.file.floats("param/" + name), name)
        }
        XCTAssertEqual(report.ignored, ["cls_token", "head.bias", "head.weight"])
        XCTAssertTrue(report.notes.contains { $0.contains("dropped the class-token row") }, "\(report.notes)")
        XCTAssertTrue(report.notes.contains { $0.contains("qkv split") }, "\(report.notes)")
    }

    func testPositionGridResizesLikePyTorchBilinearWithAlignedCorners() throws {
        let fixture = try ParityFixture("transunet-tiny")
        let (converted, report) = try WeightImporter.convert(try timm(), format: .timmR50ViTB16, target: try target(size: 48))
        let got = try converted.tensor("enc.position_embeddings")
        XCTAssertEqual(got.shape, [1, 36, 64])
        let want = try fixture.file.floats("import/position_embeddings@48")
        let worst = zip(try got.values(as: Float.self), want).map { abs(Double($0) - Double($1)) }.max() ?? .infinity
        XCTAssertLessThan(worst, 1e-6)
        XCTAssertTrue(report.notes.contains { $0.contains("resized the 4×4 grid to 6×6") }, "\(report.notes)")
        XCTAssertEqual(try converted.floats("enc.root.conv.weight"), try fixture.file.floats("param/enc.root.conv.weight"))
    }

    /// Converts `file` and returns the error text (fails if it converts).
    func importError(_ file: SafetensorsFile, size: Int = 32, line: UInt = #line) throws -> String {
        do {
            _ = try WeightImporter.convert(file, format: .timmR50ViTB16, target: try target(size: size))
            XCTFail("imported a file that does not fit", line: line)
            return ""
        } catch let error as RuntimeError {
            XCTAssertTrue(error.message.contains("nothing was written"), error.message, line: line)
            return error.message
        }
    }

    /// The timm file with `edit` applied to its tensors.
    func edited(_ edit: (inout [String: SafetensorsTensor]) throws -> Void) throws -> SafetensorsFile {
        let original = try timm()
        var tensors = try Dictionary(uniqueKeysWithValues: original.names.map { ($0, try original.tensor($0)) })
        try edit(&tensors)
        var file = SafetensorsFile()
        for (name, tensor) in tensors { try file.set(name, tensor) }
        return file
    }

    func testMissingUnexpectedMisshapedAndNonFloatTensorsAreNamed() throws {
        let missing = try importError(try edited { $0["blocks.1.mlp.fc2.weight"] = nil })
        XCTAssertTrue(missing.contains("missing: model weights the file does not provide (1):\n    enc.layer.1.ffn.fc2.weight"), missing)

        let unexpected = try importError(try edited { $0["blocks.0.ls1.gamma"] = try SafetensorsTensor([Float](repeating: 1, count: 64), shape: [64]) })
        XCTAssertTrue(unexpected.contains("unexpected: file tensors with no place in the model (1):\n    blocks.0.ls1.gamma"), unexpected)

        let misshaped = try importError(try edited {
            $0["patch_embed.proj.weight"] = try SafetensorsTensor([Float](repeating: 0, count: 64 * 128), shape: [64, 128])
        })
        XCTAssertTrue(misshaped.contains("patch_embed.proj.weight → enc.patch_embeddings.weight: [64, 128] in the file, the model needs [64, 128, 1, 1]"), misshaped)
        XCTAssertFalse(misshaped.contains("missing"), "a mis-shaped tensor is not also reported missing")

        let qkv = try importError(try edited { $0["blocks.0.attn.qkv.bias"] = try SafetensorsTensor([Float](repeating: 0, count: 190), shape: [190]) })
        XCTAssertTrue(qkv.contains("blocks.0.attn.qkv.bias: [190] is not a fused q, k, v bias"), qkv)

        let integer = try importError(try edited { $0["norm.bias"] = try SafetensorsTensor([Int32](repeating: 0, count: 64), shape: [64]) })
        XCTAssertTrue(integer.contains("norm.bias (I32; only float tensors can be weights)"), integer)

        let grid = try importError(try edited { $0["pos_embed"] = try SafetensorsTensor([Float](repeating: 0, count: 19 * 64), shape: [1, 19, 64]) })
        XCTAssertTrue(grid.contains("19 tokens are neither a square grid nor one class token plus a square grid"), grid)
    }

    func testHalfPrecisionWeightsAreWidened() throws {
        let half: [Float16] = [1.5, -2, 0.25]
        let f16 = try SafetensorsTensor(dtype: .f16, shape: [3], data: half.withUnsafeBytes { Data($0) })
        XCTAssertEqual(WeightImporter.floatValues(f16), [1.5, -2, 0.25])
        let bf16Bits: [UInt16] = [0x3FC0, 0xC000]  // 1.5, -2
        let bf16 = try SafetensorsTensor(dtype: .bf16, shape: [2], data: bf16Bits.withUnsafeBytes { Data($0) })
        XCTAssertEqual(WeightImporter.floatValues(bf16), [1.5, -2])
    }

    /// Bytes of a safetensors file with the given header JSON and data.
    func rawFile(header: String, data: [UInt8]) -> Data {
        var bytes = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: Array(header.utf8))
        bytes.append(contentsOf: data)
        return bytes
    }

    func testDamagedFilesAreClearErrorsNotCrashes() throws {
        try FileManager.default.createDirectory(at: Self.work, withIntermediateDirectories: true)
        let cases: [(String, Data, String)] = [
            ("bad-header", rawFile(header: "{\"norm.bias\": {\"dtype\": \"F32\", \"shape\": [2]", data: [UInt8](repeating: 0, count: 8)), "header"),
            ("overlap", rawFile(header: "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                                data: [UInt8](repeating: 0, count: 12)), "overlap"),
            ("truncated", try Data(contentsOf: Self.timmFile).prefix(5000), "truncated"),
        ]
        for (name, bytes, expected) in cases {
            let url = Self.work.appendingPathComponent(name + ".safetensors")
            try bytes.write(to: url)
            XCTAssertThrowsError(try WeightImporter.convert(contentsOf: url, format: .timmR50ViTB16, target: try target(size: 32))) { error in
                let text = "\(error)"
                XCTAssertTrue(error is SafetensorsError, "\(name): \(text)")
                XCTAssertTrue(text.contains(url.path) && text.contains(expected), "\(name): \(text)")
            }
        }
    }

    /// Import → `train --mode ddep --init`: the run starts from the imported
    /// encoder and, the encoder being frozen, ends with it unchanged while
    /// the decoder trains.
    func testDDePRunFromImportedWeightsKeepsTheEncoder() throws {
        let artifact = Self.work.appendingPathComponent("tiny.ddepc")
        let module = try buildModule(TransUNet.tiny, config: EntryConfig(batch: 1, size: 32, classes: 3, entries: [.pretrainStep]))
        var compile = CompileOptions()
        (compile.batch, compile.size, compile.classes) = (1, 32, 3)
        _ = try CompileDriver.compile(module, to: artifact, options: compile)
        let layout = try Artifact(directory: artifact).manifest.layout
        let (converted, _) = try WeightImporter.convert(try timm(), format: .timmR50ViTB16,
                                                        target: Dictionary(uniqueKeysWithValues: layout.params.map { ($0.name, $0.shape) }))
        let imported = Self.work.appendingPathComponent("imported.safetensors")
        try converted.write(to: imported)

        var options = TrainOptions()
        options.mode = .ddep
        options.images = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Examples/data/images")
        options.steps = 2
        options.learningRate = 1e-2
        options.runDirectory = Self.work.appendingPathComponent("run")
        options.initFrom = imported
        options.log = { _ in }
        let summary = try Trainer(artifact: try Artifact(directory: artifact), options: options).run()
        XCTAssertTrue(summary.losses.allSatisfy(\.isFinite))

        let checkpoint = try SafetensorsFile(contentsOf: summary.checkpoint)
        for name in converted.names {
            XCTAssertEqual(try checkpoint.floats(name), try converted.floats(name), "\(name) is frozen in a DDeP run")
        }
        let store = ParameterStore(layout: layout)
        store.initialize(seed: options.seed)
        XCTAssertNotEqual(try checkpoint.floats("dec.conv_more.0.weight"), store.values("dec.conv_more.0.weight"), "the decoder trains")
    }
}
