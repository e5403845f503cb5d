import ABI
import Foundation
import XCTest

@testable import Runtime

/// Checkpoints written from the weights in place and read back into them a
/// tensor at a time, with no whole copy of the file in memory either way.
final class ParameterStoreTests: TemporaryDirectoryTestCase {
    let moment = StepSignature.optimizerStatePrefix + "m.w"
    lazy var layout = BufferLayout(
        params: [.init(name: "w", dtype: "f32", shape: [32, 64], offset: 0, initRule: "normal"),
                 .init(name: "b", dtype: "f32", shape: [3], offset: 8192, initRule: "uniform")],
        paramsBytes: 8204,
        state: [.init(name: moment, dtype: "f32", shape: [32, 64], offset: 0, initRule: "ones")],
        stateBytes: 8192, entries: [])

    func bytes(of store: ParameterStore) -> [Data] {
        [Data(bytes: store.params.pointer, count: store.params.byteCount), Data(bytes: store.state.pointer, count: store.state.byteCount)]
    }

    func testACheckpointIsWrittenFromTheWeightsInPlaceAndReadBackIntoThem() throws {
        let saved = ParameterStore(layout: layout)
        saved.initialize(seed: 7)
        let file = url("step.safetensors")
        try saved.withExport(metadata: ["step": "3"]) { exported in
            XCTAssertEqual(exported.names, ["b", moment, "w"].sorted())
            // Each tensor reads its slot: no copy of the weights is made to
            // write them (Foundation copies a few bytes, as b's 12, inline).
            for slot in layout.params where slot.shape.reduce(1, *) > 16 {
                try exported.tensor(slot.name).data.withUnsafeBytes { XCTAssertEqual($0.baseAddress, UnsafeRawPointer(saved.params.pointer + slot.offset)) }
            }
            try exported.write(to: file)
        }
        let loaded = ParameterStore(layout: layout)
        let report = try loaded.load(try SafetensorsFileReader(contentsOf: file), from: file.path)
        XCTAssertEqual(report.loaded.sorted(), ["b", moment, "w"].sorted())
        XCTAssertEqual(bytes(of: loaded), bytes(of: saved))
        // Read whole, the same file loads the same bytes.
        let whole = ParameterStore(layout: layout)
        try whole.load(try SafetensorsFile(contentsOf: file), from: file.path)
        XCTAssertEqual(bytes(of: whole), bytes(of: saved))
    }

    func testLoadingKeepsWhatIsIncludedAndRefusesWeightsThatAreNotFinite() throws {
        var file = SafetensorsFile()
        try file.set("w", values: [Float](repeating: 2, count: 2048), shape: [32, 64])
        try file.set("b", values: [1, .nan, 3] as [Float], shape: [3])
        let path = url("bad.safetensors")
        try file.write(to: path)
        let reader = try SafetensorsFileReader(contentsOf: path)

        let store = ParameterStore(layout: layout)
        XCTAssertThrowsError(try store.load(reader, from: path.path, allowMissing: { _ in true })) {
            XCTAssertTrue("\($0)".contains("tensor \"b\" holds nan (1 of its 3 values are not finite, the first at index 1)"), "\($0)")
        }
        let partial = ParameterStore(layout: layout)
        let report = try partial.load(reader, from: path.path, including: { $0 != "b" }, allowMissing: { _ in true })
        XCTAssertEqual(report.loaded, ["w"])
        XCTAssertEqual(report.missing.sorted(), ["b", moment].sorted())
        XCTAssertEqual(report.unexpected, [])
        XCTAssertEqual(Array(partial.params.floats(at: 0, count: 2048)), [Float](repeating: 2, count: 2048))
        XCTAssertThrowsError(try ParameterStore(layout: layout).load(reader, from: path.path, including: { $0 != "b" })) {
            XCTAssertTrue("\($0)".contains("lacks 2 tensor(s) the model needs: b, " + moment), "\($0)")
        }
    }
}
