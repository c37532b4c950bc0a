"""ImageNet WordNet-id class folders (ImageNet-A/R style) in ``sata evaluate --data``: each folder is
mapped to its ImageNet-1k index, and with fewer than 1000 classes present the argmax is restricted
to their logits (Hendrycks et al.'s protocol). The model is a tiny random-init Hugging Face ViT with
a 1000-class head whose classifier is set so that its prediction is known."""

from __future__ import annotations

import json
import pkgutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import one_error_line, strict_json
from visionlens.cli import main
from visionlens.errors import InputError
from visionlens_sata.imagenet_classes import present_classes, restricted_argmax, wnid_labels

pytestmark = pytest.mark.usefixtures("one_thread")
timm = pytest.importorskip("timm")

# three ImageNet-1k classes: tench (0), its index 500 and toilet tissue (999); OUTSIDE is not among them
TENCH, MIDDLE, TISSUE, OUTSIDE = 0, 500, 999, 300
IMAGES = {TENCH: 2, MIDDLE: 4, TISSUE: 3}  # unequal, so that each class's share of the accuracy differs


def _timm_list(name: str) -> list[str]:
    return pkgutil.get_data("timm.data", f"_info/{name}").decode().split()


WNIDS = _timm_list("imagenet_synsets.txt")


def _write_tree(root, wnids, counts=None) -> None:
    rng = np.random.default_rng(0)
    for k, name in enumerate(wnids):
        (root / name).mkdir(parents=True)
        for i in range(3 if counts is None else counts[k]):
            Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(root / name / f"img{i}.png")


@pytest.fixture(scope="module")
def wnid_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_r_like")
    _write_tree(root, [WNIDS[k] for k in IMAGES], list(IMAGES.values()))
    return root


@pytest.fixture(scope="module")
def imagenet_vit(tmp_path_factory):
    """A 1000-class ViT whose logits are its classifier bias: OUTSIDE highest, MIDDLE second."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=1000)
    model = transformers.ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.linspace(0, 1, 1000))  # max at 999 (TISSUE) without an override
        model.classifier.bias[OUTSIDE] = 5.0
        model.classifier.bias[MIDDLE] = 4.0
    folder = tmp_path_factory.mktemp("vit_1k")
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _evaluate(out, *args) -> int:
    return main(["sata", "evaluate", "--seeds", "0", "--bs1-seeds", "0", "--batch", "4", "--variants", "sata",
                 "--out", str(out), "--quiet", *map(str, args)])


def _clean_accuracy(out) -> dict:
    raw = strict_json(out.with_suffix(".json").read_text())
    return {(r["protocol"], r["variant"]): r["clean"][0] for r in raw["rows"]}


# --- the mapping ---------------------------------------------------------------------------------

def test_a_wnid_folder_gets_its_imagenet_index():
    assert wnid_labels([WNIDS[k] for k in (TENCH, MIDDLE, TISSUE)], "d") == [TENCH, MIDDLE, TISSUE]
    assert wnid_labels(["n01440764", "n15075141"], "d") == [0, 999]  # tench and toilet tissue, by hand
    assert wnid_labels(["0", "1", "cat"], "d") is None  # not wnid folders: the other matching applies


@pytest.mark.parametrize("dataset", ["imagenet_a", "imagenet_r"])
def test_imagenet_a_and_r_folders_map_as_timm_publishes(dataset):
    """timm ships each set's wnids with their ImageNet-1k indices: an independent mapping."""
    wnids = _timm_list(f"{dataset}_synsets.txt")
    indices = [int(i) for i in _timm_list(f"{dataset}_indices.txt")]
    assert len(wnids) == 200
    assert wnid_labels(sorted(wnids), "d") == [indices[wnids.index(w)] for w in sorted(wnids)]
    assert present_classes(wnid_labels(wnids, "d"), "auto") == tuple(sorted(indices))
    assert present_classes(wnid_labels(wnids, "d"), "off") is None
    assert present_classes(list(range(1000)), "auto") is None  # all of ImageNet: nothing to restrict


