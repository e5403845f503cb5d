#!/usr/bin/env python3
"""Write a real labeled segmentation set from the MNI152 brain template.

nilearn (PyPI, `pip install --no-deps nilearn`) ships the ICBM 2009a
symmetric MNI152 template: a T1 image and grey- and white-matter probability
maps on the same 197 x 233 x 189 grid of 1 mm voxels
(`nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz`).
The T1 image is brain-extracted (zero outside the brain).

Each slice becomes an image (the T1 intensities, replicated to RGB) and a mask
of 8-bit class ids, in ddepc's generic layout:

    OUT/classes.txt
    OUT/train/images/NAME.png   OUT/train/masks/NAME.png
    OUT/val/images/NAME.png     OUT/val/masks/NAME.png

Classes: 0 background (outside the brain), 1 CSF/other (inside the brain,
neither grey nor white matter), 2 grey matter, 3 white matter. Labels are the
argmax of four scores, area-averaged to the output size before the argmax:
background = 1 where the T1 is (near) zero and the tissue maps are (near)
zero, else 0; the other three are (1 - p_gm - p_wm, p_gm, p_wm) inside the
brain.

Slices of all three axes are used. Along each axis, slices are grouped in
blocks of 10; every fourth block goes to val, and the two training slices on
either side of a val block are dropped, so train and val never hold
neighbouring slices. Slices whose brain covers less than --min-brain of the
square are skipped.

Only numpy is needed (PNG files are written with zlib).
"""
import argparse
import gzip
import os
import struct
import sys
import zlib

import numpy as np

CLASSES = ["background", "csf_other", "grey_matter", "white_matter"]
FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
NIFTI_DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 512: np.uint16}


def fail(message):
    print(f"make_tissue_set: error: {message}", file=sys.stderr)
    sys.exit(1)


def find_nilearn_data():
    try:
        import importlib.util
        spec = importlib.util.find_spec("nilearn")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")


def read_nifti(path):
    """Read a (gzipped) NIfTI-1 volume; returns an array indexed [x, y, z]."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            fail(f"{path}: corrupt gzip data ({e}); reinstall nilearn (pip install --force-reinstall --no-deps nilearn)")
    if len(raw) < 352:
        fail(f"{path}: {len(raw)} bytes, too short for a NIfTI-1 header (348 bytes)")
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != 348 or raw[344:347] not in (b"n+1", b"ni1"):
        fail(f"{path}: not a NIfTI-1 file (header size or magic is wrong)")
    dim = struct.unpack(endian + "8h", raw[40:56])
    datatype = struct.unpack(endian + "h", raw[70:72])[0]
    vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    slope, inter = struct.unpack(endian + "ff", raw[112:120])
    if dim[0] < 3:
        fail(f"{path}: {dim[0]}-dimensional image, expected a 3-D volume")
    if datatype not in NIFTI_DTYPES:
        fail(f"{path}: NIfTI datatype {datatype} is not supported (supported: {sorted(NIFTI_DTYPES)})")
    shape = dim[1:4]
    dtype = np.dtype(NIFTI_DTYPES[datatype]).newbyteorder(endian)
    count = int(np.prod(shape))
    need = vox_offset + count * dtype.itemsize
    if len(raw) < need:
        fail(f"{path}: truncated: {len(raw)} bytes, the header promises {need}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=vox_offset).astype(np.float32)
    if slope not in (0.0, 1.0) or inter != 0.0:
        data = data * (slope if slope != 0.0 else 1.0) + inter
    return data.reshape(shape, order="F")


def area_matrix(n_in, n_out):
    """(n_out, n_in) matrix that averages input cells over each output cell's extent."""
    m = np.zeros((n_out, n_in), np.float32)
    scale = n_in / n_out
    for o in range(n_out):
        lo, hi = o * scale, (o + 1) * scale
        for i in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
            m[o, i] = max(0.0, min(hi, i + 1) - max(lo, i))
    return m / m.sum(axis=1, keepdims=True)


