#!/usr/bin/env bash
# ddepc's compiled steps against the same models in PyTorch, side by side.
#
#   benchmarks/compare.sh [--llvm] [--calls K] [--threads T] [--memory-budget MB]
#                         [--isa avx2] [--tune] MODEL [BATCH SIZE] [ROUNDS]
#
# MODEL: unet-r18, transunet or transunet-ddep-1x. BATCH (default 8), SIZE
# (default 128), ROUNDS (default 3).
#
#   1. compiles the ddepc artifact with --batch/--size (C backend; with
#      --llvm also the LLVM backend; with --memory-budget, passed on to
#      `ddepc compile`, which then recomputes some convolutions and matmuls
#      to bring each training step's arena within MB; with --tune, `ddepc
#      tune` first measures the convolution algorithms on this machine at
#      the same ISA and thread count, and the compile follows its table);
#   2. runs `ddepc bench` and benchmarks/pytorch_reference.py interleaved,
#      A B A B, for ROUNDS rounds (two-thread timings swing with what else
#      shares the cores: only interleaved runs compare);
#   3. measures the peak RSS of each training step alone on both sides (a
#      fresh process per step; PyTorch in its fastest variant);
#   4. prints one table (benchmarks/compare_table.py): per entry, ddepc's
#      median (range over rounds), PyTorch's best variant, their ratio, the
#      ISA ddepc measured its peak at, peak RSS and parameter counts.
#
# --isa avx2 holds both sides to AVX2 on an AVX-512 machine, as on the
# AVX2-only machines of this kind: ddepc is built without AVX-512 (into
# .build/avx2, unless DDEPC is set) and compiles and runs with DDEPC_ISA=avx2,
# which keeps its generated code off AVX-512 too; PyTorch runs with
# ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and
# MKL_ENABLE_INSTRUCTIONS=AVX2. On a machine without AVX-512 it changes nothing.
#
# Environment: DDEPC (the ddepc binary; default .build/release/ddepc, built
# with `swift build -c release` first), PYTHON (default python3),
# VARIANTS (PyTorch variants, space-separated; default: eager channels_last
# compile), OUT (where the runs are kept; default out/bench/MODEL-bBATCH-sSIZE).
set -euo pipefail
script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$script")/.."

# The comment block above is the help text.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$script"; exit "${1:-0}"; }

llvm=0
calls=10
threads=2
compile_flags=()
isa=native
tune=0
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in
        --llvm) llvm=1 ;;
        --calls) calls=$2; shift ;;
        --threads) threads=$2; shift ;;
        --memory-budget) compile_flags+=(--memory-budget "$2"); shift ;;
        --isa) isa=$2; shift ;;
        --tune) tune=1 ;;
        -h | --help) usage ;;
        *) echo "unknown option $1" >&2; usage 2 >&2 ;;
    esac
    shift
done
[[ $# -ge 1 && $# -le 4 ]] || usage 2 >&2
model=$1 batch=${2:-8} size=${3:-128} rounds=${4:-3}
case $model in unet-r18 | transunet | transunet-ddep-1x) ;; *) echo "unknown model $model" >&2; usage 2 >&2 ;; esac

case $isa in native | avx2) ;; *) echo "unknown ISA $isa (native or avx2)" >&2; usage 2 >&2 ;; esac

python=${PYTHON:-python3}
read -r -a variants <<< "${VARIANTS:-eager channels_last compile}"
if [[ $isa == avx2 ]]; then
    ddepc=${DDEPC:-.build/avx2/release/ddepc}
    build=(swift build -c release --build-path .build/avx2 -Xcc -mno-avx512f)
    out=${OUT:-out/bench/$model-b$batch-s$size-avx2}
    export DDEPC_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
else
    ddepc=${DDEPC:-.build/release/ddepc}
    build=(swift build -c release)
    out=${OUT:-out/bench/$model-b$batch-s$size}
fi
entries=(infer pretrain_step pretrain_dep_step finetune_step)
training=(pretrain_step pretrain_dep_step finetune_step)

# Built every run unless DDEPC names a binary: a build left from an older
# tree would otherwise be measured as if it were this one (an incremental
# build of an unchanged tree takes seconds).
if [[ -z ${DDEPC:-} ]]; then
    "${build[@]}"
fi
backends=(c)
((llvm)) && backends+=(llvm)

mkdir -p "$out"
rm -f "$out"/ddepc-*.txt "$out"/torch-*.json "$out"/rss-* "$out"/table.txt "$out/$model.conv-costs.json"  # an earlier run's results
if ((tune)); then
    "$ddepc" tune "$model" -o "$out/$model.conv-costs.json" --batch "$batch" --size "$size" --threads "$threads" --isa "$isa"
    compile_flags+=(--conv-costs "$out/$model.conv-costs.json")
fi
for backend in "${backends[@]}"; do
    "$ddepc" compile "$model" -o "$out/$model-$backend.ddepc" --backend "$backend" --batch "$batch" --size "$size" \
        "${compile_flags[@]}"
done

entry_flags=()
for e in "${entries[@]}"; do entry_flags+=(--entry "$e"); done
variant_flags=()
for v in "${variants[@]}"; do variant_flags+=(--variant "$v"); done
torch_bench=("$python" benchmarks/pytorch_reference.py --model "$model" --batch "$batch" --size "$size"
             --threads "$threads" --calls "$calls" --json)

for ((r = 1; r <= rounds; r++)); do
    echo "round $r of $rounds" >&2
    for backend in "${backends[@]}"; do
        "$ddepc" bench "$out/$model-$backend.ddepc" --calls "$calls" --threads "$threads" --isa "$isa" "${entry_flags[@]}" \
            > "$out/ddepc-$backend-$r.txt"
    done
    # The first round also checks the parameter counts against `ddepc inspect`.
    artifact_flag=()
    ((r == 1)) && artifact_flag=(--artifact "$out/$model-c.ddepc")
    DDEPC=$ddepc "${torch_bench[@]}" "${variant_flags[@]}" "${artifact_flag[@]}" > "$out/torch-$r.json"
done

echo "peak RSS per training step" >&2
for e in "${training[@]}"; do
    "$ddepc" bench "$out/$model-c.ddepc" --entry "$e" --calls 2 --threads "$threads" --isa "$isa" > "$out/rss-ddepc-$e.txt"
    best=$("$python" benchmarks/compare_table.py --best-variant "$out" "$e")
    "${torch_bench[@]}" --calls 2 --rss-entry "$e" --variant "$best" > "$out/rss-torch-$e.json"
done

{
    if ((${#compile_flags[@]})); then echo "ddepc compiled with ${compile_flags[*]}"; fi
    if [[ $isa == avx2 ]]; then echo "both sides held to AVX2 (ddepc built without AVX-512, DDEPC_ISA=avx2; PyTorch: ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS)"; fi
    "$python" benchmarks/compare_table.py "$out"
} | tee "$out/table.txt"
