"""NAFlow's speed work (issue 29): explain's blank probe checks layers and targets without the
least-squares solves, and keeps its one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import visionlens
from visionlens.errors import LayerError
from visionlens.methods.naflow import inverse

from helpers import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


def _count_solves(monkeypatch) -> list[int]:
    calls: list[int] = []
    solve = inverse.lsmr_solve

    def counted(*args, **kwargs):
        calls.append(1)
        return solve(*args, **kwargs)

    monkeypatch.setattr(inverse, "lsmr_solve", counted)
    return calls


def test_probe_resolves_the_flow_layers_without_solving(monkeypatch):
    zoo = visionlens.load_model("world-cnn")
    method = visionlens.NAFlow(zoo.module, max_iter=5)
    x = torch.zeros(1, 3, zoo.preprocess.crop, zoo.preprocess.crop)
    calls = _count_solves(monkeypatch)
    probed = method.probe(x)
    assert calls == [] and probed.solves == ()
    full = method(x)
    assert len(calls) == len(full.solves) > 0
    assert probed.flow_layers == full.flow_layers and probed.layer == full.layer
    assert probed.flow.shape == full.flow.shape
    assert method.options.mode == "lsmr"  # the probe leaves the solver as it was


def test_explain_solves_only_for_the_images_and_keeps_early_layer_errors(tmp_path, monkeypatch, capsys):
    from visionlens.cli import main
    from visionlens.pipeline import explain_files

    zoo = visionlens.load_model("world-cnn")
    rng = np.random.default_rng(0)
    photo = tmp_path / "a.png"
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(photo)
    x = zoo.preprocess(Image.open(photo).convert("RGB"))[None]
    calls = _count_solves(monkeypatch)
    per_image = len(visionlens.NAFlow(zoo.module, max_iter=5)(x).solves)
    calls.clear()
    explain_files([photo], zoo, ["naflow"], out_dir=tmp_path / "out", progress=False, max_iter=5)
    assert len(calls) == per_image > 0  # before: twice as many (the blank probe solved every layer too)
    with pytest.raises(LayerError):
        explain_files([photo], zoo, ["naflow@no.such.layer"], out_dir=tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    code = main(["explain", str(photo), "--model", "world-cnn", "--method", "naflow@no.such.layer",
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "cli")])
    assert code == 2
    one_error_line(capsys.readouterr().err, "no.such.layer")
