"""`evaluate` at the floor on one machine (issue 30 item 1): deletion and insertion of every method
scored together, in forward passes bounded by the device's free memory, with images decoded ahead
in DataLoader workers; the values equal the one-method-at-a-time path."""

from __future__ import annotations

import pytest
import torch

from visionlens import metrics as M
from visionlens.metrics import faithfulness as F
from visionlens.core import inference as I
from visionlens.errors import InputError
from visionlens.evaluation import data as D
from visionlens.evaluation import evaluate, read_folder_results
from visionlens.evaluation import run as R

from helpers import TinyGapNet, labelled_folder

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = {"models": ["world-cnn"], "methods": ["gradcam", "layercam"], "data": "world:test", "n": 6,
         "batch_size": 3, "metrics": ["deletion", "insertion", "pointing-game"], "step": 256, "device": "cpu",
         "progress": False}


def _records(out) -> dict:
    return {(r["model"], r["method"], r["image"]): r for r in read_folder_results(out) if r["image"] != "*"}


def _assert_same(a: dict, b: dict, names=("deletion", "insertion")) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        for name in names:
            assert a[key]["metrics"][name] == pytest.approx(b[key]["metrics"][name], abs=1e-6), (key, name)
        for mode in ("deletion", "insertion"):  # kept to 4 decimals: equal, or one rounding step apart
            assert a[key]["curves"][mode] == pytest.approx(b[key]["curves"][mode], abs=1.01e-4)


def test_joint_scoring_equals_one_method_at_a_time(tmp_path, monkeypatch):
    """Deletion and insertion of all methods in shared passes give the records of the previous
    path (each method's curves on its own, through the registry), to 1e-6."""
    evaluate(out=tmp_path / "joint", **WORLD)
    calls = []
    real = R.joint_curves
    monkeypatch.setattr(R, "joint_curves", lambda contexts, names, on_chunk=None: calls.append(1) or
                        [{} for _ in contexts])
    evaluate(out=tmp_path / "single", **WORLD)
    assert calls, "the single path was not taken"
    monkeypatch.setattr(R, "joint_curves", real)
    joint, single = _records(tmp_path / "joint"), _records(tmp_path / "single")
    _assert_same(joint, single, ("deletion", "insertion", "pointing-game"))
    assert {k[1] for k in joint} == {"gradcam", "layercam"} and len(joint) == 12


def test_joint_curves_equal_causal_curves_at_any_pass_size():
    torch.manual_seed(0)
    net = TinyGapNet(classes=4).eval()
    x = torch.randn(3, 3, 16, 16)
    maps = [torch.rand(3, 16, 16), torch.rand(3, 16, 16)]
    targets = [torch.tensor([0, 1, 2]), torch.tensor([3, 1, 0])]
    for batch_size in (1, 7, 500):
        passes = []
        joint = F.joint_causal_curves(net, x, maps, targets, step=20, batch_size=batch_size, on_chunk=passes.append)
        assert max(passes) <= batch_size
        for m, t, curves in zip(maps, targets, joint):
            for mode in ("deletion", "insertion"):
                alone, _ = M.causal_curves(net, x, m, mode, t, step=20, batch_size=5)
                assert curves[mode].shape == alone.shape == (3, 14)
                assert (curves[mode] - alone).abs().max() < 1e-6
    only = F.joint_causal_curves(net, x, maps, targets, step=20, modes=("insertion",))
    assert set(only[0]) == {"insertion"}
    with pytest.raises(InputError):
        F.joint_causal_curves(net, x, maps, targets, modes=("sideways",))


