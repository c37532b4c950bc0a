"""The authors' released checkpoint (reference key names and shapes) and the multi-seed table on .mat data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import one_error_line
from visionlens.cli import main
from visionlens.errors import InputError
from visionlens_hsi.data import PatchPairs
from visionlens_hsi.kan import uniform_knots
from visionlens_hsi.official import build_from_official, convert_official_state, official_shapes
from visionlens_hsi.synthetic import SyntheticConfig, make_scene

pytestmark = pytest.mark.usefixtures("one_thread")

# The hand-written map, written out once more independently of the module: reference key -> ours.
HAND_MAP = {
    "layer1.layers.0.base_weight": "spatial.0.base_weight", "layer1.layers.0.spline_weight": "spatial.0.spline_weight",
    "layer1.layers.0.spline_scaler": "spatial.0.spline_scaler", "layer1.layers.0.grid": "spatial.0.knots",
    "layer1.layers.1.base_weight": "spatial.1.base_weight", "layer1.layers.1.spline_weight": "spatial.1.spline_weight",
    "layer1.layers.1.spline_scaler": "spatial.1.spline_scaler", "layer1.layers.1.grid": "spatial.1.knots",
    "layer2.layers.0.base_weight": "channel.0.base_weight", "layer2.layers.0.spline_weight": "channel.0.spline_weight",
    "layer2.layers.0.spline_scaler": "channel.0.spline_scaler", "layer2.layers.0.grid": "channel.0.knots",
}


def reference_state(bands: int, seed: int = 0) -> dict:
    """A state dict with the reference code's names and shapes (those of the released file at 224 bands),
    random values and the uniform grid the reference layers start from."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(bands).items():
        if key.endswith(".grid"):
            state[key] = uniform_knots().expand(shape[0], -1).clone()
        else:
            state[key] = torch.rand(shape, generator=generator) - 0.5
    return state


def reference_forward(state: dict, diff: torch.Tensor) -> torch.Tensor:
    """The reference model by hand: WKAN layers on (batch*bands, 25), then on (batch, bands); scipy's basis."""
    from scipy.interpolate import BSpline

    def wkan(x, stem):
        knots = state[stem + "grid"][0].double().numpy()
        values = x.double().numpy()
        basis = np.stack([np.nan_to_num(BSpline.basis_element(knots[r:r + 5], extrapolate=False)(values))
                          for r in range(len(knots) - 4)], -1)       # B_r, zero outside its support
        phi = (torch.from_numpy(basis).float() * state[stem + "spline_weight"]).sum(-1)
        return F.silu(x) @ state[stem + "base_weight"].T + phi @ state[stem + "spline_scaler"].T

    b, bands, area = diff.shape
    x = diff.reshape(b * bands, area)
    x = wkan(wkan(x, "layer1.layers.0."), "layer1.layers.1.").reshape(b, bands)
    return wkan(x, "layer2.layers.0.")


def test_every_reference_tensor_lands_where_the_hand_map_says():
    state = reference_state(224)
    assert set(state) == set(HAND_MAP)
    ours, bands, patch = convert_official_state(state)
    assert (bands, patch) == (224, 5) and set(ours) == set(HAND_MAP.values())
    for key, target in HAND_MAP.items():
        got = ours[target]
        if key.endswith(".grid"):
            assert torch.equal(got, uniform_knots())
        elif key.endswith(".spline_weight"):
            assert torch.equal(got, state[key][0])
        elif key.startswith("layer2."):                                # class rows swapped: ours 1 = changed
            assert torch.equal(got, state[key][[1, 0]])
        else:
            assert torch.equal(got, state[key])
    model = build_from_official(state)
    assert sum(p.numel() for p in model.parameters()) == 3848          # config b at 224 bands


def test_converted_model_equals_the_reference_forward_on_a_synthetic_cube():
    pytest.importorskip("scipy.interpolate")
    scene = make_scene(SyntheticConfig(size=16, bands=12), seed=3)
    state = reference_state(12, seed=1)
    model = build_from_official(state)
    pairs = PatchPairs(scene, 5)
    positions = np.argwhere(np.ones(scene.labels.shape, dtype=bool))
    x = pairs.patches(positions[:, 0], positions[:, 1])
    with torch.no_grad():
        ours = model(x)
        expected = reference_forward(state, x[:, 0] - x[:, 1])
    assert expected.abs().max() > 0.1
    assert torch.allclose(ours[:, [1, 0]], expected, atol=1e-4, rtol=1e-4), (ours[:, [1, 0]] - expected).abs().max()


