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
# lxt (AttnLRP's authors' library) is the test oracle for AttnLRP, installed the same way: its declared
# dependencies (bitsandbytes, open_clip_torch, accelerate) are not needed by the rules the tests import.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps lxt==2.1
# The documentation site, built with --strict (a broken link or API reference fails) into a temporary
# folder that is removed afterwards: nothing is written into the repository.
site_dir="$(mktemp -d)"
trap 'rm -rf "$site_dir"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --site-dir "$site_dir"
# `visionlens serve`'s browser tests drive Debian's chromium through Playwright (installed by
# setup.sh with the dev extra; no browser download): install chromium when it is missing (as root).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "warning: chromium is missing and this is not root: the serve browser tests will fail" >&2
    fi
fi
VISIONLENS_REQUIRE_ASSETS=1 VISIONLENS_REQUIRE_BROWSER=1 .venv/bin/python -m pytest -q "$@"
