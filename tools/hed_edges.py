#!/usr/bin/env python3
"""Feature check of an imported HED encoder: draws HED's edge map of a photo.

Runs the VGG16 weights as `ddepc import-weights --format hed-vgg16` wrote them
(`enc.features.*`, PyTorch layouts) on an image given the way ddepc's data
pipeline gives it (RGB scaled to [-1, 1]), converted to HED's convention by
the same fixed map `unet-vgg16` has in its graph (BGR, 0-255, minus the Caffe
mean), then HED's own side outputs and fuse layer (read from the file
tools/hed_to_safetensors.py wrote). If the names, the kernel transpose or the
input convention were wrong, the result would not look like the photo's edges.

    python3 tools/hed_edges.py PHOTO ENC.safetensors HED.safetensors -o edges.png

Needs torch, numpy and Pillow (pip install torch numpy pillow).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
from PIL import Image
import torch
import torch.nn.functional as F

MEAN_BGR = (104.00699, 116.66877, 122.67892)
VGG16_INDICES = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(entry["shape"])
    return out


def read_image(path, size):
    image = Image.open(path).convert("RGB")
    image.thumbnail((size, size), Image.BILINEAR)
    return np.asarray(image)


def write_gray(array, path):
    Image.fromarray(np.clip(array * 255, 0, 255).astype(np.uint8)).save(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("photo")
    p.add_argument("encoder", help="ddepc import-weights output (enc.features.*)")
    p.add_argument("hed", help="tools/hed_to_safetensors.py output (for dsn*/fuse)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--size", type=int, default=320)
    args = p.parse_args()
    if os.path.exists(args.output):
        sys.exit(f"error: {args.output} exists (nothing was overwritten)")
    enc, hed = read_safetensors(args.encoder), read_safetensors(args.hed)
    rgb = read_image(args.photo, args.size)
    x = torch.tensor(rgb, dtype=torch.float64).permute(2, 0, 1)[None] / 127.5 - 1  # ddepc's input
    bgr = torch.cat([x[:, 2 - c:3 - c] * 127.5 + (127.5 - MEAN_BGR[c]) for c in range(3)], 1)
    y, sides = bgr, []
    for block, indices in enumerate(VGG16_INDICES):
        if block > 0:
            y = F.max_pool2d(y, 2, 2, ceil_mode=True)
        for i in indices:
            w = torch.tensor(enc[f"enc.features.{i}.weight"], dtype=torch.float64)
            b = torch.tensor(enc[f"enc.features.{i}.bias"], dtype=torch.float64)
            y = F.relu(F.conv2d(y, w, b, padding=1))
        k = torch.tensor(hed[f"dsn{block + 1}/vars/0"], dtype=torch.float64).permute(3, 2, 0, 1)
        side = F.conv2d(y, k, torch.tensor(hed[f"dsn{block + 1}/vars/1"], dtype=torch.float64))
        sides.append(F.interpolate(side, size=x.shape[2:], mode="bilinear", align_corners=False))
    k = torch.tensor(hed["fuse/vars/0"], dtype=torch.float64).permute(3, 2, 0, 1)
    fused = torch.sigmoid(F.conv2d(torch.cat(sides, 1), k, torch.tensor(hed["fuse/vars/1"], dtype=torch.float64)))
    edges = fused[0, 0].numpy()
    write_gray(edges, args.output)
    print(f"wrote {args.output}: edge probability mean {edges.mean():.3f}, "
          f"{(edges > 0.5).mean() * 100:.1f} % of pixels above 0.5")


if __name__ == "__main__":
    main()