def test_bad_reference_checkpoints_are_one_line(tmp_path, capsys):
    state = reference_state(12)
    state.pop("layer1.layers.1.spline_scaler")
    state["layer3.layers.0.base_weight"] = torch.zeros(2, 2)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    assert main(["hsi-cd", "eval", "--checkpoint", str(path), "--size", "16", "--bands", "12", "--data", "synthetic"]) == 2
    one_error_line(capsys.readouterr().err, "missing layer1.layers.1.spline_scaler", "unexpected layer3.layers.0.base_weight")
    state = reference_state(12)
    state["layer1.layers.0.grid"] = state["layer1.layers.0.grid"] * 1.5
    with pytest.raises(InputError, match="uniform grid"):
        convert_official_state(state)


def test_cli_scores_and_converts_a_reference_checkpoint(tmp_path, capsys):
    path = tmp_path / "SpectralKAN_ref.pth"
    torch.save(reference_state(12, seed=2), path)
    synthetic = ["--data", "synthetic", "--size", "16", "--bands", "12"]
    assert main(["hsi-cd", "eval", "--checkpoint", str(path)]) == 2
    one_error_line(capsys.readouterr().err, "--data", "--dataset")
    assert main(["hsi-cd", "eval", "--checkpoint", str(path), "--data", "synthetic", "--size", "16", "--bands", "8"]) == 2
    one_error_line(capsys.readouterr().err, "12 bands")
    assert main(["hsi-cd", "eval", "--checkpoint", str(path), *synthetic, "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)
    out = tmp_path / "converted.pt"
    assert main(["hsi-cd", "convert", "--checkpoint", str(path), *synthetic, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["hsi-cd", "eval", "--checkpoint", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert direct["kappa"] == pytest.approx(again["kappa"], abs=1e-9) and direct["params"] == again["params"] == 1304
    size = out.stat().st_size
    assert main(["hsi-cd", "convert", "--checkpoint", str(path), *synthetic, "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "already exists")
    assert out.stat().st_size == size


def write_farmland(folder, bands: int = 6, side: int = 14, seed: int = 0) -> None:
    """A tiny Farmland-layout dataset: farm06.mat (imgh), farm07.mat (imghl), label.mat (label, 1 changed)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    t1 = rng.uniform(0, 1000, (side, side, bands))
    t2 = t1 + rng.normal(0, 5, t1.shape)
    label = np.zeros((side, side), dtype=np.uint8)
    label[3:9, 4:11] = 1
    t2[label == 1] += 400
    savemat(str(folder / "farm06.mat"), {"imgh": t1})
    savemat(str(folder / "farm07.mat"), {"imghl": t2})
    savemat(str(folder / "label.mat"), {"label": label})


def test_train_with_seeds_writes_the_paper_table_on_mat_files(tmp_path, capsys):
    pytest.importorskip("scipy.io")
    write_farmland(tmp_path)
    out = tmp_path / "runs"
    assert main(["hsi-cd", "train", "--seeds", "0,1", "--data", str(tmp_path), "--dataset", "farmland",
                 "--epochs", "3", "--train-fraction", "0.2", "--lr", "0.01", "--threads", "1", "--quiet",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "table.json").read_text())
    assert table["seeds"] == [0, 1] and table["params"] == 1232 and table["base_macs"] > 0
    per_seed = [table["per_seed"][s]["kappa"] for s in ("0", "1")]
    assert table["kappa"]["mean"] == pytest.approx(np.mean(per_seed), abs=1e-9)
    assert table["kappa"]["sd"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-9)
    for seed in (0, 1):
        saved = json.loads((out / f"seed-{seed}" / "metrics.json").read_text())
        assert saved["config"]["seed"] == seed and saved["data"]["dataset"] == "farmland"
        assert table["per_seed"][str(seed)]["oa"] == saved["oa"]
        assert saved["test_wall_s"] > 0 and saved["train_wall_s"] > 0
    markdown = (out / "table.md").read_text()
    assert "| spectralkan-b | farmland | 0,1 |" in markdown and "Kappa" in markdown and "1,232" in markdown
    assert "Kappa" in printed


@pytest.mark.parametrize("extra,names", [(["--seeds", "0,0"], ["--seeds", "twice"]),
                                         (["--seeds", "a,b"], ["--seeds"]),
                                         (["--seeds", "0,1", "--seed", "3"], ["--seed", "--seeds"])])
def test_bad_seed_lists_are_one_line(tmp_path, capsys, extra, names):
    assert main(["hsi-cd", "train", "--size", "16", "--bands", "4", *extra, "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys.readouterr().err, *names)
    assert not (tmp_path / "o").exists()
