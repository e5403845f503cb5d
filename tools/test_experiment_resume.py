#!/usr/bin/env python3
"""Checks scripts/experiment.py's resume logic in a second, with a stand-in for
ddepc that only records its calls and writes the files a run would leave.

    python3 tools/test_experiment_resume.py
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STUB = r'''#!/usr/bin/env python3
import json, os, sys
a = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(" ".join(a) + "\n")
def opt(name):
    return a[a.index(name) + 1]
if a[0] == "train":
    steps = int(opt("--steps"))
    ck = os.path.join(opt("--out"), "checkpoints")
    os.makedirs(ck, exist_ok=True)
    open(os.path.join(ck, "step-%08d.safetensors" % steps), "w").close()
elif a[0] == "eval":
    names = ["background", "csf_other", "grey_matter", "white_matter"]
    json.dump({"mIoU": 0.5 + 0.01 * len(a[1]) % 7 / 100,
               "per_class": [{"name": n, "accuracy": 0.5} for n in names]}, open(opt("--json"), "w"))
'''


def main():
    with tempfile.TemporaryDirectory() as tmp:
        stub = os.path.join(tmp, "ddepc")
        with open(stub, "w") as f:
            f.write(STUB)
        os.chmod(stub, 0o755)
        d = os.path.join(tmp, "exp")
        for sub in ("photos", "tissue", "vgg.ddepc"):
            os.makedirs(os.path.join(d, sub))
        open(os.path.join(d, "hed-enc.safetensors"), "w").close()
        logf = os.path.join(tmp, "calls.log")
        env = dict(os.environ, STUB_LOG=logf)

        def experiment():
            open(logf, "w").close()
            r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "experiment.py"), "--quick", "--dir", d,
                                "--ddepc", stub], env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
            return [line.split() for line in open(logf)]

        first = experiment()
        trains = [c for c in first if c[0] == "train"]
        evals = [c for c in first if c[0] == "eval"]
        assert len(evals) > 0 and len([c for c in trains if "finetune" in c]) == len(evals), (len(trains), len(evals))
        for f in ("table.txt", "claims.txt", "miou_vs_fraction.svg", "miou_vs_sigma.svg"):
            assert os.path.isfile(os.path.join(d, f)), f
        assert experiment() == [], "a finished experiment must run nothing again"

        # A lost fine-tuning result is redone alone; an unfinished pretraining run is resumed.
        ft = os.path.join(d, "finetune")
        victim = sorted(os.listdir(ft))[0]
        if not os.path.isdir(os.path.join(ft, victim)):
            victim = sorted(x for x in os.listdir(ft) if os.path.isdir(os.path.join(ft, x)))[0]
        os.remove(os.path.join(ft, victim, "eval.json"))
        ck = os.path.join(d, "pretrain", "ddep-x", "checkpoints")
        for f in os.listdir(ck):
            os.remove(os.path.join(ck, f))
        open(os.path.join(ck, "step-00000050.safetensors"), "w").close()
        third = experiment()
        kinds = sorted((c[0], "finetune" in c, "--resume" in c) for c in third)
        assert kinds == [("eval", False, False), ("train", False, True), ("train", True, False)], kinds
    print("experiment resume: ok")


if __name__ == "__main__":
    main()
