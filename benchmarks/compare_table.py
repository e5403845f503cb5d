#!/usr/bin/env python3
"""Aggregates the files compare.sh writes into one side-by-side table.

    compare_table.py DIR                     print the table
    compare_table.py --best-variant DIR E    print PyTorch's fastest variant for entry E

DIR holds, per round R (1, 2, ...) and ddepc backend B (c, llvm):
    ddepc-B-R.txt          `ddepc bench` output
    torch-R.json           `pytorch_reference.py --json` output
and, for the peak-RSS runs of training entry E:
    rss-ddepc-E.txt        `ddepc bench --entry E` output
    rss-torch-E.json       `pytorch_reference.py --rss-entry E --json` output

Per round each side contributes its median ms per entry; the table shows the
median over rounds with the range (min–max) over rounds. PyTorch's best
variant per entry is the one with the lowest median over rounds. The ratio is
PyTorch best / ddepc: above 1, ddepc is faster. A second ratio compares each
side's fastest round: on a shared host a burst of load can fall on one side's
rounds more than on the other's, and the two ratios together show how much.
"""
import json
import re
import statistics
import sys
from pathlib import Path

BACKENDS = ["c", "llvm"]


def parse_bench(path):
    """`ddepc bench` output → (ISA line, {entry: median ms}, peak RSS MB)."""
    isa, medians, rss = None, {}, None
    in_table = False
    for line in Path(path).read_text().splitlines():
        if line.startswith("fp32 FMA peak:"):
            isa = line.strip()
        elif line.startswith("entry ") and "median ms" in line:
            in_table = True
        elif line.startswith("peak RSS of this process:"):
            rss = float(re.search(r"([\d.]+) MB", line).group(1))
            in_table = False
        elif in_table and line.strip():
            fields = line.split()
            medians[fields[0]] = float(fields[1])
    return isa, medians, rss


def rounds(directory):
    """Round numbers present, ascending."""
    return sorted(int(p.stem.split("-")[1]) for p in Path(directory).glob("torch-*.json"))


def torch_medians(directory):
    """{entry: {variant: [median ms per round]}} and the runs' JSON objects."""
    reports = [json.loads((Path(directory) / f"torch-{r}.json").read_text()) for r in rounds(directory)]
    medians = {}
    for report in reports:
        for result in report["results"]:
            medians.setdefault(result["entry"], {}).setdefault(result["variant"], []).append(result["median_ms"])
    return medians, reports


def best_variant(variants):
    """(variant, [round medians]) with the lowest median over rounds."""
    return min(variants.items(), key=lambda item: statistics.median(item[1]))


def summary(values):
    """median (min–max) over rounds."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def table(directory):
    directory = Path(directory)
    torch_runs, reports = torch_medians(directory)
    first = reports[0]
    backends = [b for b in BACKENDS if (directory / f"ddepc-{b}-1.txt").exists()]
    ddepc = {b: [parse_bench(directory / f"ddepc-{b}-{r}.txt") for r in rounds(directory)] for b in backends}

    print(f"{first['model']}: batch {first['batch']}, {first['size']}×{first['size']}, {first['classes']} classes; "
          f"{len(reports)} round(s) interleaved (ddepc, then PyTorch), {first['calls']} timed calls per entry each")
    if len(reports) < 3:
        print("(fewer than 3 rounds: a smoke test, not a figure to report)")
    for b in backends:
        lines = [isa for isa, _, _ in ddepc[b]]
        peaks = [float(re.search(r"peak: ([\d.]+)", line).group(1)) for line in lines]
        print(f"ddepc {b}: {lines[0]}" + (f"; over rounds {min(peaks):.1f}–{max(peaks):.1f} GFLOP/s" if len(lines) > 1 else ""))
    print(f"PyTorch {first['torch']}: CPU capability {first['cpu_capability']}, {first['threads']} threads")
    print()

    header = f"{'entry':<19}" + "".join(f"{'ddepc ' + b + ' ms (range)':<27}" for b in backends)
    header += f"{'PyTorch best ms (range)':<27}{'variant':<15}" + "".join(f"{'PyTorch/' + b:>14}" for b in backends)
    header += "".join(f"{'fastest rounds/' + b:>20}" for b in backends)
    print(header)
    compile_times = {}
    for entry, variants in torch_runs.items():
        ddepc_rounds = {b: [medians[entry] for _, medians, _ in ddepc[b] if entry in medians] for b in backends}
        variant, best = best_variant(variants)
        row = f"{entry:<19}" + "".join(f"{summary(ddepc_rounds[b]) if ddepc_rounds[b] else '-':<27}" for b in backends)
        row += f"{summary(best):<27}{variant:<15}"
        for b in backends:
            ratio = statistics.median(best) / statistics.median(ddepc_rounds[b]) if ddepc_rounds[b] else None
            row += f"{ratio:14.2f}" if ratio else f"{'-':>14}"
        for b in backends:
            ratio = min(best) / min(ddepc_rounds[b]) if ddepc_rounds[b] else None
            row += f"{ratio:20.2f}" if ratio else f"{'-':>20}"
        print(row)
        compiled = [r["compile_s"] for report in reports for r in report["results"]
                    if r["entry"] == entry and r["variant"] == "compile"]
        if compiled:
            compile_times[entry] = statistics.median(compiled)
    if compile_times:
        print("torch.compile: first call, compilation included (median over rounds; not in the step times): "
              + ", ".join(f"{e} {s:.1f} s" for e, s in compile_times.items()))

    rss_entries = [e for e in torch_runs if (directory / f"rss-torch-{e}.json").exists()]
    if rss_entries:
        print()
        print(f"{'peak RSS MB':<19}{'ddepc c':>10}  {'PyTorch':>10}  (variant; PyTorch before the step)")
        for entry in rss_entries:
            _, _, ddepc_rss = parse_bench(directory / f"rss-ddepc-{entry}.txt")
            result = json.loads((directory / f"rss-torch-{entry}.json").read_text())["results"][0]
            print(f"{entry:<19}{ddepc_rss:10.1f}  {result['peak_rss_mb']:10.1f}  "
                  f"({result['variant']}; {result['baseline_rss_mb']:.1f})")

    if first.get("ddepc_parameters"):
        print()
        print(f"{'parameters':<19}{'ddepc inspect':<36}{'PyTorch':<36}")
        for entry, counts in first["parameters"].items():
            theirs = first["ddepc_parameters"].get(entry, {})

            def text(c):
                return ", ".join(f"{role} {n}" for role, n in c.items()) or "-"
            print(f"{entry:<19}{text(theirs):<36}{text(counts):<36}{'same' if theirs == counts else 'DIFFERENT'}")


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "--best-variant":
        variants = torch_medians(args[1])[0].get(args[2])
        if not variants:
            sys.exit(f"no PyTorch timings of {args[2]} in {args[1]}")
        print(best_variant(variants)[0])
    elif len(args) == 1:
        table(args[0])
    else:
        sys.exit(__doc__.split("\n\n")[1])


if __name__ == "__main__":
    main()
