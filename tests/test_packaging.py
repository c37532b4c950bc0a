"""The wheels hold every file the code reads at run time: a file missing from package-data would
work from this checkout and fail for a user who installs the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")


def _data_files(package: Path) -> set[str]:
    """The package's files other than Python sources, as paths inside a wheel."""
    return {p.relative_to(package.parent).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts}


def _wheel_members(project: Path, tmp_path: Path) -> set[str]:
    """Build ``project``'s wheel from a copy (the checkout is left as it is) and list its files."""
    pytest.importorskip("setuptools")
    copy = tmp_path / "project"
    shutil.copytree(project, copy, ignore=SKIP)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(copy), "--no-deps", "--no-build-isolation",
                    "--quiet", "--disable-pip-version-check", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_the_core_wheel_holds_its_data_and_type_marker(tmp_path):
    project = tmp_path / "core"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=SKIP)
    package = ROOT / "src" / "visionlens"
    wanted = _data_files(package)
    assert {"visionlens/py.typed", "visionlens/models/imagenet_synsets.json"} <= wanted
    assert any(w.startswith("visionlens/viz/templates/") for w in wanted)
    missing = wanted - _wheel_members(project, tmp_path)
    assert not missing, f"add these to [tool.setuptools.package-data]: {sorted(missing)}"


def test_the_refer_wheel_holds_its_weights_and_prompts(tmp_path):
    project = ROOT / "systems" / "refer"
    wanted = _data_files(project / "src" / "visionlens_refer")
    assert any(w.endswith(".pt") for w in wanted) and "visionlens_refer/lgd/prompts.json" in wanted
    missing = wanted - _wheel_members(project, tmp_path)
    assert not missing, f"add these to systems/refer's package-data: {sorted(missing)}"