def png_bytes(array):
    """PNG of an (H, W) uint8 grey or (H, W, 3) uint8 RGB array."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    h, w = array.shape[:2]
    color = 0 if array.ndim == 2 else 2
    rows = array.reshape(h, -1)
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_new(path, data):
    if os.path.exists(path):
        fail(f"{path} already exists; choose a new --out folder (nothing was overwritten)")
    with open(path, "wb") as f:
        f.write(data)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--out", required=True, help="new (or empty) folder to write the set into")
    p.add_argument("--size", type=int, default=64, help="side of the square output images (default 64)")
    p.add_argument("--step", type=int, default=1, help="use every STEP-th slice along each axis (default 1)")
    p.add_argument("--axes", default="axial,coronal,sagittal", help="slice axes to use (default all three)")
    p.add_argument("--min-brain", type=float, default=0.15, help="skip slices whose brain covers less than this fraction (default 0.15)")
    p.add_argument("--data-dir", help="folder holding the mni_icbm152_*_09a_converted.nii.gz files (default: nilearn's)")
    a = p.parse_args()
    if a.size < 8 or a.step < 1:
        fail("--size must be at least 8 and --step at least 1")
    axes_names = {"sagittal": 0, "coronal": 1, "axial": 2}
    axes = []
    for name in a.axes.split(","):
        if name not in axes_names:
            fail(f"--axes: unknown axis '{name}' (use sagittal, coronal, axial)")
        axes.append(name)

    data_dir = a.data_dir or find_nilearn_data()
    if data_dir is None:
        fail("nilearn is not installed; install it with `pip install --no-deps nilearn`, or pass --data-dir")
    paths = {k: os.path.join(data_dir, f) for k, f in FILES.items()}
    for k, path in paths.items():
        if not os.path.isfile(path):
            fail(f"{path} not found; nilearn ships it in nilearn/datasets/data/ (pip install --no-deps nilearn), or pass --data-dir")
    t1, gm, wm = (read_nifti(paths[k]) for k in ("t1", "gm", "wm"))
    if not (t1.shape == gm.shape == wm.shape):
        fail(f"the volumes' grids differ: t1 {t1.shape}, gm {gm.shape}, wm {wm.shape}")
    gm, wm = gm / max(gm.max(), 1e-6), wm / max(wm.max(), 1e-6)
    t1 = np.clip(t1 / max(np.percentile(t1[t1 > 0], 99.5), 1e-6), 0, 1)
    background = ((t1 <= 0.02) & (gm + wm <= 0.1)).astype(np.float32)
    other = np.clip(1.0 - gm - wm, 0, 1) * (1 - background)

    # Crop every slice to the brain's bounding box, padded to a square.
    inside = np.argwhere(background < 0.5)
    lo, hi = inside.min(axis=0), inside.max(axis=0) + 1

    if os.path.exists(a.out) and os.listdir(a.out):
        fail(f"{a.out} exists and is not empty; choose a new folder (nothing was overwritten)")
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            os.makedirs(os.path.join(a.out, split, sub), exist_ok=True)
    write_new(os.path.join(a.out, "classes.txt"), ("\n".join(CLASSES) + "\n").encode())

    counts = {"train": 0, "val": 0}
    pixels = {"train": np.zeros(4, np.int64), "val": np.zeros(4, np.int64)}
    for name in axes:
        ax = axes_names[name]
        plane = [d for d in range(3) if d != ax]  # remaining axes, in (x, y, z) order
        side = max(hi[plane[0]] - lo[plane[0]], hi[plane[1]] - lo[plane[1]]) + 4
        m = area_matrix(side, a.size)
        for i in range(lo[ax], hi[ax], a.step):
            rel = i - lo[ax]
            block = rel // 10
            if block % 4 == 2:
                split = "val"
            elif (block % 4 == 1 and rel % 10 >= 8) or (block % 4 == 3 and rel % 10 <= 1):
                continue  # next to a val block
            else:
                split = "train"
            sl = [slice(None)] * 3
            sl[ax] = i
            def square(vol):
                s = vol[tuple(sl)]  # 2-D, indexed (plane[0], plane[1])
                s = s[lo[plane[0]]:hi[plane[0]], lo[plane[1]]:hi[plane[1]]]
                out = np.zeros((side, side), np.float32)
                if vol is background:
                    out[:] = 1.0
                o0, o1 = (side - s.shape[0]) // 2, (side - s.shape[1]) // 2
                out[o0:o0 + s.shape[0], o1:o1 + s.shape[1]] = s
                # Rows go up the second plane axis (superior or anterior at the top).
                return out.T[::-1]
            sc = np.stack([m @ square(v) @ m.T for v in (background, other, gm * (1 - background), wm * (1 - background))])
            mask = sc.argmax(axis=0).astype(np.uint8)
            if (mask > 0).mean() < a.min_brain:
                continue
            img = np.clip(np.rint(255 * (m @ square(t1) @ m.T)), 0, 255).astype(np.uint8)
            stem = f"{name}_{i:03d}"
            write_new(os.path.join(a.out, split, "images", stem + ".png"), png_bytes(np.repeat(img[:, :, None], 3, axis=2)))
            write_new(os.path.join(a.out, split, "masks", stem + ".png"), png_bytes(mask))
            counts[split] += 1
            pixels[split] += np.bincount(mask.ravel(), minlength=4)
    for split in ("train", "val"):
        share = ", ".join(f"{c} {100 * n / pixels[split].sum():.0f}%" for c, n in zip(CLASSES, pixels[split]))
        print(f"{split}: {counts[split]} slices of {a.size}x{a.size} ({share})")


if __name__ == "__main__":
    main()
