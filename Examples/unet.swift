// A U-Net for decoder denoising pretraining, small enough for a CPU.
//
//     ddepc compile Examples/unet.swift
//
// The encoder is a ResNet (torchvision layout; `.resnet18`, `.resnet34`,
// `.resnet50`, or `ResNetEncoder(depth:baseWidth:)` for a narrower one); the
// decoder follows segmentation_models_pytorch's Unet: one block per width,
// each upsampling ×2, joining a skip and applying two 3×3 conv+BN+ReLU.
// `UNet.small` is this same model.
import ModelZoo

let unet = UNet(
    encoder: ResNetEncoder(depth: 18, baseWidth: 8),
    decoderWidths: [64, 32, 16, 8, 8]
)

ModelFile.main(unet)
