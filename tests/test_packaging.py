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


def test_every_string_in_the_sources_is_valid_utf8_for_python_3_13():
    """Python 3.13 compiles docstrings as strict UTF-8: one lone surrogate written as a string escape
    (a docstring that showed ``\\udce9`` with a single backslash) made `visionlens` fail to start there,
    while 3.11 and 3.12 accepted it."""
    import ast

    bad = []
    for path in sorted([*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("systems").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                try:
                    node.value.encode("utf-8")
                except UnicodeEncodeError:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"strings that are not valid UTF-8 (lone surrogates): {bad}"


def test_the_sdist_holds_what_a_build_reads_and_no_tests_that_cannot_run_from_it(tmp_path):
    """The sdist shipped four repository tests (they need docs/, scripts/, systems/) and lacked the
    torch pins, the changelog and the citation."""
    import tarfile

    pytest.importorskip("setuptools")
    project = tmp_path / "core"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md", "CITATION.cff",
                 "constraints.txt"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=SKIP)
    shutil.copytree(ROOT / "tests", project / "tests", ignore=SKIP)
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=project, check=True,
                          capture_output=True, text=True)
    with tarfile.open(tmp_path / "dist" / done.stdout.strip().splitlines()[-1]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"constraints.txt", "CHANGELOG.md", "CITATION.cff", "LICENSE", "src/visionlens/cli.py"} <= names
    assert not any(n.startswith("tests") for n in names)
