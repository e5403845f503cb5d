#!/usr/bin/env python3
"""The DDeP paper's ablations in miniature, in one resumable command.

    scripts/experiment.py [--quick] [--dir out/experiment] [--seeds 1,2,3]

Set-up (as in scripts/demo.sh): unet-vgg16 at 64 px, batch 8; HED's VGG16
encoder; unlabeled real photos (OpenCV's samples, KDE's wallpaper
photographs, Examples/data/images); MNI152 tissue slices (4 classes) as the
labeled set. Run scripts/demo.sh once first, or let this script prepare the
same inputs (it needs what demo.sh installs).

Pretraining runs (one each, seed 1):
  ddep            decoder denoising, encoder frozen: scaled noise, σ 0.22, ε target, fixed γ
  ddep-x          ... predicting x instead of ε
  ddep-uniform    ... γ ~ U[0,1] per image
  ddep-scaled-σ   scaled noise at other σ
  ddep-simple-σ   simple additive noise x + σ·ε at several σ
  dep             denoising of the whole model from ddepc's default initialisation (no
                  supervised encoder), as the paper's DeP
Fine-tuning (every seed): {random decoder (HED encoder), DDeP, DeP} at every
label fraction; every other pretraining variant at the smallest fraction.

Every finished run is kept: a fine-tuning run whose eval.json exists, and a
pretraining run whose checkpoint of the last step exists, are skipped; an
unfinished one is continued with --resume. Results go to DIR: results.tsv
files, table.txt, miou_vs_fraction.svg, miou_vs_sigma.svg and claims.txt
(which of the paper's claims this miniature reproduces, and which not).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import summarize_runs  # noqa: E402

WALLPAPER_PHOTOS = ["BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
                    "Grey", "Kite", "OneStandsOut", "Path", "summer_1am"]


def log(msg):
    print(f"[experiment {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fail(msg):
    print(f"experiment: error: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, logfile=None):
    if logfile:
        with open(logfile, "a") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    else:
        r = subprocess.run(cmd)
    if r.returncode != 0:
        where = f"; its output is in {logfile}" if logfile else ""
        fail(f"command failed ({r.returncode}): {' '.join(cmd)}{where}")


def ddepc_path(args):
    if args.ddepc:
        return args.ddepc
    r = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], cwd=ROOT, capture_output=True, text=True)
    path = os.path.join(r.stdout.strip(), "ddepc")
    if r.returncode != 0 or not os.path.isfile(path):
        fail("no release build of ddepc; build it with `swift build -c release` (or pass --ddepc)")
    return path


def prepare(d, ddepc):
    """Photos, tissue set, HED encoder and the artifact, each made once."""
    photos = os.path.join(d, "photos")
    if not os.path.isdir(photos):
        tmp = photos + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        src = "/usr/share/doc/opencv-doc/examples/data"
        if not os.path.isdir(src):
            fail(f"{src} is missing; install it with `scripts/install-deps.sh opencv-doc plasma-workspace-wallpapers`")
        for f in sorted(os.listdir(src)):
            if f.endswith(".jpg"):
                shutil.copy(os.path.join(src, f), tmp)
        for w in WALLPAPER_PHOTOS:
            wd = f"/usr/share/wallpapers/{w}/contents/images"
            if os.path.isdir(wd) and os.listdir(wd):
                f = sorted(os.listdir(wd))[0]
                shutil.copy(os.path.join(wd, f), os.path.join(tmp, f"wallpaper-{w}{os.path.splitext(f)[1]}"))
        ex = os.path.join(ROOT, "Examples", "data", "images")
        for f in sorted(os.listdir(ex)):
            shutil.copy(os.path.join(ex, f), tmp)
        os.rename(tmp, photos)
    tissue = os.path.join(d, "tissue")
    if not os.path.isdir(tissue):
        shutil.rmtree(tissue + ".partial", ignore_errors=True)
        run([sys.executable, os.path.join(ROOT, "tools", "make_tissue_set.py"), "-o", tissue + ".partial", "--size", "64"])
        os.rename(tissue + ".partial", tissue)
    enc = os.path.join(d, "hed-enc.safetensors")
    if not os.path.isfile(enc):
        hed = os.path.join(d, "hed.safetensors")
        if not os.path.isfile(hed):
            run([sys.executable, os.path.join(ROOT, "tools", "hed_to_safetensors.py"), "-o", hed])
        run([ddepc, "import-weights", "--format", "hed-vgg16", hed, "-o", enc])
    art = os.path.join(d, "vgg.ddepc")
    if not os.path.isdir(art):
        run([ddepc, "compile", "unet-vgg16", "-o", art, "--batch", "8", "--size", "64", "--classes", "4"])
    return photos, tissue, enc, art


def finished_pretraining(rundir, steps):
    return os.path.isfile(os.path.join(rundir, "checkpoints", f"step-{steps:08d}.safetensors"))


def main():
    p = argparse.ArgumentParser(description="DDeP ablations in miniature (resumable).")
    p.add_argument("--dir", default=os.path.join("out", "experiment"), help="run directory (default out/experiment)")
    p.add_argument("--quick", action="store_true", help="a small configuration for testing (fewer steps, seeds, σ)")
    p.add_argument("--seeds", help="comma-separated fine-tuning seeds (default 1,2,3; --quick 1,2)")
    p.add_argument("--fractions", help="comma-separated label fractions (default 2%%,10%%,50%%; --quick 2%%,10%%)")
    p.add_argument("--pretrain-steps", type=int, help="denoising steps (default 400; --quick 100)")
    p.add_argument("--finetune-steps", type=int, help="fine-tuning steps (default 100; --quick 40)")
    p.add_argument("--ddepc", help="ddepc binary (default: the release build)")
    a = p.parse_args()
    q = a.quick
    seeds = (a.seeds or ("1,2" if q else "1,2,3")).split(",")
    fractions = (a.fractions or ("2%,10%" if q else "2%,10%,50%")).split(",")
    psteps = a.pretrain_steps or (100 if q else 400)
    fsteps = a.finetune_steps or (40 if q else 100)
    scaled_sigmas = ["0.1", "0.22", "0.5"] if q else ["0.1", "0.22", "0.4", "0.8"]
    simple_sigmas = ["0.1", "0.22"] if q else ["0.1", "0.22", "0.4"]
    d = a.dir
    os.makedirs(d, exist_ok=True)
    settings = {"seeds": seeds, "fractions": fractions, "pretrain_steps": psteps, "finetune_steps": fsteps,
                "scaled_sigmas": scaled_sigmas, "simple_sigmas": simple_sigmas}
    sfile = os.path.join(d, "settings.json")
    if os.path.isfile(sfile):
        with open(sfile) as f:
            old = json.load(f)
        if old.get("pretrain_steps") != psteps or old.get("finetune_steps") != fsteps:
            fail(f"{d} holds runs with {old.get('pretrain_steps')} pretraining and {old.get('finetune_steps')} "
                 f"fine-tuning steps; pass the same steps (or --quick as before), or choose another --dir")
    with open(sfile, "w") as f:
        json.dump(settings, f, indent=1)
    t0 = time.time()
    ddepc = ddepc_path(a)
    photos, tissue, enc, art = prepare(d, ddepc)

    # Pretraining variants: name -> extra ddepc train options.
    variants = {"ddep": ["--mode", "ddep"], "ddep-x": ["--mode", "ddep", "--target", "x"],
                "ddep-uniform": ["--mode", "ddep", "--gamma-schedule", "uniform"], "dep": ["--mode", "dep"]}
    for s in scaled_sigmas:
        if s != "0.22":
            variants[f"ddep-scaled-{s}"] = ["--mode", "ddep", "--sigma", s]
    for s in simple_sigmas:
        variants[f"ddep-simple-{s}"] = ["--mode", "ddep", "--noise", "simple", "--sigma", s]
    pre = os.path.join(d, "pretrain")
    os.makedirs(pre, exist_ok=True)
    for name, opts in variants.items():
        rd = os.path.join(pre, name)
        if finished_pretraining(rd, psteps):
            log(f"pretraining {name}: done before, skipped")
            continue
        cmd = [ddepc, "train", art, *opts, "--images", photos, "--resize", "96", "--steps", str(psteps),
               "--lr", "1e-2" if name != "dep" else "1e-3", "--warmup", "20", "--seed", "1",
               "--checkpoint-every", "50", "--out", rd]
        if name != "dep":
            cmd[3:3] = ["--init", enc]
        if os.path.isdir(os.path.join(rd, "checkpoints")) and os.listdir(os.path.join(rd, "checkpoints")):
            cmd.append("--resume")
            log(f"pretraining {name}: continuing")
        else:
            log(f"pretraining {name}")
        run(cmd, rd + ".log")

    # Fine-tuning jobs: (plot group, table label, init, fraction).
    small = fractions[0]
    jobs = []
    main_groups = {"random decoder": enc, "DDeP decoder": os.path.join(pre, "ddep"), "DeP (whole model)": os.path.join(pre, "dep")}
    for fr in fractions:
        for g, init in main_groups.items():
            jobs.append(("fraction", g, fr, init))
    for name in variants:
        if name not in ("ddep", "dep"):
            jobs.append(("ablation", name, small, os.path.join(pre, name)))
    ft = os.path.join(d, "finetune")
    os.makedirs(ft, exist_ok=True)
    rows = []  # (kind, group, fraction, seed, eval_json)
    for kind, g, fr, init in jobs:
        for seed in seeds:
            tag = {"random decoder": "random", "DDeP decoder": "ddep", "DeP (whole model)": "dep"}.get(g, g)
            rd = os.path.join(ft, f"{tag}-{fr.replace('%', 'pct').replace('/', 'of')}-seed{seed}")
            ej = os.path.join(rd, "eval.json")
            rows.append((kind, g, fr, seed, ej))
            if os.path.isfile(ej):
                continue
            if os.path.isdir(rd):
                shutil.rmtree(rd)  # an unfinished fine-tuning run: start it again (it is short)
            log(f"fine-tuning {g} at {fr}, seed {seed}")
            run([ddepc, "train", art, "--mode", "finetune", "--data", tissue, "--label-fraction", fr, "--init", init,
                 "--steps", str(fsteps), "--lr", "1e-3", "--warmup", "10", "--seed", seed, "--out", rd], rd + ".log")
            run([ddepc, "eval", rd, "--data", tissue, "--split", "val", "--json", ej + ".partial"], rd + ".log")
            os.rename(ej + ".partial", ej)

    # Tables and plots.
    def write_tsv(path, sel):
        with open(path, "w") as f:
            f.write("group\tx\tseed\teval_json\n")
            for g, x, seed, ej in sel:
                f.write(f"{g}\t{x}\t{seed}\t{ej}\n")
    frac_tsv = os.path.join(d, "results_fraction.tsv")
    write_tsv(frac_tsv, [(g, fr, s, ej) for k, g, fr, s, ej in rows if k == "fraction"])
    sig = []
    for k, g, fr, s, ej in rows:
        if g == "DDeP decoder" and fr == small:
            sig.append(("scaled noise", "0.22", s, ej))
        elif g.startswith("ddep-scaled-"):
            sig.append(("scaled noise", g.split("-")[-1], s, ej))
        elif g.startswith("ddep-simple-"):
            sig.append(("simple noise", g.split("-")[-1], s, ej))
    sig_tsv = os.path.join(d, "results_sigma.tsv")
    write_tsv(sig_tsv, sig)
    abl_tsv = os.path.join(d, "results_ablation.tsv")
    write_tsv(abl_tsv, [(g, fr, s, ej) for k, g, fr, s, ej in rows if fr == small])

    out = []
    for tsv, title, xl, xn, svg in [
            (frac_tsv, "mIoU against label fraction", "label fraction", "labels", "miou_vs_fraction.svg"),
            (sig_tsv, f"mIoU against σ (DDeP, {small} labels)", "σ", "sigma", "miou_vs_sigma.svg"),
            (abl_tsv, None, None, "labels", None)]:
        groups, xs, classes, cells = summarize_runs.summarize(summarize_runs.load(tsv))
        out.append(summarize_runs.table(groups, xs, classes, cells, xn))
        if svg:
            with open(os.path.join(d, svg), "w") as f:
                f.write(summarize_runs.svg(groups, xs, cells, title, xl))

    def miou(g, fr):
        vals = [json.load(open(ej))["mIoU"] * 100 for k, gg, f, s, ej in rows if gg == g and f == fr]
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    claims = []

    def claim(text, a_, b_):
        (ma, sa), (mb, sb) = a_, b_
        diff = ma - mb
        verdict = "reproduced" if diff > max(sa, sb) else ("not reproduced (reversed)" if diff < -max(sa, sb) else "not reproduced (within the seeds' spread)")
        claims.append(f"- {text}: {ma:.1f} ± {sa:.1f} vs {mb:.1f} ± {sb:.1f} (difference {diff:+.1f}) — {verdict}")

    for fr in fractions:
        claim(f"DDeP decoder beats a random decoder at {fr} labels", miou("DDeP decoder", fr), miou("random decoder", fr))
    claim(f"predicting ε beats predicting x ({small} labels)", miou("DDeP decoder", small), miou("ddep-x", small))
    best_simple = max(simple_sigmas, key=lambda s: miou(f"ddep-simple-{s}", small)[0])
    claim(f"scaled noise (σ 0.22) beats simple noise (its best σ, {best_simple})", miou("DDeP decoder", small), miou(f"ddep-simple-{best_simple}", small))
    for s in scaled_sigmas:
        if s != "0.22":
            claim(f"σ 0.22 beats σ {s} (scaled noise)", miou("DDeP decoder", small), miou(f"ddep-scaled-{s}", small))
    claim(f"a fixed γ beats γ ~ U[0,1] ({small} labels)", miou("DDeP decoder", small), miou("ddep-uniform", small))
    big = fractions[-1]
    claim(f"supervised encoder (random decoder) beats DeP at {big} labels", miou("random decoder", big), miou("DeP (whole model)", big))
    rule = ("A claim counts as reproduced when the mean difference exceeds the larger standard deviation over seeds "
            "(each seed draws its own labeled subset; one pretraining run per variant).")
    wall = time.time() - t0
    text = (f"DDeP ablations, unet-vgg16 (HED VGG16 encoder) at 64 px, MNI152 tissue (4 classes), seeds {','.join(seeds)}, "
            f"{psteps} pretraining and {fsteps} fine-tuning steps.\n\n"
            f"Main comparison (mIoU %, mean ± std):\n{out[0]}\n\nσ sweep at {small} labels:\n{out[1]}\n\n"
            f"All variants at {small} labels:\n{out[2]}\n\nThe paper's claims:\n" + "\n".join(claims) + f"\n\n{rule}\n"
            f"\nThis invocation took {wall:.0f} s (runs done before were skipped).\n")
    with open(os.path.join(d, "table.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(d, "claims.txt"), "w") as f:
        f.write("\n".join(claims) + "\n\n" + rule + "\n")
    print(text)
    log(f"wrote {d}/table.txt, claims.txt, miou_vs_fraction.svg, miou_vs_sigma.svg")


if __name__ == "__main__":
    main()