def test_restricted_argmax_is_the_argmax_over_the_present_classes():
    logits = torch.randn(64, 1000)
    subset = torch.tensor(sorted(np.random.default_rng(1).choice(1000, 200, replace=False).tolist()))
    label = subset[torch.randint(0, 200, (64,))]
    logits[torch.arange(64), label] += 6.0  # the true class wins among the present ones ...
    outside = torch.tensor([k for k in range(1000) if k not in set(subset.tolist())])
    logits[:, outside[:5]] += 20.0  # ... but not over all 1000
    assert int((logits.argmax(1) == label).sum()) == 0
    assert bool((restricted_argmax(logits, subset) == label).all())
    assert bool((restricted_argmax(logits, None) == logits.argmax(1)).all())


def test_missing_timm_is_one_actionable_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm.data", None)  # importing it now raises ImportError
    with pytest.raises(InputError, match=r"visionlens\[timm\]"):
        wnid_labels(["n01440764"], "d")


# --- through the command line --------------------------------------------------------------------

def test_subset_restriction_scores_the_present_classes_only(tmp_path, imagenet_vit, wnid_tree):
    """Every image's logits put OUTSIDE first and MIDDLE second: over all 1000 classes nothing is
    right; restricted to the three present classes, the images of the MIDDLE folder (4 of 9) are.
    A folder mapped to another class (e.g. sorted folder order: 0, 1, 2) would score another share."""
    auto, off = tmp_path / "auto.md", tmp_path / "off.md"
    assert _evaluate(auto, "--model", f"hf:{imagenet_vit}", "--data", wnid_tree) == 0
    assert _evaluate(off, "--model", f"hf:{imagenet_vit}", "--data", wnid_tree, "--subset-classes", "off") == 0
    for protocol in ("sorted", "shuffled", "bs1"):
        for variant in ("plain", "sata"):
            assert abs(_clean_accuracy(auto)[(protocol, variant)] - 100 * 4 / 9) < 1e-6
            assert _clean_accuracy(off)[(protocol, variant)] == 0
    settings = json.loads(auto.with_suffix(".jsonl").read_text().splitlines()[0])["settings"]
    assert settings["subset_classes"] == [TENCH, MIDDLE, TISSUE]
    assert json.loads(off.with_suffix(".jsonl").read_text().splitlines()[0])["settings"]["subset_classes"] is None
    summary = strict_json(auto.with_suffix(".json").read_text())
    assert summary["class_labels"] == "imagenet-wnid" and summary["subset_classes"] == 3
    assert "3 ImageNet classes present" in auto.read_text() and "present" not in off.read_text()


def test_a_resumed_run_refuses_another_subset_mode(tmp_path, imagenet_vit, wnid_tree, capsys):
    out = tmp_path / "r.md"
    args = ("--model", f"hf:{imagenet_vit}", "--data", wnid_tree, "--images", "3")
    assert _evaluate(out, *args) == 0
    before = out.with_suffix(".jsonl").read_bytes()
    capsys.readouterr()
    assert _evaluate(out, *args, "--subset-classes", "off") == 2
    one_error_line(capsys.readouterr().err, "subset_classes", "r.jsonl")
    assert out.with_suffix(".jsonl").read_bytes() == before
    assert _evaluate(out, *args, "--subset-classes", "auto") == 0  # the same mode resumes
    assert out.with_suffix(".jsonl").read_bytes() == before  # nothing left to compute


@pytest.mark.parametrize("case", ["unknown", "mixed", "head", "world"])
def test_bad_wnid_folders_are_one_line(case, tmp_path, capsys, imagenet_vit):
    data = tmp_path / "data"
    folders = {"unknown": [WNIDS[0], "n99999999"], "mixed": [WNIDS[0], "cat"], "head": [WNIDS[0], WNIDS[1]],
               "world": [WNIDS[0]]}[case]
    _write_tree(data, folders)
    model = "timm:vit_tiny_patch16_224" if case == "head" else f"hf:{imagenet_vit}"
    argv = ["--model", model, "--data", data]
    if case == "head":  # a 3-class timm ViT from a weights file
        weights = tmp_path / "vit3.pth"
        torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=3).state_dict(), weights)
        argv += ["--weights", weights]
    if case == "world":
        argv = ["--subset-classes", "off"]
    names = {"unknown": ["n99999999"], "mixed": [WNIDS[0], "cat"], "head": ["WordNet", "3 classes"],
             "world": ["--subset-classes", "--data"]}[case]
    out = tmp_path / "x.md"
    assert _evaluate(out, *argv) == 2
    one_error_line(capsys.readouterr().err, *names)
    assert not out.exists() and not out.with_suffix(".jsonl").exists()
