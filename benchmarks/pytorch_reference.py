#!/usr/bin/env python3
"""Times ddepc's compiled steps on the same models written in PyTorch.

The models come from tools/make_fixtures.py (the parity fixtures' PyTorch
transcriptions, so both sides share one definition):

    unet-r18           smp-style U-Net on a torchvision ResNet-18 encoder,
                       decoder widths (256, 128, 64, 32, 16)
    transunet          TransUNet R50-ViT-B/16 with the official decoder
    transunet-ddep-1x  the same encoder with DDeP's 1x decoder widths

Each entry point does what Sources/ModelZoo/Entry.swift builds plus the Adam
update the optimizer pass appends to every training step:

    infer              eval-mode forward to head.seg, no autograd
    pretrain_step      DDeP: x~ = sqrt(g)*x + sqrt(1-g)*eps (sigma 0.22), head.denoise
                       predicts eps, MSE; encoder frozen (eval-mode batch norm,
                       no gradient); decoder and head.denoise trained
    pretrain_dep_step  the same with the whole model trained (DeP)
    finetune_step      pixel-wise cross-entropy (ignore 255) on head.seg, the
                       whole model trained

A training step is: draw the noise (pretraining), forward, loss, backward, the
global gradient norm (ddepc's steps return it as `grad_norm`), AdamW update.

Variants: `eager` (NCHW), `channels_last` (eager, NHWC memory format) and
`compile` (torch.compile, default mode, on the forward and loss; the backward
is compiled with it, the optimizer runs eagerly). For `compile` the first call
includes compilation from a cold cache (each process gets an empty inductor
cache directory unless TORCHINDUCTOR_CACHE_DIR is set); that call's time is
reported as compile_s and is not part of the step times.

Timing mirrors `ddepc bench`: inputs made once, 2 warm-up calls, then --calls
timed calls; median and min per call. Every (entry, variant) starts from a
freshly built model. Peak RSS is the process's ru_maxrss: cumulative in a
normal run, that one step's with --rss-entry (run it in a fresh process).

Usage:
    python3 benchmarks/pytorch_reference.py --model unet-r18 --batch 8 --size 128
    python3 benchmarks/pytorch_reference.py --model transunet --entry infer --variant compile --json
    python3 benchmarks/pytorch_reference.py --model unet-r18 --rss-entry finetune_step --variant eager
    python3 benchmarks/pytorch_reference.py --model unet-r18 --artifact unet.ddepc   # parameter counts vs ddepc inspect

Installs torch (CPU wheel) when it is missing.
"""
import argparse
import importlib.util
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = ["infer", "pretrain_step", "pretrain_dep_step", "finetune_step"]
VARIANTS = ["eager", "channels_last", "compile"]
MODELS = ["unet-r18", "transunet", "transunet-ddep-1x"]
WARMUP = 2  # as `ddepc bench`
SIGMA = 0.22
IGNORE_INDEX = 255


def ensure_torch():
    """Installs torch when missing: the CPU wheel first (no CUDA libraries),
    PyPI's default wheel if that index cannot be reached."""
    if importlib.util.find_spec("torch") is not None:
        return
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    try:
        subprocess.check_call(pip + ["torch", "--index-url", "https://download.pytorch.org/whl/cpu"])
    except subprocess.CalledProcessError:
        subprocess.check_call(pip + ["torch"])


ensure_torch()

