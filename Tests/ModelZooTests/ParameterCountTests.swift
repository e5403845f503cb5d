import IR
import ModelZoo
import XCTest

/// Parameter counts against segmentation_models_pytorch's `smp.Unet(encoder,
/// classes=1)` (trainable parameters; running statistics excluded).
///
/// Derivation: torchvision ResNet-18/34/50 have 11,689,512 / 21,797,672 /
/// 25,557,032 parameters, of which the classifier is 513,000 (512·1000 + 1000)
/// or 2,049,000 (2048·1000 + 1000), leaving 11,176,512 / 21,284,672 /
/// 23,508,032. The decoder (widths 256,128,64,32,16; conv without bias + BN)
/// plus a 16→classes 3×3 head with bias adds 3,151,552 + 145 for the basic
/// ResNets (skips 256,128,64,64) and 9,012,928 + 145 for ResNet-50 (head
/// 2048, skips 1024,512,256,64). ResNet-50 with 2 classes: 32,521,250.
final class ParameterCountTests: XCTestCase {
    func weightCount(_ model: UNet, classes: Int) throws -> Int {
        let config = EntryConfig(batch: 1, size: 64, classes: classes, entries: [.finetuneStep])
        let function = try XCTUnwrap(try buildModule(model, config: config)["finetune_step"])
        return function.args.filter(\.role.isWeight).reduce(0) { $0 + $1.type.count }
    }

    func testResNet18UNet() throws {
        XCTAssertEqual(try weightCount(UNet(encoder: .resnet18), classes: 1), 14_328_209)
    }

    func testResNet34UNet() throws {
        XCTAssertEqual(try weightCount(UNet(encoder: .resnet34), classes: 1), 24_436_369)
    }

    func testResNet50UNet() throws {
        XCTAssertEqual(try weightCount(UNet(encoder: .resnet50), classes: 1), 32_521_105)
        XCTAssertEqual(try weightCount(UNet(encoder: .resnet50), classes: 2), 32_521_250)
    }

    func testEncoderAloneMatchesTorchvisionWithoutClassifier() throws {
        for (encoder, expected) in [(ResNetEncoder.resnet18, 11_176_512), (.resnet34, 21_284_672), (.resnet50, 23_508_032)] {
            let ctx = BuildContext(function: "f", training: false)
            _ = encoder(ctx.input("x", .f32([1, 3, 64, 64])), scope: ctx.root["enc"])
            let function = try ctx.finish()
            XCTAssertEqual(function.args.filter(\.role.isWeight).reduce(0) { $0 + $1.type.count }, expected, "depth \(encoder.depth)")
            XCTAssertEqual(encoder.featureChannels, encoder.depth == 50 ? [64, 256, 512, 1024, 2048] : [64, 64, 128, 256, 512])
        }
    }

    func testSmallUNetIsSmall() throws {
        let count = try weightCount(.small, classes: 2)
        XCTAssertLessThan(count, 400_000)
        XCTAssertEqual(ResNetEncoder(depth: 18, baseWidth: 8).featureChannels, [8, 8, 16, 32, 64])
    }
}
