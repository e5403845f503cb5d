#!/usr/bin/env python3
"""Summarize fine-tuning results: mean, std and min-max of mIoU and per-class
accuracy over seeds, as a text table and SVG line plots with error bars.

Input: a TSV file with one line per evaluated run and a header line
    group<TAB>x<TAB>seed<TAB>eval_json
where `group` names a line of the plot (e.g. "random decoder"), `x` is its
position on the horizontal axis (a label fraction such as 5%, or a sigma) and
`eval_json` is the file `ddepc eval --json` wrote.

    python3 tools/summarize_runs.py RESULTS.tsv --table T.txt --svg P.svg \
        --title "mIoU against label fraction" --xlabel "labeled images"

Only the Python standard library is needed.
"""
import argparse
import csv
import json
import math
import os
import sys


def fail(message):
    print(f"summarize_runs: error: {message}", file=sys.stderr)
    sys.exit(1)


def x_value(x):
    x = x.strip()
    try:
        if x.endswith("%"):
            return float(x[:-1]) / 100
        if "/" in x:
            a, b = x.split("/")
            return float(a) / float(b)
        return float(x)
    except ValueError:
        fail(f"x value '{x}' is not a number, a percentage or a fraction")


def stats(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, min(values), max(values)


def load(path):
    rows = []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            for key in ("group", "x", "seed", "eval_json"):
                if key not in (reader.fieldnames or []):
                    fail(f"{path}: header must name group, x, seed, eval_json (tab-separated); it has {reader.fieldnames}")
            for line, r in enumerate(reader, start=2):
                try:
                    with open(r["eval_json"]) as g:
                        ev = json.load(g)
                except (OSError, json.JSONDecodeError) as e:
                    fail(f"{path}:{line}: cannot read {r['eval_json']}: {e}")
                per_class = {c["name"]: c["accuracy"] for c in ev["per_class"]}
                rows.append({"group": r["group"], "x": r["x"], "seed": r["seed"], "miou": 100 * ev["mIoU"],
                             "acc": {k: (100 * v if v is not None else float("nan")) for k, v in per_class.items()}})
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    if not rows:
        fail(f"{path} lists no runs")
    return rows


def summarize(rows):
    groups = list(dict.fromkeys(r["group"] for r in rows))
    xs = sorted(dict.fromkeys(r["x"] for r in rows), key=x_value)
    classes = list(dict.fromkeys(k for r in rows for k in r["acc"]))
    cells = {}
    for g in groups:
        for x in xs:
            sel = [r for r in rows if r["group"] == g and r["x"] == x]
            if sel:
                cells[g, x] = {"n": len(sel), "seeds": sorted(r["seed"] for r in sel),
                               "miou": stats([r["miou"] for r in sel]),
                               "acc": {c: stats([r["acc"].get(c, float("nan")) for r in sel]) for c in classes}}
    return groups, xs, classes, cells


def table(groups, xs, classes, cells, xname):
    short = [c[:12] for c in classes]
    head = f"{xname:<10} {'start':<22} {'n':>2}  {'mIoU % mean ± std':<18} {'min–max':<12} " + " ".join(f"{s:>12}" for s in short)
    lines = [head, "-" * len(head)]
    for x in xs:
        for g in groups:
            c = cells.get((g, x))
            if not c:
                continue
            m, s, lo, hi = c["miou"]
            accs = " ".join(f"{c['acc'][k][0]:>12.1f}" for k in classes)
            lines.append(f"{x:<10} {g:<22} {c['n']:>2}  {m:5.1f} ± {s:<4.1f}       {lo:4.1f}–{hi:<4.1f}    {accs}")
    lines.append("")
    lines.append("Per-class columns: mean pixel accuracy (%) of each class over the seeds (recall of that class).")
    return "\n".join(lines)


def svg(groups, xs, cells, title, xlabel, ylabel="mIoU (%)"):
    W, H, L, R, T, B = 560, 360, 64, 170, 40, 56
    pw, ph = W - L - R, H - T - B
    lows = [c["miou"][0] - c["miou"][1] for c in cells.values()]
    highs = [c["miou"][0] + c["miou"][1] for c in cells.values()]
    y0, y1 = math.floor(min(lows) - 1), math.ceil(max(highs) + 1)
    if y1 - y0 < 4:
        y0, y1 = y0 - 2, y1 + 2
    px = {x: L + (pw * (i + 0.5) / len(xs)) for i, x in enumerate(xs)}  # categorical axis, in order

    def py(v):
        return T + ph * (1 - (v - y0) / (y1 - y0))

    colors = ["#888888", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L + pw / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T + ph}" stroke="black"/>',
           f'<text x="{L + pw / 2}" y="{H - 14}" text-anchor="middle">{xlabel}</text>',
           f'<text x="16" y="{T + ph / 2}" text-anchor="middle" transform="rotate(-90 16 {T + ph / 2})">{ylabel}</text>']
    step = max(1, round((y1 - y0) / 6))
    v = y0
    while v <= y1:
        out.append(f'<line x1="{L - 4}" y1="{py(v):.1f}" x2="{L + pw}" y2="{py(v):.1f}" stroke="#eeeeee"/>')
        out.append(f'<text x="{L - 8}" y="{py(v) + 4:.1f}" text-anchor="end">{v}</text>')
        v += step
    for x in xs:
        out.append(f'<text x="{px[x]:.1f}" y="{T + ph + 18}" text-anchor="middle">{x}</text>')
    for gi, g in enumerate(groups):
        col = colors[gi % len(colors)]
        off = (gi - (len(groups) - 1) / 2) * 6  # keep error bars apart
        pts = [(px[x] + off, cells[g, x]) for x in xs if (g, x) in cells]
        if not pts:
            continue
        out.append(f'<polyline fill="none" stroke="{col}" stroke-width="2" points="' +
                   " ".join(f"{X:.1f},{py(c['miou'][0]):.1f}" for X, c in pts) + '"/>')
        for X, c in pts:
            m, s = c["miou"][0], c["miou"][1]
            out.append(f'<line x1="{X:.1f}" y1="{py(m - s):.1f}" x2="{X:.1f}" y2="{py(m + s):.1f}" stroke="{col}"/>')
            for yy in (m - s, m + s):
                out.append(f'<line x1="{X - 4:.1f}" y1="{py(yy):.1f}" x2="{X + 4:.1f}" y2="{py(yy):.1f}" stroke="{col}"/>')
            out.append(f'<circle cx="{X:.1f}" cy="{py(m):.1f}" r="3" fill="{col}"/>')
        ly = T + 10 + 20 * gi
        out.append(f'<line x1="{L + pw + 14}" y1="{ly}" x2="{L + pw + 34}" y2="{ly}" stroke="{col}" stroke-width="2"/>')
        out.append(f'<text x="{L + pw + 40}" y="{ly + 4}">{g}</text>')
    out.append(f'<text x="{L + pw + 14}" y="{T + 10 + 20 * len(groups) + 6}" font-size="10">error bars: ± 1 std over seeds</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="TSV: group, x, seed, eval_json")
    p.add_argument("--table", help="write the table here as well as printing it")
    p.add_argument("--svg", help="write the plot here")
    p.add_argument("--title", default="mIoU against label fraction")
    p.add_argument("--xlabel", default="label fraction")
    p.add_argument("--xname", default="labels", help="header of the x column in the table")
    a = p.parse_args()
    groups, xs, classes, cells = summarize(load(a.results))
    text = table(groups, xs, classes, cells, a.xname)
    print(text)
    if a.table:
        with open(a.table, "w") as f:
            f.write(text + "\n")
    if a.svg:
        with open(a.svg, "w") as f:
            f.write(svg(groups, xs, cells, a.title, a.xlabel))


if __name__ == "__main__":
    main()
