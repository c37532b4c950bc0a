"""SpectralKAN hyperspectral change detection: basis, layers, parameter counts, data, metrics, training, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import one_error_line
from visionlens.errors import InputError
from visionlens_hsi.data import (CHANGED, DATASETS, UNCHANGED, UNKNOWN, PatchPairs, Scene, load_dataset,
                                 normalize_pair, stratified_split, symmetric_pad)
from visionlens_hsi.kan import (KANLinear, KANStack, WKANLinear, bspline_basis_recursive, cubic_bspline_basis_fast,
                                uniform_knots)
from visionlens_hsi.metrics import scores
from visionlens_hsi.peers import cva_otsu, otsu_threshold
from visionlens_hsi.spectralkan import build_model, formula_parameter_count
from visionlens_hsi.synthetic import SyntheticConfig, make_scene
from visionlens_hsi.train import TrainConfig, run
from visionlens.cli import main

KNOTS = uniform_knots()                        # 12 knots, -2.2 .. 2.2, h = 0.4


pytestmark = pytest.mark.usefixtures("one_thread")


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- B-spline basis --------------------------------------------------------------------------------

def test_fast_basis_equals_recursion_on_extended_grid():
    x = torch.linspace(-2.1, 2.1, 20001)
    ref = bspline_basis_recursive(x, KNOTS)
    fast = cubic_bspline_basis_fast(x, float(KNOTS[0]), 0.4, 8)
    assert ref.shape == fast.shape == (20001, 8)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)
    outside = torch.tensor([-3.0, -2.25, 2.2, 2.5, 7.0])              # zero off the extended grid, like the recursion
    assert cubic_bspline_basis_fast(outside, -2.2, 0.4, 8).abs().max() == 0
    assert bspline_basis_recursive(outside, KNOTS).abs().max() == 0


def test_fast_basis_equals_scipy_design_matrix_on_base_interval():
    interpolate = pytest.importorskip("scipy.interpolate")
    x = np.linspace(-1, 1, 2001)[:-1]
    expected = interpolate.BSpline.design_matrix(x, KNOTS.double().numpy(), 3).toarray()
    fast = cubic_bspline_basis_fast(torch.tensor(x, dtype=torch.float32), -2.2, 0.4, 8).double().numpy()
    ref = bspline_basis_recursive(torch.tensor(x, dtype=torch.float32), KNOTS).double().numpy()
    np.testing.assert_allclose(fast, expected, atol=1e-5)
    np.testing.assert_allclose(ref, expected, atol=1e-5)
    np.testing.assert_allclose(fast.sum(1), 1.0, atol=1e-5)           # partition of unity inside [-1, 1]


@pytest.mark.parametrize("layer", [WKANLinear, KANLinear])
def test_fast_and_recursive_layers_agree_in_value_and_gradient(layer):
    torch.manual_seed(0)
    fast = layer(7, 3, basis="fast")
    slow = layer(7, 3, basis="recursive")
    slow.load_state_dict(fast.state_dict())
    with torch.no_grad():
        fast.spline_weight.normal_()
        slow.spline_weight.copy_(fast.spline_weight)
    x = (torch.rand(64, 7) * 4.2 - 2.1).requires_grad_()
    y_fast, y_slow = fast(x), slow(x)
    assert torch.allclose(y_fast, y_slow, atol=1e-5)
    g_fast = torch.autograd.grad(y_fast.sum(), [x, fast.spline_weight])
    g_slow = torch.autograd.grad(y_slow.sum(), [x, slow.spline_weight])
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, atol=1e-4)


def test_layers_reject_wrong_width():
    with pytest.raises(InputError):
        WKANLinear(4, 2)(torch.zeros(3, 5))


# ---- parameter counts (spec §4.3 formulas and §4.6 numbers) ------------------------------------------

def test_flat_kan_and_wkan_parameter_counts():
    assert count(KANStack([25 * 155, 16, 2], "wkan")) == 155_192
    kan = count(KANStack([25 * 155, 16, 2], "kan"))
    assert kan == 10 * (25 * 155 * 16 + 16 * 2) and round(kan / 1000) == 620   # the paper's 620k
    assert count(WKANLinear(13, 5)) == 2 * 13 * 5 + 8 * 13


@pytest.mark.parametrize("bands,config_d,config_b,mtsf", [
    (155, 7_552, 3_020, 29_280), (198, 9_272, 3_536, None), (154, 7_512, 3_008, None), (224, 10_312, 3_848, None)])
def test_spectralkan_parameter_counts(bands, config_d, config_b, mtsf):
    assert count(build_model("spectralkan-d", bands)) == config_d
    assert count(build_model("spectralkan-b", bands)) == config_b
    if mtsf:
        assert count(build_model("mtsf-kan", bands)) == mtsf
    for name in ("spectralkan-b", "spectralkan-d", "mtsf-kan", "wkan", "dual-branch"):
        model = build_model(name, bands)
        assert formula_parameter_count(model) == count(model)


def test_models_give_two_logits_and_check_shapes():
    x = torch.rand(3, 2, 10, 25)
    for name in ("spectralkan-b", "spectralkan-d", "mtsf-kan", "wkan", "kan", "dual-branch"):
        assert build_model(name, 10)(x).shape == (3, 2)
    with pytest.raises(InputError):
        build_model("spectralkan-b", 10)(torch.rand(3, 10, 25))
    with pytest.raises(InputError):
        build_model("no-such-model", 10)


# ---- data --------------------------------------------------------------------------------------------

def test_symmetric_pad_and_patches_match_numpy():
    rng = np.random.default_rng(0)
    cube = rng.random((6, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(symmetric_pad(cube, 2), np.pad(cube, ((2, 2), (2, 2), (0, 0)), mode="symmetric"))
    scene = Scene(cube, rng.random((6, 7, 3)).astype(np.float32), np.zeros((6, 7), dtype=np.int64))
    pairs = PatchPairs(scene, patch=5)
    a, b = normalize_pair(scene.t1, scene.t2)
    pa, pb = (np.pad(v, ((2, 2), (2, 2), (0, 0)), mode="symmetric") for v in (a, b))
    rows, cols = np.array([0, 3, 5]), np.array([6, 0, 2])
    got = pairs.patches(rows, cols).numpy()
    assert got.shape == (3, 2, 3, 25)
    for k, (r, c) in enumerate(zip(rows, cols)):
        for t, padded in enumerate((pa, pb)):
            naive = padded[r:r + 5, c:c + 5, :].reshape(25, 3).T          # (bands, p*p), row-major window
            np.testing.assert_allclose(got[k, t], naive, atol=1e-7)
    np.testing.assert_allclose(pairs.differences(rows, cols).numpy(), got[:, 0] - got[:, 1], atol=1e-7)


def test_normalisation_is_shared_per_band():
    rng = np.random.default_rng(1)
    t1, t2 = rng.random((5, 5, 4)) * 10, rng.random((5, 5, 4)) * 3 + 20
    a, b = normalize_pair(t1, t2)
    both = np.stack([a, b])
    np.testing.assert_allclose(both.min(axis=(0, 1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(both.max(axis=(0, 1, 2)), 1, atol=1e-6)
    assert a.max() < 0.5 < b.min()                                          # the dates are not scaled separately


def test_stratified_split_counts():
    labels = np.full((60, 50), UNCHANGED)
    labels[:20, :20] = CHANGED                                              # 400 changed
    labels[-5:, :] = UNKNOWN                                                # 250 unknown
    train, test = stratified_split(labels, 0.01, seed=3)
    n_unch = int((labels == UNCHANGED).sum())
    train_classes = labels[train[:, 0], train[:, 1]]
    assert (train_classes == CHANGED).sum() == 4 and (train_classes == UNCHANGED).sum() == n_unch // 100
    assert len(train) + len(test) == int((labels != UNKNOWN).sum())
    assert not set(map(tuple, train)) & set(map(tuple, test))
    again, _ = stratified_split(labels, 0.01, seed=3)
    np.testing.assert_array_equal(train, again)
    with pytest.raises(InputError):
        stratified_split(labels, 0.001, seed=0)                             # no changed pixel left to train on


def _write_layout(folder, name, t1, t2, raw_labels):
    from scipy.io import savemat

    layout, files = DATASETS[name], {}
    for (fname, key), value in ((layout.t1, t1), (layout.t2, t2), (layout.label, raw_labels)):
        files.setdefault(fname, {})[key] = value
    for fname, content in files.items():
        savemat(str(folder / fname), content)


@pytest.mark.parametrize("name", ["farmland", "river", "usa", "bayarea", "barbara"])
def test_loaders_round_trip_generated_mat_files(tmp_path, name):
    pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    t1, t2 = rng.random((9, 8, 5)), rng.random((9, 8, 5))
    layout = DATASETS[name]
    truth = rng.integers(-1 if layout.unchanged == 2 else 0, 2, (9, 8))    # Bay Area / Barbara have unknowns
    code = {CHANGED: layout.changed, UNCHANGED: layout.unchanged, UNKNOWN: 0}
    raw = np.vectorize(code.get)(truth).astype(np.uint8)
    _write_layout(tmp_path, name, t1, t2, raw)
    scene = load_dataset(name, tmp_path)
    np.testing.assert_allclose(scene.t1, t1, rtol=1e-6)
    np.testing.assert_allclose(scene.t2, t2, rtol=1e-6)
    np.testing.assert_array_equal(scene.labels, truth)


def test_bad_mat_files_give_one_line_errors(tmp_path):
    pytest.importorskip("scipy.io")
    from scipy.io import savemat

    savemat(str(tmp_path / "USA_Change_Dataset.mat"), {"T1": np.zeros((4, 4, 3)), "T2": np.zeros((4, 4, 3))})
    with pytest.raises(InputError, match="no variable 'Binary'") as err:
        load_dataset("usa", tmp_path)
    assert "\n" not in str(err.value)
    savemat(str(tmp_path / "USA_Change_Dataset.mat"), {"T1": np.zeros((4, 4, 3)), "T2": np.zeros((4, 5, 3)),
                                                       "Binary": np.zeros((4, 4))})
    with pytest.raises(InputError, match="one shape"):
        load_dataset("usa", tmp_path)
    with pytest.raises(InputError, match="missing file"):
        load_dataset("farmland", tmp_path)
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("indian-pines", tmp_path)


# ---- synthetic data, metrics, peers --------------------------------------------------------------------

def test_generator_is_deterministic_and_has_changes():
    config = SyntheticConfig(size=32, bands=12)
    a, b, c = make_scene(config, 5), make_scene(config, 5), make_scene(config, 6)
    np.testing.assert_array_equal(a.t2, b.t2)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.t1, c.t1)
    assert a.t1.shape == (32, 32, 12) and 0.03 < (a.labels == CHANGED).mean() < 0.5
    with_unknown = make_scene(SyntheticConfig(size=32, bands=12, unknown=0.2), 5)
    assert 0.1 < (with_unknown.labels == UNKNOWN).mean() < 0.3


def test_scores_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.where(rng.random(500) < 0.8, y, 1 - y)
    s = scores(y, p)
    assert s["kappa"] == pytest.approx(metrics.cohen_kappa_score(y, p), abs=1e-12)
    assert s["oa"] == pytest.approx(metrics.accuracy_score(y, p), abs=1e-12)
    assert s["aa"] == pytest.approx(metrics.balanced_accuracy_score(y, p), abs=1e-12)


def test_otsu_matches_skimage():
    filters = pytest.importorskip("skimage.filters")
    x = np.random.default_rng(0).gamma(2.0, size=4000)
    assert otsu_threshold(x) == pytest.approx(filters.threshold_otsu(x))


def test_ci_training_beats_change_vector_analysis():
    """About 400 optimiser steps on a 48x48x32 scene with smooth illumination pseudo-changes."""
    scene = make_scene(SyntheticConfig(size=48, bands=32, shading=0.15), seed=0)
    _, cva = run(scene, TrainConfig(model="cva-otsu", train_fraction=0.1, seed=0))
    _, kan = run(scene, TrainConfig(model="spectralkan-b", epochs=100, lr=0.01, train_fraction=0.1, seed=0))
    assert kan["final_loss"] < 0.5 * kan["first_loss"]
    assert kan["kappa"] > cva["kappa"] + 0.03
    assert kan["params"] == kan["formula_params"] == 2 * 32 * 2 + 8 * 32 + 1160
    np.testing.assert_array_equal(cva_otsu(scene).shape, scene.labels.shape)


# ---- CLI ---------------------------------------------------------------------------------------------

def test_cli_train_eval_map(tmp_path, capsys):
    from visionlens.cli import main

    out = tmp_path / "run"
    assert main(["hsi-cd", "train", "--size", "24", "--bands", "8", "--epochs", "2", "--train-fraction", "0.1",
                 "--threads", "1", "--out", str(out), "--quiet"]) == 0
    for name in ("model.pt", "metrics.json", "change_map.png"):
        assert (out / name).stat().st_size > 0
    assert "Kappa" in capsys.readouterr().out
    assert main(["hsi-cd", "eval", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "e.json")]) == 0
    assert (tmp_path / "e.json").exists()
    assert main(["hsi-cd", "map", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "m.png")]) == 0
    from PIL import Image
    assert Image.open(tmp_path / "m.png").size[0] > 3 * 24


def test_cli_bad_mat_is_one_line_error(tmp_path, capsys):
    pytest.importorskip("scipy.io")
    from scipy.io import savemat

    from visionlens.cli import main

    savemat(str(tmp_path / "USA_Change_Dataset.mat"), {"T1": np.zeros((4, 4, 3))})
    code = main(["hsi-cd", "train", "--data", str(tmp_path), "--dataset", "usa", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error:") and "\n" not in err and "T2" in err
    assert not (tmp_path / "o").exists()


def test_cli_rejects_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    from visionlens.cli import main

    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["hsi-cd", "eval", "--checkpoint", str(bogus)]) == 2
    one_error_line(capsys.readouterr().err, str(bogus), "hsi-cd checkpoint")


def test_boundary_mask_matches_morphology():
    ndimage = pytest.importorskip("scipy.ndimage")
    from visionlens_hsi.metrics import boundary_mask

    labels = np.zeros((20, 20), dtype=np.int64)
    labels[6:13, 5:15] = CHANGED
    changed, box = labels == CHANGED, np.ones((5, 5), dtype=bool)
    expected = (changed & ~ndimage.binary_erosion(changed, box, border_value=1)) | (
        ~changed & ndimage.binary_dilation(changed, box))
    np.testing.assert_array_equal(boundary_mask(labels, 2), expected)


# ---- bad input: one line, exit 2, before any work ------------------------------------------------------

@pytest.mark.parametrize("flag,value", [
    ("--epochs", "0"), ("--lr", "nan"), ("--lr", "0"), ("--lr", "inf"), ("--batch-size", "0"),
    ("--train-fraction", "1"), ("--train-fraction", "nan"), ("--patch", "4"), ("--patch", "0"), ("--patch", "99"),
    ("--size", "3"), ("--size", "1000000"), ("--bands", "1"), ("--threads", "0"), ("--seed", "-1"),
    ("--scene-seed", "-1"), ("--shading", "nan"), ("--shading", "-0.1")])
def test_cli_train_rejects_bad_numbers(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    tiny = ["--size", "16", "--bands", "6", "--epochs", "1", "--train-fraction", "0.2", "--model", "mlp"]  # fast if accepted
    assert main(["hsi-cd", "train", *tiny, flag, value, "--out", str(out), "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, flag)
    assert not out.exists()


def test_cli_eval_and_map_reject_bad_numbers(tmp_path, capsys):
    for command in ("eval", "map"):
        assert main(["hsi-cd", command, "--checkpoint", str(tmp_path / "m.pt"), "--threads", "-2"]) == 2
        one_error_line(capsys.readouterr().err, "--threads")


def test_cli_refuses_an_oversized_synthetic_scene_and_an_unknown_model(tmp_path, capsys):
    assert main(["hsi-cd", "train", "--size", "2048", "--bands", "1024", "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys.readouterr().err, "--size", "--bands")
    assert main(["hsi-cd", "train", "--model", "cva-otsu", "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys.readouterr().err, "--model")
    assert not (tmp_path / "o").exists()


def test_nan_pixel_in_a_mat_cube_is_refused_at_load(tmp_path, capsys):
    pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    t1, t2 = rng.random((9, 8, 5)), rng.random((9, 8, 5))
    t1[4, 3, 2] = np.nan
    t2[0, 0, 0] = np.inf
    _write_layout(tmp_path, "farmland", t1, t2, rng.integers(0, 2, (9, 8)).astype(np.uint8))
    with pytest.raises(InputError, match="1 non-finite"):
        load_dataset("farmland", tmp_path)
    out = tmp_path / "o"
    assert main(["hsi-cd", "train", "--data", str(tmp_path), "--dataset", "farmland", "--out", str(out),
                       "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "farm06.mat", "1 non-finite")
    assert not out.exists()
    with pytest.raises(InputError, match="date t2 holds 1 non-finite"):
        Scene(np.zeros_like(t2), t2, np.zeros((9, 8), dtype=np.int64))


def test_a_non_finite_loss_stops_training():
    from visionlens_hsi.train import create_model, fit

    scene = make_scene(SyntheticConfig(size=16, bands=6), seed=0)
    train_pos, _ = stratified_split(scene.labels, 0.2, 0)
    model = create_model("mlp", scene.bands)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(InputError, match="diverged.*lower --lr") as err:
        fit(model, PatchPairs(scene), train_pos, scene.labels, TrainConfig(model="mlp", epochs=2))
    assert "\n" not in str(err.value)


def test_training_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(make_scene(SyntheticConfig(size=16, bands=6), seed=0), TrainConfig(model="mlp", epochs=1, train_fraction=0.2))
    assert torch.equal(torch.rand(3), expected)


def test_cli_refuses_unsafe_or_non_finite_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["hsi-cd", "train", "--size", "16", "--bands", "6", "--epochs", "1", "--train-fraction", "0.2",
                       "--model", "mlp", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name][0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.pt")
    assert main(["hsi-cd", "eval", "--checkpoint", str(tmp_path / "nan.pt")]) == 2
    one_error_line(capsys.readouterr().err, "nan.pt", name, "NaN")
    torch.save({**checkpoint, "hook": _Evil()}, tmp_path / "evil.pt")
    assert main(["hsi-cd", "map", "--checkpoint", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "m.png")]) == 2
    one_error_line(capsys.readouterr().err, "evil.pt")
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "pwned").exists()


class _Evil:
    """Pickles as a call to ``open(..., "w")``: a weights_only load must refuse it."""

    def __reduce__(self):
        return (open, (str(Path(__file__).parent / "pwned"), "w"))


def test_metrics_json_is_strict_even_with_a_nan_score(tmp_path, monkeypatch):
    import json

    import visionlens_hsi.train as train_module

    out = tmp_path / "run"
    assert main(["hsi-cd", "train", "--size", "16", "--bands", "6", "--epochs", "1", "--train-fraction", "0.2",
                       "--model", "mlp", "--out", str(out), "--quiet"]) == 0
    monkeypatch.setattr(train_module, "scores", lambda truth, pred: {"oa": float("nan"), "kappa": 0.5, "aa": 0.5})
    assert main(["hsi-cd", "eval", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "e.json")]) == 0

    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    for path in (out / "metrics.json", tmp_path / "e.json"):
        data = json.loads(path.read_text(), parse_constant=refuse)
        assert data["model"] == "mlp"
    assert json.loads((tmp_path / "e.json").read_text())["oa"] is None


# ---- outputs: a user's file is never replaced ------------------------------------------------------------

TINY_TRAIN = ["--size", "16", "--bands", "6", "--epochs", "1", "--train-fraction", "0.2", "--threads", "1", "--quiet"]


def test_cli_map_and_eval_keep_an_existing_out_file_unless_forced(tmp_path, capsys):
    """`map --out mine.png` and `eval --out mine.json` used to replace the user's file without a word."""
    run = tmp_path / "run"
    assert main(["hsi-cd", "train", *TINY_TRAIN, "--out", str(run)]) == 0
    for command, name in (("map", "mine.png"), ("eval", "mine.json")):
        mine = tmp_path / name
        mine.write_bytes(b"mine")
        capsys.readouterr()
        assert main(["hsi-cd", command, "--checkpoint", str(run / "model.pt"), "--out", str(mine)]) == 2
        one_error_line(capsys.readouterr().err, str(mine), "--force")
        assert mine.read_bytes() == b"mine"
        assert main(["hsi-cd", command, "--checkpoint", str(run / "model.pt"), "--out", str(mine), "--force"]) == 0
        assert mine.read_bytes() != b"mine" and mine.stat().st_size > 0


