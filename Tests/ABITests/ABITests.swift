import ABI
import DDPKernels
import IR
import XCTest

/// What compiler and runtime agree on, checked against both sides.
final class ABITests: XCTestCase {
    func layout(arenaBytes: Int = 4096) -> BufferLayout {
        let x = BufferLayout.Slot(name: "x", dtype: "f32", shape: [2, 3, 8, 8], offset: 0)
        let w = BufferLayout.Slot(name: "w", dtype: "f32", shape: [4, 3, 3, 3], offset: 0, initRule: "he")
        let entry = BufferLayout.Entry(name: "infer", inputs: [x], outputs: [], ioBytes: x.byteSize, arenaBytes: arenaBytes,
                                       trains: [], updatesState: [])
        return BufferLayout(params: [w], paramsBytes: BufferLayout.align(w.byteSize), state: [], stateBytes: 0, entries: [entry])
    }

    func testTheFingerprintLineReadsBackAndTellsEditsApart() throws {
        let fingerprint = ArtifactFingerprint(batch: 2, size: 8, classes: 3, layout: layout(), optimizer: AdamSettings())
        let ir = fingerprint.line + "\nfunc @infer(...) {\n}\n"
        XCTAssertEqual(ArtifactFingerprint(firstLineOf: ir), fingerprint)
        XCTAssertTrue(fingerprint.line.hasPrefix("// "), "a comment, which the IR parser skips")
        XCTAssertNotEqual(ArtifactFingerprint(batch: 2, size: 8, classes: 3, layout: layout(arenaBytes: 1024), optimizer: AdamSettings()).contractHash,
                          fingerprint.contractHash, "an edited arena size changes the hash")
        XCTAssertNotEqual(ArtifactFingerprint(batch: 2, size: 8, classes: 3, layout: layout(), optimizer: AdamSettings(beta2: 0.99)).contractHash,
                          fingerprint.contractHash, "so does an edited β")
        XCTAssertNil(ArtifactFingerprint(firstLineOf: "func @infer(...) {\n}\n"), "IR without the line")
        XCTAssertNil(ArtifactFingerprint(firstLineOf: "// ddepc artifact: batch two, size 8, 3 classes, layout and optimizer 0\n"))
    }

    func testTheFingerprintIsParsedBackAsAComment() throws {
        let source = ArtifactFingerprint(batch: 1, size: 4, classes: 2, layout: layout(), optimizer: nil).line + """

        func @f(%0: f32[4] input "x") {
          %1 = exp(%0) : f32[4]
          return %1 as "y"
        }
        """
        XCTAssertEqual(try Parser.parse(source).functions.map(\.name), ["f"])
    }

    func testBiasCorrectionsAreAdams() {
        let (bc1, bc2) = AdamSettings().biasCorrections(step: 1)
        XCTAssertEqual(bc1, 10, accuracy: 1e-12)
        XCTAssertEqual(bc2, 1000, accuracy: 1e-9)
        XCTAssertEqual(AdamSettings(beta1: 0.5).biasCorrections(step: 2).bc1, 1 / 0.75, accuracy: 1e-12)
    }

    /// The kernel library implements the table the compiler emits calls to.
    func testTheKernelTableIsTheLibrarys() {
        XCTAssertEqual(KernelTable.names.count, Int(ddp_kernel_count.rawValue))
        XCTAssertEqual(KernelTable.index(of: "conv2d"), 0)
        XCTAssertNil(KernelTable.index(of: "no_such_kernel"))
        let table = ddp_kernel_table()!
        for (index, name) in KernelTable.names.enumerated() {
            XCTAssertEqual(KernelTable.index(of: name), index)
            XCTAssertNotNil(table[index], name)
        }
    }

    /// Both code generators lay out the entry points' buffer pointers by
    /// `Region.allCases`: the order of ddp_buffers' fields.
    func testBufferRegionsAreInTheOrderOfTheCStruct() {
        let fields: [BufferLayout.Region: PartialKeyPath<ddp_buffers>] = [.params: \.params, .state: \.state, .io: \.io, .arena: \.arena]
        let pointer = MemoryLayout<UnsafeMutablePointer<CChar>>.stride
        for (index, region) in BufferLayout.Region.allCases.enumerated() {
            XCTAssertEqual(MemoryLayout<ddp_buffers>.offset(of: fields[region]!), index * pointer, region.rawValue)
        }
        XCTAssertEqual(MemoryLayout<ddp_buffers>.size, BufferLayout.Region.allCases.count * pointer)
    }

    /// The manifest's element types are the IR's, with the same sizes.
    func testElementSizesAreTheIRs() {
        for dtype in DType.allCases {
            XCTAssertEqual(BufferLayout.elementBytes(dtype.rawValue), dtype.byteSize, dtype.rawValue)
        }
    }
}
