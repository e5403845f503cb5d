import Foundation
import ModelZoo
import Runtime
import Driver
import XCTest

/// `TransUNet.tiny` (two weight-standardized ResNet stages, two transformer
/// blocks, cascaded bilinear upsampler) compiled by both backends against
/// the PyTorch transcription of the official TransUNet in
/// tools/make_fixtures.py: eval-mode logits, the DDeP loss and its gradient
/// wrt every decoder parameter (encoder frozen), the fine-tuning loss and
/// its gradient wrt every parameter, and the running statistics both steps
/// update. PyTorch's own float32 run is within 2e-5 of the fixture (see
/// the fixture's metadata); ddepc's is within 1.1e-5 (fine-tuning
/// gradients), 4e-6 (DDeP gradients), 1.2e-6 (logits).
final class TransUNetParityTests: ParityTestCase {
    static let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ddepc-parity-transunet-\(UUID().uuidString)")

    override class func tearDown() { try? FileManager.default.removeItem(at: directory) }

    func check(_ backend: Backend) throws {
        let fixture = try ParityFixture("transunet-tiny")
        let executor = try fixture.compile(TransUNet.tiny, backend: backend, into: Self.directory.appendingPathComponent(backend.rawValue))
        let worst = try checkParity(executor, fixture, tolerances: Tolerances(), label: "TransUNet.tiny \(backend)")
        print("TransUNet.tiny \(backend) vs PyTorch, worst errors: " + worst.sorted { $0.key < $1.key }
            .map { "\($0.key) \(String(format: "%.1e", $0.value))" }.joined(separator: ", "))
    }

    func testCBackendMatchesPyTorch() throws { try check(.c) }
    func testLLVMBackendMatchesPyTorch() throws { try check(.llvm) }
}
