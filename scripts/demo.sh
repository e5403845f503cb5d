#!/usr/bin/env bash
# The main job: a miniature of the DDeP experiment on CPU, offline.
#
#   1. install what is missing (system libraries, OpenCV's sample photos,
#      Fashion-MNIST) and build ddepc;
#   2. pretrain a small U-Net's encoder by classifying Fashion-MNIST;
#   3. pretrain its decoder by denoising (DDeP, encoder frozen) on real photos
#      (OpenCV's samples plus the bundled Examples/data/images);
#   4. fine-tune on scenes composed from Fashion-MNIST objects (exact masks)
#      at two label fractions, once from a random decoder and once from the
#      DDeP decoder, and print their mIoU on held-out scenes.
#
# Everything goes to out/demo/. DEMO_STEPS scales every phase (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${DEMO_STEPS:-1}"
steps() { echo $(( $1 * scale )); }

scripts/install-deps.sh opencv-doc dataset-fashion-mnist
swift build -c release
ddepc="$(swift build -c release --show-bin-path)/ddepc"
out=out/demo
rm -rf "$out"
mkdir -p "$out/photos"

# Unlabeled real photos for denoising pretraining.
cp /usr/share/doc/opencv-doc/examples/data/*.jpg "$out/photos/"
cp Examples/data/images/*.png "$out/photos/"

# Labeled scenes: train from Fashion-MNIST's training split, val from its test split.
"$ddepc" make-scenes -o "$out/scenes/train" --count 600 --size 64 --seed 1
"$ddepc" make-scenes -o "$out/scenes/val" --count 150 --size 64 --seed 2 --split test

"$ddepc" compile Examples/unet.swift -o "$out/unet.ddepc" --batch 8 --size 64 --classes 11 --image-classes 10

"$ddepc" train "$out/unet.ddepc" --mode classify --data /usr/share/datasets/fashion-mnist \
    --steps "$(steps 400)" --lr 2e-3 --warmup 20 --seed 1 --out "$out/classify"
"$ddepc" train "$out/unet.ddepc" --mode ddep --images "$out/photos" --init "$out/classify" \
    --steps "$(steps 400)" --lr 2e-3 --warmup 20 --seed 1 --out "$out/ddep"

results=()
for fraction in 5% 25%; do
    for start in classify ddep; do
        run="$out/finetune-${fraction%\%}-$start"
        "$ddepc" train "$out/unet.ddepc" --mode finetune --data "$out/scenes" --label-fraction "$fraction" \
            --init "$out/$start" --steps "$(steps 300)" --lr 2e-3 --warmup 20 --seed 1 --out "$run"
        "$ddepc" eval "$run" --data "$out/scenes" --split val --json "$run/eval.json" > "$run/eval.txt"
        miou=$(grep -o '"mIoU" *: *[0-9.eE+-]*' "$run/eval.json" | grep -o '[0-9.eE+-]*$')
        results+=("$fraction $start $miou")
    done
done

echo
echo "mIoU (%) on 150 held-out scenes, 11 classes; encoder pretrained by classification in both"
printf "%-16s %-22s %-22s\n" "labels" "random decoder" "DDeP decoder"
for fraction in 5% 25%; do
    random=$(printf "%s\n" "${results[@]}" | awk -v f="$fraction" '$1 == f && $2 == "classify" { printf "%.1f", 100 * $3 }')
    ddep=$(printf "%s\n" "${results[@]}" | awk -v f="$fraction" '$1 == f && $2 == "ddep" { printf "%.1f", 100 * $3 }')
    printf "%-16s %-22s %-22s\n" "$fraction of 600" "$random" "$ddep"
done
