import ABI
import Codegen
import Foundation
import IR
import ModelZoo
import Runtime
import XCTest

/// Default initialisation is what a user of the reference implementation
/// gets: the rule each layer kind records in the layout (and so in an
/// artifact's manifest), and the empirical statistics of the values
/// `ParameterStore` draws for it.
///
/// - U-Net (segmentation_models_pytorch): torchvision ResNet encoder convs
///   kaiming_normal(fan_out, relu); decoder convs kaiming_uniform(fan_in,
///   relu); heads xavier_uniform, bias 0; batch norms 1 / 0.
/// - TransUNet (its official code): PyTorch layer defaults (Conv/Linear
///   weight and bias U(±1/√fan_in)), MLP xavier_uniform with normal(1e-6)
///   biases, position embedding zeros, norms 1 / 0.
final class InitStatisticsTests: XCTestCase {
    func store(_ model: any SegmentationModel, size: Int) throws -> (BufferLayout, ParameterStore) {
        let module = try buildModule(model, config: EntryConfig(batch: 1, size: size, classes: 3))
        let layout = try BufferLayout(module: module)
        let store = ParameterStore(layout: layout)
        store.initialize(seed: 7)
        return (layout, store)
    }

    func rule(_ layout: BufferLayout, _ name: String, file: StaticString = #filePath, line: UInt = #line) -> InitRule? {
        guard let slot = layout.params.first(where: { $0.name == name }) ?? layout.state.first(where: { $0.name == name }) else {
            XCTFail("no parameter \(name)", file: file, line: line)
            return nil
        }
        return slot.initRule.flatMap(InitRule.init(text:))
    }

