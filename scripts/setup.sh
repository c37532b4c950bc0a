#!/usr/bin/env bash
# Create (or update) the project environment at .venv: visionlens with its dev extras, every
# research system in systems/ (each its own distribution, editable, with its extras), the pinned
# torch/torchvision from constraints.txt, and the offline assets (weights, sample photos).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]" \
    -e "systems/sata[dev]" -e "systems/adapt[digits,dev]" -e "systems/hsi[dev]" -e "systems/refer[segments,dev]"
.venv/bin/visionlens fetch