def test_the_memory_bound_is_sane_and_respects_a_cap(monkeypatch):
    net = TinyGapNet().eval()
    x = torch.randn(2, 3, 64, 64)
    per_image = I.activation_bytes(net, x)
    image = 3 * 64 * 64 * 4
    assert 2 * image < per_image < 100 * image  # the image twice plus a few activations of 8-16 channels
    assert I.available_bytes("cpu") > 64 << 20
    bound = I.batch_bound(net, x)
    assert 1 <= bound <= I.CPU_CEILING
    assert I.batch_bound(net, x, cap=3) == 3
    assert I.batch_bound(net, x, ceiling=5) <= 5
    monkeypatch.setattr(I, "available_bytes", lambda device: 10 * per_image)  # little free memory
    assert I.batch_bound(net, x) == max(1, int(I.MEMORY_FRACTION * 10 * per_image) // per_image) == 2
    monkeypatch.setattr(I, "available_bytes", lambda device: 0)
    assert I.batch_bound(net, x) == 1  # always at least one image
    with pytest.raises(ValueError):
        I.batch_bound(net, x, cap=0)


def test_available_memory_falls_back_to_proc_meminfo(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    assert abs(I.available_bytes("cpu") - kib * 1024) < 0.5 * kib * 1024  # memory moves, not by half


def test_the_scoring_pass_size_comes_from_the_device_not_the_batch_size(tmp_path, monkeypatch):
    """The manifest records the bound; an explicit --scoring-batch caps every pass."""
    sizes = []

    class Recorder(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            sizes.append(len(x))
            return self.module(x)

    monkeypatch.setattr(R, "checked_inference_copy",
                        lambda module, x, compile_batch=None: (Recorder(module), "recorder"))
    monkeypatch.setattr(I, "fastest_batch", lambda module, x, bound: bound)  # the memory bound itself
    args = {**WORLD, "batch_size": 2, "metrics": ["deletion", "insertion"]}
    out = tmp_path / "auto"
    evaluate(out=out, **args)
    import json

    scoring = json.loads((out / "manifest.json").read_text())["batches"]["world-cnn"]["scoring"]
    assert scoring > 2 * 8 and max(sizes) <= scoring  # not --batch-size x 8: the 64 px world fits many more
    sizes.clear()
    evaluate(out=tmp_path / "capped", scoring_batch=5, **args)
    assert max(sizes) == 5
    with pytest.raises(InputError, match="--scoring-batch"):
        evaluate(out=tmp_path / "bad", scoring_batch=0, **args)


def test_decoding_workers_give_the_same_records(tmp_path, imagenet_photos):
    torch.manual_seed(0)
    module = TinyGapNet(classes=1000).eval()
    data = labelled_folder(tmp_path / "data", imagenet_photos[:5])
    args = {"models": {"tiny": module}, "methods": ["gradcam", "cam"], "data": data, "n": 5, "batch_size": 2,
            "metrics": ["deletion", "insertion"], "step": 224 * 56, "device": "cpu", "progress": False}
    evaluate(out=tmp_path / "w0", decode_workers=0, **args)
    evaluate(out=tmp_path / "w2", decode_workers=2, **args)
    a, b = _records(tmp_path / "w0"), _records(tmp_path / "w2")
    assert len(a) == 10
    _assert_same(a, b)


def test_a_broken_image_in_a_worker_is_one_line_and_the_others_are_scored(tmp_path, imagenet_photos):
    module = TinyGapNet(classes=1000).eval()
    data = labelled_folder(tmp_path / "data", imagenet_photos[:4])
    (tmp_path / "data" / imagenet_photos[3].name).write_bytes(b"not an image")
    report = evaluate({"tiny": module}, ["gradcam"], data=data, n=4, batch_size=2, metrics=["deletion"],
                      step=224 * 56, device="cpu", progress=False, out=tmp_path / "o", decode_workers=1)
    (bad,) = report["unreadable"]
    message = bad["reason"]
    assert "\n" not in message and imagenet_photos[3].name in message and "DataLoader" not in message
    assert len(_records(tmp_path / "o")) == 3  # every image but the broken one


def test_the_bar_moves_during_the_scoring(tmp_path, monkeypatch):
    """Between a batch's maps and its records, the bar moves once per scoring pass, not once per metric."""
    moves = []

    class Bar(R.Progress):
        def update(self, n=1):
            moves.append(n)
            super().update(n)

    monkeypatch.setattr(R, "Progress", Bar)
    evaluate(out=tmp_path / "o", scoring_batch=4, **{**WORLD, "n": 3, "metrics": ["deletion", "insertion"]})
    passes = 2 * 2 * 3 * (64 * 64 // 256 - 1) / 4  # methods x modes x images x inner points / pass size
    assert len(moves) >= passes
    assert sum(moves) == pytest.approx(3 * 2)  # images x methods, in the end


def test_loader_workers_are_chosen_from_the_data():
    assert D.loader_workers({"kind": "world"}, None, 10) == 0
    assert D.loader_workers({"kind": "folder"}, None, 1) == 0
    assert 1 <= D.loader_workers({"kind": "folder"}, None, 10) <= 4
    assert D.loader_workers({"kind": "world"}, 3, 10) == 3


def test_methods_that_share_one_explaining_pass_give_their_own_maps(tmp_path, monkeypatch):
    """Grad-CAM and LayerCAM explained in one shared pass (explain_many) give the records of each
    explained on its own."""
    calls = []
    real = R.explain_together
    monkeypatch.setattr(R, "explain_together", lambda *a: calls.append(1) or real(*a))
    evaluate(out=tmp_path / "shared", **WORLD)
    assert calls
    monkeypatch.setattr(R, "explain_together", lambda *a: {})
    evaluate(out=tmp_path / "alone", **WORLD)
    _assert_same(_records(tmp_path / "shared"), _records(tmp_path / "alone"), ("deletion", "insertion", "pointing-game"))


class _Sleeper(torch.nn.Module):
    """A stand-in model whose forward takes ``fixed + per_image * b ** power`` seconds for b images."""

    def __init__(self, fixed: float, per_image: float, power: int):
        super().__init__()
        self.fixed, self.per_image, self.power = fixed, per_image, power

    def forward(self, x):
        import time

        time.sleep(self.fixed + self.per_image * len(x) ** self.power)
        return x.flatten(1)[:, :2]


def test_the_fastest_batch_is_found_by_timing_not_assumed():
    """A fixed cost per pass favours the largest batch in the bound; a cost that grows faster than the
    batch (a CPU's caches overflowing) the smallest; the result never exceeds the bound."""
    x = torch.zeros(1, 3, 4, 4)
    assert I.fastest_batch(_Sleeper(0.01, 0.0, 1), x, 16, repeats=1) == 16
    assert I.fastest_batch(_Sleeper(0.0, 0.002, 2), x, 16, repeats=1) == 1
    assert I.fastest_batch(_Sleeper(0.01, 0.0, 1), x, 12, repeats=1) == 12  # the bound itself, not a power of two


def test_on_a_cpu_the_scoring_pass_is_the_fastest_within_the_bound(monkeypatch):
    """Without --scoring-batch, a CPU scores at the timed fastest batch size within the memory bound; a
    cap is taken as given, untimed."""
    timed = []
    monkeypatch.setattr(I, "fastest_batch", lambda module, x, bound: timed.append(bound) or max(1, bound // 2))
    scorer, x = TinyGapNet(), torch.zeros(2, 3, 32, 32)
    bound = D.scoring_bound(scorer, x)
    assert timed and bound == max(1, timed[0] // 2) and timed[0] * x[0].numel() * 4 <= D.CPU_SCORING_BYTES
    timed.clear()
    assert D.scoring_bound(scorer, x, cap=5) == 5 and not timed
