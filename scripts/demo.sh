#!/usr/bin/env bash
# README command 1: set everything up, then explain the sample photos with every zoo model and
# write the HTML page of overlays to ${1:-visionlens-demo}/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/visionlens demo --out "${1:-visionlens-demo}"