if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    # torch.compile keeps compiled kernels on disk across runs: without a
    # fresh directory the reported compile time would depend on earlier runs.
    _cache = tempfile.TemporaryDirectory(prefix="torchinductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _cache.name

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def load_fixture_models():
    """tools/make_fixtures.py as a module (its main() only runs as a script)."""
    path = ROOT / "tools" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    # Leave no __pycache__ behind in tools/.
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


fx = load_fixture_models()


def build_model(name, size, classes):
    """The zoo model `name` (Sources/ddepc/Compile.swift) with PyTorch's default init."""
    if name == "unet-r18":
        # UNet(encoder: .resnet18): torchvision width 64, default decoder widths.
        enc = fx.ResNetEncoder(64, counts=(2, 2, 2, 2))
        widths = [256, 128, 64, 32, 16]
        return fx.SegmentationModel(enc, fx.UNetDecoder(enc.channels, widths), fx.Heads(widths[-1], classes))
    preset = {"transunet": "official", "transunet-ddep-1x": "ddep1x"}[name]
    return fx.transunet(dict(fx.R50_VIT_B16, decoder=fx.DECODERS[preset]), size, classes)


def input_multiple(name):
    """The input size must be a multiple of the encoder's total stride (2^5 for the
    U-Net's five decoder blocks, 16 for R50-ViT-B/16's tokens)."""
    return 32 if name == "unet-r18" else 16


# What each entry point trains (differentiates and updates), and what it only
# reads, by parameter-name prefix: ddepc's `inspect` roles.
ROLES = {
    "infer": {"reads": ["enc", "dec", "head.seg"]},
    "pretrain_step": {"trains": ["dec", "head.denoise"], "frozen": ["enc"]},
    "pretrain_dep_step": {"trains": ["enc", "dec", "head.denoise"]},
    "finetune_step": {"trains": ["enc", "dec", "head.seg"]},
}


def parameters(model, prefixes):
    return [p for n, p in model.named_parameters() if any(n.startswith(prefix + ".") for prefix in prefixes)]


def parameter_counts(model):
    return {entry: {role: sum(p.numel() for p in parameters(model, prefixes)) for role, prefixes in roles.items()}
            for entry, roles in ROLES.items()}


def ddepc_counts(artifact):
    """Per-entry counts from `ddepc inspect` lines such as
    `entry pretrain_step: trains 3151987, frozen 11176512; inputs ...`."""
    binary = os.environ.get("DDEPC", str(ROOT / ".build" / "release" / "ddepc"))
    text = subprocess.run([binary, "inspect", artifact], check=True, capture_output=True, text=True).stdout
    counts = {}
    for entry, roles in re.findall(r"^entry (\S+): ([^;]*);", text, flags=re.M):
        counts[entry] = {role: int(n) for role, n in re.findall(r"(\w+) (\d+)", roles)}
    return counts


def make_step(model, entry, variant, x, labels):
    """Sets the model's modes for `entry` and returns the step as a closure."""
    forward = torch.compile(model) if variant == "compile" else model
    if entry == "infer":
        model.eval()

        def infer():
            with torch.no_grad():
                return forward(x, "seg")
        return infer

    frozen = entry == "pretrain_step"
    model.train()
    if frozen:
        model.enc.eval()  # batch norm on running statistics, as ddepc's frozen encoder
    for p in model.enc.parameters():
        p.requires_grad_(not frozen)
    roles = ROLES[entry]
    trained = parameters(model, roles["trains"])
    # ddepc bench feeds lr 1e-4, weight decay 0 and its Adam constants (0.9, 0.999, 1e-8).
    # foreach (not the default on CPU): each update op once over all tensors, not once per tensor from Python.
    optimizer = torch.optim.AdamW(trained, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=True)

    if entry == "finetune_step":
        def loss_fn():
            return F.cross_entropy(forward(x, "seg"), labels, ignore_index=IGNORE_INDEX)
    else:
        gamma = 1 / (1 + SIGMA * SIGMA)
        a, b = math.sqrt(gamma), math.sqrt(1 - gamma)

        def loss_fn():
            noise = torch.randn_like(x)
            return F.mse_loss(forward(a * x + b * noise, "denoise"), noise)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        # The global gradient norm ddepc's step returns (its clipping is off in bench).
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in trained]))
        optimizer.step()
        return loss, grad_norm
    return train_step


