// A TransUNet for decoder denoising pretraining, sized for a CPU.
//
//     ddepc compile Examples/transunet.swift --size 128
//
// The encoder is TransUNet's hybrid: a weight-standardized ResNet with
// GroupNorm whose last map becomes transformer tokens (`.r50ViTB16` is the
// paper's R50-ViT-B/16: units 3, 4, 9 at width 64, 12 blocks of 768). The
// decoder is its cascaded upsampler: a 3×3 conv to the first width, then one
// block per further width (bilinear ×2, skip, two 3×3 conv+BN+ReLU).
// `TransUNet.small` is this same model; `TransUNet(.r50ViTB16, decoder:
// .ddep1x)` is DDeP's default [1024, 512, 256, 128, 64] decoder.
import ModelZoo

let encoder = TransUNetEncoder(
    resnet: ResNetV2Encoder(width: 32, units: [2, 2]),
    hidden: 256, layers: 4, heads: 8, mlpDim: 1024
)
let transunet = TransUNet(encoder, decoderWidths: [256, 128, 64, 32])

ModelFile.main(transunet)
