#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): set up .venv, then run the whole test suite.
# VISIONLENS_REQUIRE_ASSETS=1 turns "weights missing" from a skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VISIONLENS_REQUIRE_ASSETS=1 .venv/bin/python -m pytest -q "$@"