@pytest.mark.parametrize("command", ["eval", "map"])
def test_cli_out_that_is_the_checkpoint_is_refused_even_with_force(tmp_path, capsys, tiny_checkpoint, command):
    """`eval --checkpoint ck.pt --out ck.pt --force` used to replace the checkpoint with its own metrics."""
    ck = tmp_path / "ck.pt"
    ck.write_bytes(tiny_checkpoint.read_bytes())
    link = tmp_path / "link.pt"
    link.symlink_to(ck)
    for out in (ck, link, tmp_path / "." / "ck.pt"):
        capsys.readouterr()
        assert main(["hsi-cd", command, "--checkpoint", str(ck), "--out", str(out), "--force"]) == 2
        one_error_line(capsys.readouterr().err, "--out", "--checkpoint")
    assert ck.read_bytes() == tiny_checkpoint.read_bytes()


def test_cli_train_keeps_a_users_file_in_out_and_rewrites_its_own(tmp_path, capsys):
    run = tmp_path / "run"
    for _ in range(2):  # a re-run into the folder an earlier train wrote rewrites it
        assert main(["hsi-cd", "train", *TINY_TRAIN, "--out", str(run)]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_bytes(b"mine")
    capsys.readouterr()
    assert main(["hsi-cd", "train", *TINY_TRAIN, "--out", str(mine)]) == 2
    one_error_line(capsys.readouterr().err, str(mine / "metrics.json"))
    assert (mine / "metrics.json").read_bytes() == b"mine" and sorted(mine.iterdir()) == [mine / "metrics.json"]
    (mine / "metrics.json").unlink()
    (mine / "table.md").write_bytes(b"mine")  # --seeds: the table beside the seed-K/ folders
    assert main(["hsi-cd", "train", *TINY_TRAIN, "--seeds", "0,1", "--out", str(mine)]) == 2
    one_error_line(capsys.readouterr().err, str(mine / "table.md"))
    assert (mine / "table.md").read_bytes() == b"mine" and sorted(mine.iterdir()) == [mine / "table.md"]


def test_a_label_map_without_changed_pixels_says_so():
    """It used to say '(0 labelled): raise --train-fraction', which cannot help."""
    labels = np.full((10, 10), UNCHANGED)
    labels[0] = UNKNOWN
    with pytest.raises(InputError) as err:
        stratified_split(labels, 0.5, seed=0)
    message = str(err.value)
    assert "no changed pixel" in message and "--train-fraction" not in message


def test_cli_train_on_a_mat_without_changed_pixels_is_one_line(tmp_path, capsys):
    pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    layout = DATASETS["usa"]
    _write_layout(tmp_path, "usa", rng.random((8, 8, 4)), rng.random((8, 8, 4)),
                  np.full((8, 8), layout.unchanged, dtype=np.uint8))
    out = tmp_path / "run"
    assert main(["hsi-cd", "train", "--data", str(tmp_path), "--dataset", "usa", "--epochs", "1",
                 "--train-fraction", "0.5", "--out", str(out), "--quiet"]) == 2
    assert "--train-fraction" not in one_error_line(capsys.readouterr().err, "no changed pixel")
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("hsi") / "run"
    assert main(["hsi-cd", "train", "--size", "16", "--bands", "4", "--epochs", "1", "--train-fraction", "0.1",
                 "--out", str(out), "--quiet"]) == 0
    return out / "model.pt"


@pytest.mark.parametrize("command", ["eval", "map"])
@pytest.mark.parametrize("flag", [["--scene-seed", "3"], ["--size", "20"], ["--bands", "8"], ["--shading", "0.1"],
                                  ["--dataset", "river"]])
def test_data_flags_without_data_are_refused(tmp_path, capsys, tiny_checkpoint, command, flag):
    """Without --data the checkpoint's own data is used: these flags used to be ignored silently."""
    out = tmp_path / ("e.json" if command == "eval" else "m.png")
    assert main(["hsi-cd", command, "--checkpoint", str(tiny_checkpoint), *flag, "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, flag[0], "--data")
    assert not out.exists()


def test_synthetic_flags_with_a_folder_data_are_refused(tmp_path, capsys, tiny_checkpoint):
    assert main(["hsi-cd", "eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--dataset", "usa",
                 "--size", "20"]) == 2
    one_error_line(capsys.readouterr().err, "--size", "--data synthetic")
    out = tmp_path / "run"
    assert main(["hsi-cd", "train", "--data", str(tmp_path), "--dataset", "usa", "--bands", "8",
                 "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "--bands", "--data synthetic")
    # the synthetic flags still apply with --data synthetic
    assert main(["hsi-cd", "eval", "--checkpoint", str(tiny_checkpoint), "--data", "synthetic", "--size", "16",
                 "--bands", "4"]) == 0
