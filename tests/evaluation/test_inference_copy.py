"""The BatchNorm-folded, channels-last scoring copy: same outputs, user's model untouched, safe fallback."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from visionlens.core.inference import InferenceCopy, checked_inference_copy, conv_bn_pairs, fold_batchnorm
from visionlens.evaluation import evaluate, read_results

from helpers import assert_same_state, labelled_folder, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


class Reversed(nn.Module):
    """BN before the conv (attributes registered conv first): nothing to fold."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.conv(self.bn(x))


class Attributes(nn.Module):
    """Conv -> BN as attributes (foldable), and a conv whose output also feeds a skip (not)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn1(self.conv1(x)).relu()
        z = self.conv2(y)
        return self.bn2(z) + z


class Dynamic(nn.Sequential):
    """Data-dependent control flow: not traceable, so only nn.Sequential order is used."""

    def forward(self, x):
        return super().forward(x) if x.sum() > -1e9 else x


def _init(net: nn.Module) -> nn.Module:
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return _init(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.Sequential(nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.BatchNorm2d(8)), Reversed(),
                               Attributes(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)))


def test_folding_follows_the_data_flow():
    net, x = _net(), torch.randn(4, 3, 16, 16)
    assert conv_bn_pairs(net) == [("0", "1"), ("3.0", "3.1"), ("5.conv1", "5.bn1")]  # not the skip's, not 4's
    fast = InferenceCopy(net)
    assert fast.folded == 3 and sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 2
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-5)
    assert fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))) == 0


def test_untraceable_models_fold_only_sequential_pairs():
    torch.manual_seed(0)
    net = _init(Dynamic(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), Attributes()))
    assert conv_bn_pairs(net) == [("0", "1")]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(InferenceCopy(net)(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("modes", ["train", "mixed"])
def test_checked_copy_leaves_the_model_exactly_as_it_was(modes):
    net = _net().train()
    if modes == "mixed":  # the top module in eval, one block in train: each keeps its own mode
        net.eval()
        next(m for m in net.modules() if m is not net).train()
    net.register_forward_hook(lambda *a: None)
    before = snapshot(net)
    fast, note = checked_inference_copy(net, torch.randn(2, 3, 16, 16))
    assert isinstance(fast, InferenceCopy) and "3 BatchNorm folded" in note
    assert_same_state(before, snapshot(net))  # mode, flags, hooks, parameters, buffers
    assert all(not p.requires_grad for p in fast.parameters())
    assert all(not m._forward_hooks for m in fast.modules())  # the user's hook is neither copied nor run


def test_checked_copy_falls_back_to_the_model():
    class Dict(nn.Module):  # a detector-like output: no tensor to compare (a dict's "out" would be)
        def forward(self, x):
            return [{"boxes": x}]

    class Broken(nn.Module):
        def forward(self, x):
            return x * float("nan")

    d = Dict()
    assert checked_inference_copy(d, torch.randn(1, 3, 4, 4)) == (d, "model itself (inference copy gave other outputs)")
    b = Broken()
    module, note = checked_inference_copy(b, torch.randn(1, 3, 4, 4))
    assert module is b and "differs" in note


def test_evaluation_scores_on_the_copy_match_the_model(tmp_path, imagenet_photos, mobilenet):
    args = dict(data=labelled_folder(tmp_path / "photos", imagenet_photos[:2]), n=2, batch_size=2, device="cpu", step=6272, progress=False,
                metrics=["deletion", "insertion", "average-drop"])
    evaluate(["mobilenet_v2"], ["gradcam"], out=tmp_path / "fast", **args)
    evaluate(["mobilenet_v2"], ["gradcam"], out=tmp_path / "exact", fast_scoring=False, **args)
    fast, exact = read_results(tmp_path / "fast" / "results.jsonl"), read_results(tmp_path / "exact" / "results.jsonl")
    assert [r["image"] for r in fast] == [r["image"] for r in exact] and len(fast) == 2
    for a, b in zip(fast, exact):
        for k in args["metrics"]:
            assert a["metrics"][k] == pytest.approx(b["metrics"][k], abs=1e-3)  # AUCs; drop in %
    assert "inference copy (52 BatchNorm folded" in json.loads((tmp_path / "fast" / "manifest.json").read_text())["scoring"]["mobilenet_v2"]
    assert json.loads((tmp_path / "exact" / "manifest.json").read_text())["scoring"]["mobilenet_v2"] == "model itself"


needs_compiler = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                                    reason="torch.compile on CPU needs a C++ compiler")


@needs_compiler
def test_compiled_copy_matches_the_model_in_fixed_batches():
    net = _net()
    before = snapshot(net)
    fast, note = checked_inference_copy(net, torch.randn(3, 3, 16, 16), compile_batch=4)
    assert isinstance(fast, InferenceCopy) and note.startswith("compiled inference copy (3 BatchNorm folded"), note
    with torch.no_grad():
        for n in (1, 2, 3, 4, 9):  # 1 runs uncompiled (under half a batch), 2 and 3 padded, 9 = 4 + 4 + 1
            x = torch.randn(n, 3, 16, 16)
            torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(fast.run_compiled(x), net(x), rtol=1e-5, atol=1e-5)
    assert_same_state(before, snapshot(net))
    # built once per unchanged model; an in-place update (e.g. an optimiser step) builds a new one
    assert checked_inference_copy(net, torch.randn(2, 3, 16, 16), compile_batch=4)[0] is fast
    with torch.no_grad():
        net[0].weight.mul_(2)
    again, note = checked_inference_copy(net, torch.randn(2, 3, 16, 16), compile_batch=4)
    assert again is not fast and note.startswith("compiled")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x), rtol=1e-5, atol=1e-5)  # the updated weights


def test_compile_failure_falls_back_to_the_uncompiled_copy(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", no_compiler)
    net = _net()
    fast, note = checked_inference_copy(net, torch.randn(2, 3, 16, 16), compile_batch=4)
    assert isinstance(fast, InferenceCopy) and fast._compiled is None
    assert note.startswith("inference copy (3 BatchNorm folded") and note.endswith("not compiled (RuntimeError: no C++ compiler found)")


@needs_compiler
def test_compiled_evaluation_matches_the_uncompiled_one(tmp_path, imagenet_photos, mobilenet, monkeypatch):
    """``evaluate(compile=True)``: the metrics and Score-CAM's masked passes share one compiled copy
    (both score 64 images per pass here) and give the uncompiled results."""
    calls = []
    run_compiled = InferenceCopy.run_compiled
    monkeypatch.setattr(InferenceCopy, "run_compiled", lambda self, x, pad_all=True: calls.append(
        (id(self), len(x))) or run_compiled(self, x, pad_all))
    args = dict(data=labelled_folder(tmp_path / "photos", imagenet_photos[:2]), n=2, batch_size=2, device="cpu", step=1568,
                progress=False, metrics=["deletion", "insertion", "average-drop"])
    methods = ["gradcam", "scorecam@features.3"]
    evaluate(["mobilenet_v2"], methods, out=tmp_path / "plain", **args)
    assert not calls
    evaluate(["mobilenet_v2"], methods, out=tmp_path / "compiled", compile=True, **args)
    # one copy; Score-CAM's 48 masked images and the 2 methods x 2 modes x 2 images x 31 inner deletion/insertion
    # points went through it, scored together in passes of the compiled batch size (64)
    assert len({c[0] for c in calls}) == 1 and {48, 64} <= {c[1] for c in calls}
    plain, compiled = (read_results(tmp_path / d / "results.jsonl") for d in ("plain", "compiled"))
    assert [(r["method"], r["image"]) for r in plain] == [(r["method"], r["image"]) for r in compiled] and len(plain) == 4
    for a, b in zip(plain, compiled):
        for k in args["metrics"]:
            # Score-CAM's weights move by float rounding, which can reorder near-tied pixels
            assert a["metrics"][k] == pytest.approx(b["metrics"][k], abs=1e-3)
    manifest = json.loads((tmp_path / "compiled" / "manifest.json").read_text())
    assert manifest["scoring"]["mobilenet_v2"].startswith("compiled inference copy (52 BatchNorm folded")
    assert manifest["command"]["compile"] is True


def test_hugging_face_outputs_are_compared_as_their_logits():
    """A Hugging Face classifier returns a ModelOutput: the copy is checked on its logits (before,
    such a model was always scored on itself: "gave other outputs")."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(config).eval()
    x = torch.randn(2, 3, 32, 32)
    fast, why = checked_inference_copy(model, x)
    assert fast is not model and why.startswith("inference copy"), why
    with torch.no_grad():
        expected = model(x).logits
    torch.testing.assert_close(fast(x).logits, expected, rtol=1e-4, atol=1e-5)
