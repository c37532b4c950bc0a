"""`visionlens bank`: --out checked by a probe before any work, --quiet."""

import sys

import pytest

from visionlens.cli import main

from helpers import one_error_line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_bank_refuses_an_unwritable_out_before_any_work(capsys, monkeypatch):
    import visionlens.models

    monkeypatch.setattr(visionlens.models, "load_model", lambda *a, **k: pytest.fail("work began"))
    assert main(["bank", "--n", "3000", "--device", "cpu", "--out", "/proc/vlx.pt"]) == 2
    one_error_line(capsys.readouterr().err, "--out /proc/vlx.pt", "cannot write")


def test_bank_has_quiet(tmp_path, capsys):
    assert main(["bank", "--n", "8", "--device", "cpu", "--quiet", "--out", str(tmp_path / "b.pt")]) == 0
    assert (tmp_path / "b.pt").is_file()