    /// The values of `name` follow `expected`: constants exactly; drawn values
    /// inside a uniform rule's bound, and in tensors of 500 values or more
    /// with a standard deviation within 12 % of the rule's and reaching past
    /// 90 % of a uniform bound.
    func check(_ layout: BufferLayout, _ store: ParameterStore, _ name: String, is expected: InitRule,
               file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(rule(layout, name, file: file, line: line), expected, "\(name) records its rule", file: file, line: line)
        guard let values = store.values(name), let slot = (layout.params + layout.state).first(where: { $0.name == name }) else {
            return XCTFail("no values for \(name)", file: file, line: line)
        }
        switch expected {
        case .zeros: XCTAssertTrue(values.allSatisfy { $0 == 0 }, name, file: file, line: line)
        case .ones: XCTAssertTrue(values.allSatisfy { $0 == 1 }, name, file: file, line: line)
        default:
            if let bound = expected.uniformBound(shape: slot.shape) {
                let largest = Double(values.map { abs($0) }.max() ?? 0)
                XCTAssertLessThanOrEqual(largest, bound * (1 + 1e-6), "\(name) within ±\(bound)", file: file, line: line)
                if values.count >= 500 {
                    XCTAssertGreaterThan(largest, 0.9 * bound, "\(name) spans its bound", file: file, line: line)
                }
            }
            guard values.count >= 500 else { return }
            let n = Double(values.count)
            let mean = values.reduce(0) { $0 + Double($1) } / n
            let std = (values.reduce(0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / n).squareRoot()
            let want = expected.standardDeviation(shape: slot.shape)
            XCTAssertEqual(std, want, accuracy: 0.12 * want, "\(name): std of \(values.count) values", file: file, line: line)
            XCTAssertEqual(mean, 0, accuracy: 4 * want / n.squareRoot() + 1e-12, "\(name): mean", file: file, line: line)
        }
    }

    func testUNetStartsAsSegmentationModelsPyTorch() throws {
        let (layout, store) = try store(UNet.small, size: 32)
        // torchvision ResNet encoder (the stem 7×7, a 3×3, a 1×1 projection).
        check(layout, store, "enc.conv1.weight", is: .heFanOut)
        check(layout, store, "enc.layer2.0.conv1.weight", is: .heFanOut)
        check(layout, store, "enc.layer4.0.downsample.0.weight", is: .heFanOut)
        check(layout, store, "enc.bn1.weight", is: .ones)
        check(layout, store, "enc.bn1.bias", is: .zeros)
        check(layout, store, "enc.bn1.running_mean", is: .zeros)
        check(layout, store, "enc.bn1.running_var", is: .ones)
        // smp initialize_decoder: kaiming_uniform(fan_in, relu), bound √(6/fan_in).
        check(layout, store, "dec.blocks.0.conv1.0.weight", is: .kaimingUniform(a: 0))
        check(layout, store, "dec.blocks.4.conv2.0.weight", is: .kaimingUniform(a: 0))
        check(layout, store, "dec.blocks.4.conv2.1.weight", is: .ones)
        check(layout, store, "dec.blocks.4.conv2.1.bias", is: .zeros)
        // smp initialize_head: xavier_uniform, zero bias, for every head.
        for head in ["head.denoise", "head.seg", "head.cls"] {
            check(layout, store, "\(head).weight", is: .xavier)
            check(layout, store, "\(head).bias", is: .zeros)
        }
        let bound = try XCTUnwrap(InitRule.kaimingUniform(a: 0).uniformBound(shape: [8, 8, 3, 3]))
        XCTAssertEqual(bound, (6.0 / 72).squareRoot(), accuracy: 1e-12)
    }

    func testTransUNetStartsAsItsOfficialCode() throws {
        let (layout, store) = try store(TransUNet.tiny, size: 32)
        // nn.Conv2d / nn.Linear defaults: kaiming_uniform(a=√5) → U(±1/√fan_in), bias U(±1/√fan_in).
        check(layout, store, "enc.root.conv.weight", is: .pytorchWeight)
        check(layout, store, "enc.patch_embeddings.weight", is: .pytorchWeight)
        check(layout, store, "enc.patch_embeddings.bias", is: .pytorchBias(fanIn: 128))
        check(layout, store, "enc.layer.0.attn.query.weight", is: .pytorchWeight)
        check(layout, store, "enc.layer.0.attn.query.bias", is: .pytorchBias(fanIn: 64))
        check(layout, store, "dec.conv_more.0.weight", is: .pytorchWeight)
        check(layout, store, "head.seg.weight", is: .pytorchWeight)
        check(layout, store, "head.seg.bias", is: .pytorchBias(fanIn: 8 * 9))
        // Mlp._init_weights: xavier_uniform, normal(1e-6) biases.
        check(layout, store, "enc.layer.0.ffn.fc1.weight", is: .xavier)
        check(layout, store, "enc.layer.1.ffn.fc2.weight", is: .xavier)
        check(layout, store, "enc.layer.0.ffn.fc1.bias", is: .normal(1e-6))
        // Embeddings: position embedding zeros; norms 1 / 0.
        check(layout, store, "enc.position_embeddings", is: .zeros)
        check(layout, store, "enc.root.gn.weight", is: .ones)
        check(layout, store, "enc.encoder_norm.weight", is: .ones)
        check(layout, store, "enc.encoder_norm.bias", is: .zeros)
        let bound = try XCTUnwrap(InitRule.pytorchWeight.uniformBound(shape: [64, 64]))
        XCTAssertEqual(bound, 1 / 8, accuracy: 1e-12, "kaiming_uniform(a=√5) is U(±1/√fan_in)")
    }

    /// The rule text round-trips (it is what manifests and .ddir files hold).
    func testRulesRoundTripAsText() {
        for rule: InitRule in [.zeros, .ones, .he, .heFanOut, .xavier, .pytorchWeight, .kaimingUniform(a: 0),
                               .uniform(0.125), .normal(1e-6), .pytorchBias(fanIn: 72)] {
            XCTAssertEqual(InitRule(text: rule.description), rule, rule.description)
        }
        XCTAssertNil(InitRule(text: "uniform(-1)"))
        XCTAssertNil(InitRule(text: "kaiming_uniform(nan)"))
    }
}
