#!/usr/bin/env bash
# Installs the system packages ddepc builds against (Debian/Ubuntu), plus any
# extra packages named on the command line (the demo's data sets).
set -euo pipefail
packages=(llvm-dev libopenblas-dev libpng-dev zlib1g-dev libjpeg-dev libopenmpi-dev openmpi-bin "$@")
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi
