"""Evaluation metrics: oracles (an independent port of RISE's evaluation.py; Quantus for the
pointing game, relevance mass and rank), invariants, and the sanity check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import visionlens
from visionlens import metrics as M
from visionlens.data.world import World
from visionlens.errors import InputError
from visionlens.models.world_eval import normalise

from helpers import assert_same_state, snapshot


def _rise_reference(model, x, sal, mode, step, blur_kernel):
    """A literal numpy port of eclique/RISE evaluation.py CausalMetric.single_run (one image at a
    time): softmax model, class = argmax on the original, flipped argsort of the flat map, zeros
    substrate for deletion, blurred start for insertion (RISE's ``gkern``: scipy's gaussian_filter
    on an impulse), trapezoid AUC."""
    out = []
    for i in range(x.shape[0]):
        img = x[i:i + 1]
        h, w = img.shape[-2:]
        hw = h * w
        n_steps = (hw + step - 1) // step
        with torch.no_grad():
            c = int(model(img).softmax(1).argmax())
        if mode == "deletion":
            start, finish = img.clone(), torch.zeros_like(img)
        else:
            k = torch.from_numpy(blur_kernel).float()
            start = F.conv2d(img, k.expand(3, 1, *k.shape), padding=k.shape[-1] // 2, groups=3)
            finish = img.clone()
        scores = np.empty(n_steps + 1)
        salient_order = np.flip(np.argsort(sal[i].reshape(-1, hw), axis=1, kind="stable"), axis=-1)
        for s in range(n_steps + 1):
            with torch.no_grad():
                scores[s] = float(model(start).softmax(1)[0, c])
            if s < n_steps:
                coords = salient_order[:, step * s:step * (s + 1)]
                st = start.numpy().reshape(1, 3, hw)
                st[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
                start = torch.from_numpy(st.reshape(1, 3, h, w))
        out.append((scores.sum() - scores[0] / 2 - scores[-1] / 2) / n_steps)
    return np.array(out)


def _gkern(size=11, sigma=5.0):
    """RISE's evaluation.py ``gkern``: a centred impulse smoothed by scipy's gaussian_filter."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1
    return gaussian_filter(impulse, sigma)


def test_the_insertion_blur_is_rises_kernel_not_a_sampled_gaussian():
    """A sampled, normalised Gaussian is peakier than RISE's kernel (its tails are folded back by the
    reflect boundary), which moved insertion AUCs by up to 0.07 on one ImageNet photo."""
    for size, sigma in ((11, 5.0), (7, 1.5), (5, 3.0)):
        np.testing.assert_allclose(M.rise_kernel(size, sigma), _gkern(size, sigma), rtol=1e-6, atol=1e-9)
    r = np.arange(11) - 5
    sampled = np.outer(np.exp(-r**2 / 50), np.exp(-r**2 / 50))
    assert abs(M.rise_kernel()[5, 5] - sampled[5, 5] / sampled.sum()) > 2e-3
    x = torch.randn(2, 3, 20, 24)
    k = torch.from_numpy(_gkern()).float()
    torch.testing.assert_close(M.gaussian_blur(x), F.conv2d(x, k.expand(3, 1, 11, 11), padding=5, groups=3))


@pytest.fixture(scope="module")
def world_cnn():
    return visionlens.load_model("world-cnn", device="cpu")


@pytest.fixture(scope="module")
def world_batch():
    return World().batch("test", range(8))


def test_trapezoid_auc_of_a_constant_is_the_constant():
    for n in (1, 7, 224):
        assert torch.allclose(M.trapezoid_auc(torch.full((3, n + 1), 0.37)), torch.full((3,), 0.37))
    assert float(M.trapezoid_auc(torch.tensor([0.0, 1.0]))) == pytest.approx(0.5)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_deletion_insertion_match_rise_reference(tiny_net, mode):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 16, 16)
    maps = torch.rand(3, 16, 16)
    fn = M.deletion if mode == "deletion" else M.insertion
    ours = fn(tiny_net, x, maps, step=10, batch_size=17).numpy()  # 26 steps, the last one partial
    ref = _rise_reference(tiny_net, x, maps.numpy(), mode, 10, _gkern())
    assert np.abs(ours - ref).max() < 1e-3  # in practice ~1e-7
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("step", [0, -16])
def test_a_step_below_one_pixel_is_refused(tiny_net, step):
    x, maps = torch.randn(1, 3, 16, 16), torch.rand(1, 16, 16)
    with pytest.raises(InputError, match="step must be at least 1 pixel"):
        M.deletion(tiny_net, x, maps, step=step)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_shared_curve_ends_change_nothing_but_the_forward_count(tiny_net, mode):
    """The first and last curve points do not depend on the map: scored once (curve_ends) and
    passed in, the curves are the same, with two fewer forwards per image per method."""
    torch.manual_seed(2)
    x, maps, target = torch.randn(3, 3, 16, 16), torch.rand(3, 16, 16), torch.tensor([0, 2, 1])
    seen = []
    hook = tiny_net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        plain, _ = M.causal_curves(tiny_net, x, maps, mode, target, step=32, batch_size=3)
        n_plain = sum(seen)
        seen.clear()
        ends = M.curve_ends(tiny_net, x, target, mode)
        shared, _ = M.causal_curves(tiny_net, x, maps, mode, target, step=32, batch_size=3, ends=ends)
        n_shared = sum(seen) - 2 * len(x)  # minus curve_ends' own forwards
    finally:
        hook.remove()
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-6)
    assert (n_plain, n_shared) == (3 * 9, 3 * 7)  # 8 steps: 9 points per curve


class _FixedMaps:
    """A stand-in CAM extractor for torchcam's metric: returns the given maps (already at input size)."""

    def __init__(self, model, maps):
        self.model, self.maps = model, maps

    def __call__(self, class_idx=None, scores=None, normalized=True, **kw):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        import contextlib

        return contextlib.nullcontext()


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_deletion_insertion_match_torchcam(tiny_net, mode):
    """torchcam 0.5's DeletionInsertionMetric (independent code) on the same maps, protocol matched:
    softmax scores, zeros baseline for deletion, the same blurred image as the insertion start,
    16 steps of 16 px on 16x16 images (torch.trapezoid on the perturbed fraction = RISE's AUC)."""
    from functools import partial

    metrics = pytest.importorskip("torchcam.metrics")
    torch.manual_seed(4)
    x, maps = torch.randn(4, 3, 16, 16), torch.rand(4, 16, 16)
    k = torch.from_numpy(_gkern()).float()
    blurred = F.conv2d(x, k.expand(3, 1, 11, 11), padding=5, groups=3)
    baseline = None if mode == "deletion" else blurred
    ours = []
    for i in range(4):  # torchcam averages over the batch: compare one image at a time
        ref = metrics.DeletionInsertionMetric(_FixedMaps(tiny_net, maps[i:i + 1]), partial(torch.softmax, dim=-1),
                                              steps=16, baseline=baseline[i:i + 1] if baseline is not None else None)
        ref.update(x[i:i + 1])
        ours.append(ref.summary()[f"{mode}_auc"])
    fn = M.deletion if mode == "deletion" else M.insertion
    assert np.abs(fn(tiny_net, x, maps, step=16).numpy() - np.array(ours)).max() < 1e-5  # required: 1e-3


def test_oracle_map_beats_random_map_on_the_world(world_cnn, world_batch):
    x = normalise(world_batch["image"])
    obj = world_batch["object_mask"].float()
    torch.manual_seed(0)
    oracle = obj + 0.01 * torch.rand_like(obj)      # the object first
    rand = torch.rand_like(obj)
    kw = {"step": 128, "batch_size": 256}
    d_o, d_r = M.deletion(world_cnn.module, x, oracle, **kw), M.deletion(world_cnn.module, x, rand, **kw)
    i_o, i_r = M.insertion(world_cnn.module, x, oracle, **kw), M.insertion(world_cnn.module, x, rand, **kw)
    assert d_o.mean() < d_r.mean() - 0.1
    assert i_o.mean() > i_r.mean() + 0.1


def test_all_ones_map_gives_no_drop_and_no_increase(world_cnn, world_batch):
    x = normalise(world_batch["image"])
    drop, inc = M.drop_increase(world_cnn.module, x, torch.ones(8, 64, 64), mean=0.5, std=0.5)
    assert torch.equal(drop, torch.zeros(8)) and torch.equal(inc, torch.zeros(8))
    drop0, _ = M.drop_increase(world_cnn.module, x, torch.zeros(8, 64, 64), mean=0.5, std=0.5)
    assert drop0.mean() > 0.3  # a black image loses most of the confidence


def test_average_drop_uses_the_softmax_probability(tiny_net):
    torch.manual_seed(2)
    x, maps = torch.randn(4, 3, 16, 16), torch.rand(4, 16, 16)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.3, 0.25])
    drop, inc = M.drop_increase(tiny_net, x, maps, mean, std)
    with torch.no_grad():
        p = tiny_net(x).softmax(1)
        c = p.argmax(1)
        raw = x * std[:, None, None] + mean[:, None, None]
        o = tiny_net((raw * maps[:, None] - mean[:, None, None]) / std[:, None, None]).softmax(1)
    y, o = p[torch.arange(4), c], o[torch.arange(4), c]
    assert torch.allclose(drop, (y - o).clamp_min(0) / y, atol=1e-5)
    assert torch.equal(inc, (o > y).float())


def test_pointing_game_matches_quantus():
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(3)
    maps = torch.rand(16, 32, 32)
    masks = torch.zeros(16, 32, 32, dtype=torch.bool)
    for i in range(16):
        y, x = torch.randint(0, 24, (2,)).tolist()
        masks[i, y:y + 8, x:x + 8] = True
    ours = M.pointing_game(maps, masks, tolerance=0).numpy()
    ref = np.asarray(quantus.PointingGame(disable_warnings=True).evaluate_batch(a_batch=maps.numpy()[:, None],
                                                                                s_batch=masks.numpy()[:, None]), float)
    assert np.array_equal(ours, ref)
    assert 0 < ours.sum() < 16
    mass = np.asarray(quantus.RelevanceMassAccuracy(disable_warnings=True).evaluate_batch(
        a_batch=maps.numpy()[:, None], s_batch=masks.numpy()[:, None]), float)
    assert np.allclose(M.relevance_mass(maps, masks).numpy(), mass, atol=1e-6)
    rank = np.asarray(quantus.RelevanceRankAccuracy(disable_warnings=True).evaluate_batch(
        a_batch=maps.numpy()[:, None], s_batch=masks.numpy()[:, None]), float)
    assert np.allclose(M.relevance_rank(maps, masks).numpy(), rank, atol=1e-6)


def test_pointing_game_tolerance_is_15_px():
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[:, 10:20, 10:20] = True
    maps = torch.zeros(2, 64, 64)
    maps[0, 19, 34] = 1  # 15 px right of the mask's edge column 19
    maps[1, 19, 35] = 1  # 16 px
    assert M.pointing_game(maps, masks).tolist() == [1.0, 0.0]
    assert M.per_class_mean(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)


def test_a_flat_map_points_nowhere_wherever_the_object_is():
    """An all-zero map points nowhere: its pointing game and relevance rank are 0 for an object at
    the top left as at the bottom right (by pixel order the first would be a hit), as its relevance
    mass is; a maximum shared by two pixels, one on the object, is half a hit."""
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :8, :8] = True
    masks[1, 56:, 56:] = True
    flat = torch.zeros(2, 64, 64)
    assert M.relevance_rank(flat, masks).tolist() == [0.0, 0.0]
    assert M.pointing_game(flat, masks).tolist() == [0.0, 0.0]
    assert M.relevance_mass(flat, masks).tolist() == [0.0, 0.0]
    two = torch.zeros(2, 64, 64)
    two[:, 2, 2] = two[:, 60, 60] = 1.0
    assert M.pointing_game(two, masks, tolerance=0).tolist() == [0.5, 0.5]
    ranked = torch.rand(2, 64, 64) * 0.5
    ranked[0, :8, :8] = 1.0  # the object's pixels first, then ties outside it: a perfect rank
    assert M.relevance_rank(ranked, masks)[0].item() == pytest.approx(1.0)


def test_localisation_error_uses_the_largest_component():
    maps = torch.zeros(1, 32, 32)
    maps[0, 2:6, 2:6] = 1.0       # small blob, maximum
    maps[0, 12:28, 10:30] = 0.5   # large blob, above 20 % of the max
    err, iou = M.localisation_error(maps, torch.tensor([[10.0, 12, 30, 28]]))
    assert float(iou) == pytest.approx(1.0) and float(err) == 0.0
    err, _ = M.localisation_error(maps, torch.tensor([[2.0, 2, 6, 6]]))
    assert float(err) == 1.0
    assert M.energy_pointing_game(maps, torch.tensor([[10.0, 12, 30, 28]])).item() == pytest.approx(160 / 176)


def _edges(x, t):
    """An 'explanation' that ignores the model: the image's gradient magnitude."""
    g = x.mean(1, keepdim=True)
    gx = F.conv2d(g, torch.tensor([[[[-1.0, 0, 1]]]]), padding=(0, 1))
    gy = F.conv2d(g, torch.tensor([[[[-1.0], [0], [1]]]]), padding=(1, 0))
    return (gx**2 + gy**2).sqrt()[:, 0]


def test_sanity_check_flags_an_edge_detector_and_passes_gradcam(world_cnn, world_batch):
    model = world_cnn.module
    x = normalise(world_batch["image"][:4])
    before = snapshot(model)
    edge = M.model_randomisation(model, _edges, x)
    cam = visionlens.GradCAM(model, "layer3")
    grad = M.model_randomisation(model, lambda x, t: cam(x, t).maps, x)
    assert_same_state(before, snapshot(model))
    assert not M.passes(edge) and M.randomisation_score(edge).min() > 0.99
    assert M.passes(grad), M.randomisation_score(grad)
    assert grad["layers"][0] == "fc"


def test_model_restored_after_an_error(world_cnn, world_batch):
    model = world_cnn.module
    before = snapshot(model)
    calls = []

    def boom(x, t):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("boom")
        return _edges(x, t)

    with pytest.raises(RuntimeError):
        M.model_randomisation(model, boom, normalise(world_batch["image"][:2]))
    assert_same_state(before, snapshot(model))


def test_spearman_and_registry():
    a = torch.tensor([[1.0, 2, 3, 4]])
    assert M.spearman(a, a ** 3).item() == pytest.approx(1.0)
    assert M.spearman(a, -a).item() == pytest.approx(-1.0)
    assert M.METRICS["deletion"].direction == "lower" and M.METRICS["insertion"].higher_is_better
    assert M.METRICS["pointing-game"].needs == ("masks",)
    with pytest.raises(InputError, match="unknown metric"):
        M.get_metric("nope")
    with pytest.raises(InputError):
        M.pointing_game(torch.rand(2, 8, 8), torch.ones(2, 4, 4, dtype=torch.bool))


def test_embedding_confidences():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    proto = M.PrototypeConfidence(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    p = proto(e, torch.tensor([0, 0]))
    assert p[0] > 0.5 > p[1] and torch.equal(proto.predict(e), torch.tensor([0, 1]))
    sim = M.SimilarityConfidence(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(sim(e, None), torch.tensor([1.0, 0.0]))
    knn = M.KNNConfidence(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), torch.tensor([0, 0, 1]), k=2)
    assert knn(e[:1], torch.tensor([0])).item() == pytest.approx(1.0)
    assert math.isclose(float(knn.votes(e).sum(1)[1]), 1.0, rel_tol=1e-6)


def test_every_registered_metric_can_be_computed():
    """Each entry of the registry carries its compute function, or names the per-image metric it summarises."""
    for name, info in M.METRICS.items():
        assert (info.compute is not None) != (info.per_class_of is not None), name
        assert info.per_class_of is None or M.METRICS[info.per_class_of].compute is not None
    assert "randomisation" not in M.default_metrics() and "deletion" in M.default_metrics()


def test_the_faithfulness_metrics_score_a_training_model_in_eval_mode_and_restore_it():
    """A model in train mode (evaluating during training) is scored as in eval mode; its mode and
    BatchNorm statistics come back as they were (before: batch statistics were used and 60 running
    statistics of a ResNet-18 were overwritten)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x, maps = torch.randn(2, 3, 32, 32), torch.rand(2, 32, 32)
    expected = {"deletion": M.deletion(model, x, maps, target=[1, 2], step=128),
                "insertion": M.insertion(model, x, maps, target=[1, 2], step=128),
                "drop": M.drop_increase(model, x, maps, (0.5,) * 3, (0.25,) * 3, target=[1, 2])[0]}
    model.train()
    before = snapshot(model)
    got = {"deletion": M.deletion(model, x, maps, target=[1, 2], step=128),
           "insertion": M.insertion(model, x, maps, target=[1, 2], step=128),
           "drop": M.drop_increase(model, x, maps, (0.5,) * 3, (0.25,) * 3, target=[1, 2])[0]}
    assert_same_state(before, snapshot(model))
    assert model.training and all(m.training for m in model.modules())
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-5), name


def test_the_metrics_take_numpy_maps_and_any_nonzero_mask_value(tiny_net):
    """Maps from another library (NumPy) and a mask read from a 0/255 PNG give the values of
    tensors and a boolean mask (before: AttributeError, and a relevance mass of 36 for 0/255)."""
    torch.manual_seed(0)
    maps = torch.rand(2, 32, 32)
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 8:20, 4:16] = True
    png = mask.to(torch.uint8) * 255
    for metric in (M.relevance_mass, M.relevance_rank, M.pointing_game):
        want = metric(maps, mask)
        assert torch.equal(metric(maps, png), want) and torch.equal(metric(maps.numpy(), png.numpy()), want)
    assert float(M.relevance_mass(maps, png).max()) <= 1.0
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(M.deletion(tiny_net, x, maps.numpy(), target=np.array([1, 0]), step=64),
                          M.deletion(tiny_net, x, maps, target=[1, 0], step=64))


@pytest.mark.parametrize("target, message", [
    ([1, 5000], "target class 5000 is out of range for a model with"),
    ([1, -2], "target class -2 is out of range"),
    ([1, 2, 0], r"one class or one class per image \(2\), got shape \(3,\)"),
    ([0.5, 1.0], "class indices"),
])
def test_bad_metric_targets_are_one_line(tiny_net, target, message):
    x, maps = torch.randn(2, 3, 32, 32), torch.rand(2, 32, 32)
    for metric in (M.deletion, M.insertion, lambda *a, **k: M.drop_increase(*a[:3], (0.5,) * 3, (0.25,) * 3, **k)):
        with pytest.raises(InputError, match=message):
            metric(tiny_net, x, maps, target=target)


def test_a_model_that_is_not_a_torch_module_is_one_line_naming_the_fix():
    model = visionlens.load_model("world-cnn")
    x, maps = torch.randn(1, 3, 64, 64), torch.rand(1, 64, 64)
    for call in (lambda m: M.deletion(m, x, maps, target=0), lambda m: visionlens.GradCAM(m)(x)):
        with pytest.raises(InputError, match="give its torch module, model.module"):
            call(model)  # before: AttributeError in the metrics
        with pytest.raises(InputError, match="model must be a torch.nn.Module, got str"):
            call("resnet18")


def test_an_empty_mask_or_box_is_left_out_by_every_localisation_metric():
    """relevance mass (and the energy pointing game) gave 0 for an empty mask, counting the image
    against the method, where the pointing game and relevance rank leave it out (NaN)."""
    maps = torch.rand(2, 16, 16)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    for metric in (M.relevance_mass, M.relevance_rank, M.pointing_game):
        values = metric(maps, masks)
        assert math.isfinite(float(values[0])) and math.isnan(float(values[1])), metric.__name__
    boxes = torch.tensor([[2, 2, 6, 6], [5, 5, 5, 9]])  # the second has no width
    values = M.energy_pointing_game(maps, boxes)
    assert math.isfinite(float(values[0])) and math.isnan(float(values[1]))
