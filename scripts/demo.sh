#!/usr/bin/env bash
# The main job on the bundled data: install what is missing, build, compile
# the example U-Net, and pretrain its decoder by denoising (DDeP) on the
# bundled photos. Results go to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release
bin="$(swift build -c release --show-bin-path)"
"$bin/ddepc" compile Examples/unet.swift -o out/unet.ddepc --batch 4 --size 64
"$bin/ddepc" train out/unet.ddepc --mode ddep --images Examples/data/images --steps 30 --seed 1 --out out/run
