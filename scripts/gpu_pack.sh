#!/usr/bin/env bash
# Prepare .gpu/ for scripts/gpu_checks.sh on a lent CUDA machine, which reaches no package registry:
#   .gpu/wheels  pytorch-grad-cam (the speed anchor) and ttach, pure-Python wheels built here;
#   .gpu/home    the offline assets the CUDA tests load (MobileNetV2 weights, sample photos);
#   .gpu/photos  8 ImageNet photos for NAFlow's speed (from PHOTOS, default ../shared/data/imagenet-sample;
#                without them the benchmark times random inputs and says so).
# .gpu/ is ignored by git, so name it in the device call's carry. Usage: bash scripts/gpu_pack.sh [PHOTOS]
set -euo pipefail
cd "$(dirname "$0")/.."
photos=${1:-../shared/data/imagenet-sample}
if [ ! -x .venv/bin/python ]; then
    echo "error: .venv is missing: run 'bash scripts/setup.sh' first" >&2
    exit 2
fi
staging=$(mktemp -d "$PWD/.gpu.XXXXXX")  # filled completely, then renamed: no half-written .gpu/
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/wheels" "$staging/home" "$staging/photos"
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$staging/wheels" grad-cam==1.5.7 ttach==0.0.3
VISIONLENS_HOME="$staging/home" .venv/bin/visionlens fetch mobilenet_v2 samples
if [ -d "$photos" ]; then
    find "$photos" -maxdepth 1 -name '*.JPEG' | sort | head -n 8 | while read -r f; do cp "$f" "$staging/photos/"; done
fi
echo "$(ls "$staging/photos" | wc -l) photos for NAFlow's speed (from $photos)"
rm -rf .gpu
mv "$staging" .gpu
trap - EXIT
du -sh .gpu
