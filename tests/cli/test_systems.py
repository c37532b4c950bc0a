"""The research systems are distributions of their own (systems/): their commands come through the
`visionlens.commands` entry points, a missing one is a one-line pointer, and the core wheel holds
none of their code or weights."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from pathlib import Path

import pytest

import visionlens.cli as cli
from helpers import one_error_line

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PACKAGES = ("robust", "adapt", "hsi", "refer")  # where the systems used to live in the core
ARGV = {  # a command line each system would accept
    "sata": ["sata", "evaluate", "--out", "table.md"],
    "adapt": ["adapt", "--data", "world"],
    "hsi-cd": ["hsi-cd", "--help"],
    "refer": ["refer", "synthetic:test:5"],
    "pose": ["pose", "synth", "--n", "2"],
}


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-")


@pytest.mark.parametrize("command", sorted(cli.SYSTEM_COMMANDS))
def test_missing_system_is_one_error_line(command, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but never into the repository
    monkeypatch.setattr(cli, "_installed_commands", lambda: {})
    assert cli.main(ARGV[command]) == cli.EXIT_USAGE
    line = one_error_line(capsys.readouterr().err)
    dist = cli.SYSTEM_COMMANDS[command]
    assert f"visionlens {command}" in line and f"pip install {dist}" in line


@pytest.mark.parametrize("command", sorted(cli.SYSTEM_COMMANDS))
def test_system_command_comes_from_its_entry_point(command, capsys):
    dist = cli.SYSTEM_COMMANDS[command]
    try:
        distribution(dist)
    except PackageNotFoundError:
        pytest.skip(f"{dist} is not installed")
    found = {ep.name: ep for ep in entry_points(group=cli.COMMAND_GROUP)}
    assert command in found, f"{dist} declares no {cli.COMMAND_GROUP} entry point {command!r}"
    assert _normalise(found[command].dist.name) == dist
    parser = cli.OneLineParser(prog="visionlens")
    sub = parser.add_subparsers(dest="command")
    found[command].load()(sub)
    assert set(sub.choices) == {command}  # register() adds exactly its own command
    assert cli.main([command, "--help"]) == 0  # the system's own parser, not the "not installed" pointer
    assert capsys.readouterr().out.startswith(f"usage: visionlens {command}")


def _core_wheel(tmp_path: Path) -> zipfile.ZipFile:
    """Build the core wheel from a clean copy of the repository's core (no build/ or egg-info left over)."""
    src = tmp_path / "core"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--disable-pip-version-check", "-w", str(out), str(src)], check=True, capture_output=True)
    (wheel,) = out.glob("visionlens-*.whl")
    return zipfile.ZipFile(wheel)


def _in_a_system(name: str) -> bool:
    parts = name.split("/")
    return parts[0].startswith("visionlens_") or (parts[0] == "visionlens" and parts[1] in SYSTEM_PACKAGES)


def test_core_wheel_contains_no_system(tmp_path):
    names = _core_wheel(tmp_path).namelist()
    assert "visionlens/cli.py" in names and "visionlens/models/imagenet_classes.json" in names
    assert any(n.startswith("visionlens/models/world_weights/") and n.endswith(".pt") for n in names)
    systems = [n for n in names if _in_a_system(n)]
    assert not systems, systems
    weights = [n for n in names if n.endswith(".pt") and not n.startswith("visionlens/models/world_weights/")]
    assert not weights, weights
