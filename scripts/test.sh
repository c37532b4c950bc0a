#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): set up .venv, then run the whole test suite.
# VISIONLENS_REQUIRE_ASSETS=1 turns "weights missing" from a skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Quantus is a test-only oracle (pointing game) that pip extras cannot express: installed without
# its dependencies, because its opencv-python requirement would put a second cv2 beside grad-cam's
# headless one (and needs libGL); the imports it does need are installed first.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt pandas matplotlib cachetools
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps quantus==0.6.0
VISIONLENS_REQUIRE_ASSETS=1 .venv/bin/python -m pytest -q "$@"
