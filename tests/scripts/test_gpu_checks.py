"""scripts/gpu_checks.sh, the one prepared run for a lent GPU, works before device time is spent on
it: its --smoke mode runs every step on the CPU at the smallest settings, and bad use exits 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_checks.sh"


def run_script(script: Path, *args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.usefixtures("mobilenet")  # the smoke run explains the zoo's MobileNetV2
def test_smoke_runs_every_step_on_the_cpu(tmp_path):
    done = run_script(SCRIPT, "--smoke", out=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    log = (tmp_path / "gpu-checks.log").read_text()
    for step in ("device", "CUDA tests (skipped without CUDA)", "NAFlow speed", "perturbation floor"):
        assert f"=== {step}: exit 0" in log, step
    assert "mobilenet_v2 batch 1 damp 0.1" in log  # NAFlow's timing line
    assert "scorecam" in log and "ablationcam" in log and "ours/floor" in log
    assert log.rstrip().splitlines()[-1].startswith("gpu checks: all steps passed")


def test_bad_flag_exits_2_before_any_step(tmp_path):
    done = run_script(SCRIPT, "--fast", out=tmp_path)
    assert done.returncode == 2 and "usage: bash scripts/gpu_checks.sh [--smoke]" in done.stderr
    assert not (tmp_path / "gpu-checks.log").exists()


def test_a_gpu_run_without_the_prepared_folder_says_how_to_make_it(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, checkout / "scripts")
    done = run_script(checkout / "scripts" / "gpu_checks.sh", out=tmp_path / "out")
    assert done.returncode == 2
    assert not (tmp_path / "out").exists()
    assert done.stderr.strip() == "error: .gpu/ is missing: run 'bash scripts/gpu_pack.sh' here and name .gpu in carry"