def run_one(args, entry, variant):
    """Times one entry point in one variant on a fresh model."""
    torch.manual_seed(0)
    torch._dynamo.reset()  # each compiled entry pays its own compilation
    model = build_model(args.model, args.size, args.classes)
    x = 2 * torch.rand(args.batch, 3, args.size, args.size) - 1
    labels = torch.randint(0, args.classes, (args.batch, args.size, args.size))
    labels[torch.rand(args.batch, args.size, args.size) < 0.125] = IGNORE_INDEX
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    step = make_step(model, entry, variant, x, labels)
    # What the process holds before the step (torch, the model, its inputs):
    # peak_rss_mb minus this is about what the step itself needs.
    baseline_rss = peak_rss_mb()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(WARMUP - 1):
        step()
    seconds = []
    for _ in range(args.calls):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "entry": entry, "variant": variant,
        "median_ms": 1000 * median, "min_ms": 1000 * min(seconds), "calls_ms": [1000 * s for s in seconds],
        "images_per_s": args.batch / median,
        # Compilation happens in the first call (which also runs one step).
        "compile_s": first if variant == "compile" else None,
        "baseline_rss_mb": baseline_rss, "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # ru_maxrss is in KiB on Linux


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="unet-r18")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=2, help="segmentation classes (ddepc compile's default: 2)")
    parser.add_argument("--entry", action="append", choices=ENTRIES, help="entry point to time (repeatable; default all)")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="variant (repeatable; default all)")
    parser.add_argument("--calls", type=int, default=10, help="timed calls after the warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--rss-entry", choices=ENTRIES,
                        help="run only this entry in the first --variant (default eager): the peak RSS is its own")
    parser.add_argument("--artifact", help="a ddepc artifact of the same model: compare parameter counts with `ddepc inspect`")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.batch < 1 or args.calls < 1 or args.threads < 1 or args.classes < 1:
        parser.error("--batch, --calls, --threads and --classes must be positive")
    if args.size < 1 or args.size % input_multiple(args.model):
        parser.error(f"--size must be a positive multiple of {input_multiple(args.model)} for {args.model}")
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_entry:
        runs = [(args.rss_entry, (args.variant or ["eager"])[0])]
    else:
        runs = [(e, v) for e in args.entry or ENTRIES for v in args.variant or VARIANTS]
    with torch.device("meta"):  # counts only: no memory
        counts = parameter_counts(build_model(args.model, args.size, args.classes))
    report = {
        "model": args.model, "batch": args.batch, "size": args.size, "classes": args.classes,
        "threads": torch.get_num_threads(), "calls": args.calls, "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "parameters": counts, "ddepc_parameters": ddepc_counts(args.artifact) if args.artifact else None,
        "results": [],
    }
    if not args.json:
        print(f"{args.model}: batch {args.batch}, {args.size}×{args.size}, {args.classes} classes; torch {torch.__version__}, "
              f"CPU capability {report['cpu_capability']}, {report['threads']} threads, {args.calls} calls each")
        print_counts(counts, report["ddepc_parameters"])
        print("entry               variant         median ms    min ms   images/s  compile s  peak RSS MB")
    for entry, variant in runs:
        result = run_one(args, entry, variant)
        report["results"].append(result)
        if not args.json:
            compile_s = f"{result['compile_s']:9.1f}" if result["compile_s"] is not None else f"{'-':>9}"
            print(f"{entry:<20}{variant:<14}{result['median_ms']:11.2f} {result['min_ms']:9.2f}  "
                  f"{result['images_per_s']:9.1f}  {compile_s}  {result['peak_rss_mb']:11.1f}", flush=True)
    if args.json:
        print(json.dumps(report))
    if report["ddepc_parameters"] and any(report["ddepc_parameters"].get(e) != c for e, c in counts.items()):
        sys.exit("parameter counts differ from ddepc's")


def print_counts(counts, ddepc):
    print("parameters          " + ("PyTorch / ddepc inspect" if ddepc else "PyTorch"))
    for entry, roles in counts.items():
        ours = ", ".join(f"{role} {n}" for role, n in roles.items())
        if ddepc:
            theirs = ", ".join(f"{role} {n}" for role, n in ddepc.get(entry, {}).items()) or "(no such entry)"
            ours += f"  /  {theirs}  ({'same' if ddepc.get(entry) == roles else 'DIFFERENT'})"
        print(f"  {entry:<18}{ours}")


if __name__ == "__main__":
    main()
