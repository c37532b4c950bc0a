"""``sata evaluate --data DIR`` on real-format data: any ViT from the model specs (a random-init timm
ViT saved to a weights file, a Hugging Face ViT saved with save_pretrained), an ImageFolder tree
and an ImageNet-C-style tree of tiny generated PNGs, streamed and recorded per batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import one_error_line, strict_json
from visionlens.cli import main
from visionlens.core.vit import model_output
from visionlens_sata.sata import SataConfig, SataViT
from visionlens_sata.store import RecordStore

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES, PER_CLASS = 3, 4


def _write_images(folder, seed: int) -> None:
    """``PER_CLASS`` 40x36 PNGs per class folder, each class a different mean colour."""
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (folder / str(c)).mkdir(parents=True)
        for i in range(PER_CLASS):
            base = np.zeros((36, 40, 3)) + 60 * c + 40
            arr = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / str(c) / f"img{i}.png")


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    _write_images(root, 0)
    return root


@pytest.fixture(scope="module")
def corruption_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_c")
    for k, (corruption, severity) in enumerate([("gaussian_noise", 1), ("gaussian_noise", 3), ("contrast", 2)]):
        _write_images(root / corruption / str(severity), k + 1)
    return root


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3,
                                    num_attention_heads=2, intermediate_size=64, num_labels=CLASSES)
    folder = tmp_path_factory.mktemp("hf_vit")
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("timm") / "vit_tiny.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=CLASSES).state_dict(), path)
    return path


def _evaluate(out, *args) -> int:
    return main(["sata", "evaluate", "--seeds", "0", "--bs1-seeds", "0", "--batch", "4", "--out", str(out), "--quiet",
                 *map(str, args)])


def _records(out) -> list[dict]:
    lines = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert "settings" in lines[0]
    return lines[1:]


def _rows(out) -> dict:
    raw = strict_json(out.with_suffix(".json").read_text())
    return {(r["protocol"], r["variant"]): r for r in raw["rows"]}


# --- the ViT families SATA wraps -------------------------------------------------------------------

def _torchvision_vit():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32,
                                                 mlp_dim=64, num_classes=CLASSES)
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model.eval()


def _hf_module(hf_vit):
    from visionlens.models.zoo import load_model

    return load_model(f"hf:{hf_vit}").module


@pytest.mark.parametrize("family", ["huggingface", "torchvision"])
def test_sata_on_hugging_face_and_torchvision_vits(family, hf_vit):
    """Everything in set B equals the plain model; SATA changes the outputs, saves FFN work and
    stays batch independent."""
    model = _hf_module(hf_vit) if family == "huggingface" else _torchvision_vit()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        plain = model_output(model(x))
        wide = model_output(SataViT(model, SataConfig(gamma=0.0, alpha=1e9))(x))
        sata = SataViT(model, SataConfig(gamma=0.0))
        batched = model_output(sata(x))
        saved = sata.last_account.saved_flops()
        single = torch.cat([model_output(sata(x[i:i + 1])) for i in range(4)])
    assert (wide - plain).abs().max() < 1e-5
    assert (batched - plain).abs().max() > 1e-4
    assert (batched - single).abs().max() < 1e-5
    assert bool((saved > 0).all())
    assert sata.adapter.family == family


# --- folders -------------------------------------------------------------------------------------

def test_hf_vit_on_an_image_folder_with_corruptions_on_the_fly(tmp_path, hf_vit, image_tree):
    out = tmp_path / "table.md"
    rc = _evaluate(out, "--model", f"hf:{hf_vit}", "--data", image_tree, "--corruptions", "gaussian_noise", "contrast",
                   "--severities", "1", "3")
    assert rc == 0
    text = out.read_text()
    assert "images/s" in text and "clean (12 images)" in text and "contrast:3 (12 images)" in text
    rows = _rows(out)
    assert set(rows) == {(p, v) for p in ("sorted", "shuffled", "bs1")
                         for v in ("plain", "sata", "sata-reference-coupled", "random-peer", "tome-peer")}
    for (protocol, variant), row in rows.items():
        assert row["images_per_s"][0] > 0
        assert row["mce"] is not None and row["clean"] is not None
        if variant == "plain":
            assert row["ffn_saved"][0] == 0 and abs(row["mce"][0] - 100) < 1e-9
        else:
            assert 0 < row["ffn_saved"][0] < 100
    # per-image SATA saves the same work whatever the batch (the coupled reference does not have to)
    saved = [rows[(p, "sata")]["ffn_saved"][0] for p in ("sorted", "shuffled", "bs1")]
    assert max(saved) - min(saved) < 1e-6
    # one record per batch: 5 sets x (3 + 3 + 12) batches, each key once
    records = _records(out)
    assert len(records) == 5 * (3 + 3 + 12)
    assert len({(r["set"], r["protocol"], r["seed"], r["batch"]) for r in records}) == len(records)
    assert all(sum(r["n"] for r in records if r["set"] == "clean" and r["protocol"] == p) == 12
               for p in ("sorted", "shuffled", "bs1"))


def test_plain_accuracy_matches_the_model_run_directly(tmp_path, hf_vit, image_tree):
    from visionlens.data.images import load_image
    from visionlens.models.zoo import load_model

    out = tmp_path / "table.md"
    assert _evaluate(out, "--model", f"hf:{hf_vit}", "--data", image_tree, "--variants", "sata") == 0
    zoo = load_model(f"hf:{hf_vit}")
    paths = sorted(image_tree.rglob("*.png"))
    with torch.no_grad():
        x = torch.stack([zoo.preprocess(load_image(p)) for p in paths])
        preds = model_output(zoo.module(x)).argmax(1)
    correct = sum(int(p) == int(path.parent.name) for p, path in zip(preds, paths))
    counted = sum(r["variants"]["plain"]["correct"] for r in _records(out)
                  if r["set"] == "clean" and r["protocol"] == "sorted")
    assert abs(counted - correct) <= 1  # two code paths: a near-tie may flip one image
    assert {v for r in _records(out) for v in r["variants"]} == {"plain", "sata"}


def test_timm_vit_from_a_weights_file_on_an_imagenet_c_tree(tmp_path, timm_weights, corruption_tree):
    out = tmp_path / "c.md"
    rc = _evaluate(out, "--model", "timm:vit_tiny_patch16_224", "--weights", timm_weights, "--data", corruption_tree,
                   "--variants", "sata", "--images", "3", "--corruptions", "gaussian_noise")
    assert rc == 0
    records = _records(out)
    assert {r["set"] for r in records} == {"gaussian_noise:1", "gaussian_noise:3"}
    assert all(sum(r["n"] for r in records if r["set"] == s and r["protocol"] == "sorted") == 3
               for s in ("gaussian_noise:1", "gaussian_noise:3"))
    rows = _rows(out)
    assert rows[("sorted", "sata")]["clean"] is None and rows[("sorted", "sata")]["corrupted"] is not None
    assert 0 < rows[("bs1", "sata")]["ffn_saved"][0] < 100
    assert "| batch size 1 | sata | 1 | n/a |" in out.read_text()


# --- a killed run resumes ------------------------------------------------------------------------

def test_a_killed_run_resumes_without_duplicates(tmp_path, hf_vit, image_tree, monkeypatch):
    args = ("--model", f"hf:{hf_vit}", "--data", image_tree, "--corruptions", "contrast", "--severities", "2",
            "--variants", "sata")
    fresh = tmp_path / "fresh.md"
    assert _evaluate(fresh, *args) == 0
    out = tmp_path / "resumed.md"
    calls = {"n": 0}
    original = RecordStore.append

    def append_then_die(self, record):
        original(self, record)
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(RecordStore, "append", append_then_die)
    assert _evaluate(out, *args) == 130  # the CLI reports the interruption
    monkeypatch.setattr(RecordStore, "append", original)
    assert len(_records(out)) == 7 and not out.exists()
    with open(out.with_suffix(".jsonl"), "a") as fh:  # a line cut short by the kill
        fh.write('{"set": "clean", "protocol"')
    assert _evaluate(out, *args) == 0
    resumed = {(r["set"], r["protocol"], r["seed"], r["batch"]): r for r in _records(out)}
    expected = {(r["set"], r["protocol"], r["seed"], r["batch"]): r for r in _records(fresh)}
    assert len(resumed) == len(_records(out)) == len(expected) == 2 * (3 + 3 + 12)
    for key, record in expected.items():
        for name in ("plain", "sata"):
            assert resumed[key]["variants"][name]["correct"] == record["variants"][name]["correct"]
            assert resumed[key]["variants"][name]["saved_flops"] == record["variants"][name]["saved_flops"]
    # a finished run re-run computes nothing and writes the same table
    assert _evaluate(out, *args) == 0
    assert len(_records(out)) == len(expected)


def test_other_settings_on_the_same_records_are_refused(tmp_path, hf_vit, image_tree, capsys):
    out = tmp_path / "t.md"
    assert _evaluate(out, "--model", f"hf:{hf_vit}", "--data", image_tree, "--variants", "sata", "--images", "3") == 0
    before = out.with_suffix(".jsonl").read_bytes()
    capsys.readouterr()
    assert _evaluate(out, "--model", f"hf:{hf_vit}", "--data", image_tree, "--variants", "sata", "--images", "3",
                     "--gamma", "0.5") == 2
    one_error_line(capsys.readouterr().err, "gamma", "t.jsonl")
    assert out.with_suffix(".jsonl").read_bytes() == before


def test_a_fresh_run_keeps_a_users_table(tmp_path, hf_vit, image_tree, capsys):
    """Without records to resume, an existing table is the user's: refused before any work (no
    .jsonl started). With records of the same settings a re-run rewrites its own table
    (test_a_killed_run_resumes_without_duplicates)."""
    out = tmp_path / "t.md"
    out.write_bytes(b"mine")
    assert _evaluate(out, "--model", f"hf:{hf_vit}", "--data", image_tree, "--variants", "sata", "--images", "3") == 2
    one_error_line(capsys.readouterr().err, str(out), "--force")
    assert out.read_bytes() == b"mine" and list(tmp_path.iterdir()) == [out]


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "not-vit", "corruption", "folder-corruption", "variant", "no-data",
                                  "empty", "device"])
def test_bad_input_is_one_line(case, tmp_path, capsys, hf_vit, image_tree, corruption_tree):
    data = {"missing": tmp_path / "nowhere", "folder-corruption": corruption_tree, "empty": tmp_path}.get(case, image_tree)
    argv = ["--model", "world-cnn" if case == "not-vit" else f"hf:{hf_vit}", "--data", data]
    argv += {"corruption": ["--corruptions", "fog"], "folder-corruption": ["--corruptions", "snow"],
             "variant": ["--variants", "sata,magic"], "device": ["--device", "gpu9"]}.get(case, [])
    if case == "no-data":
        argv = ["--model", f"hf:{hf_vit}"]
    names = {"missing": ["nowhere"], "not-vit": ["world-cnn", "ViT"], "corruption": ["fog", "gaussian_noise"],
             "folder-corruption": ["snow", "contrast"], "variant": ["magic"], "no-data": ["--data"],
             "empty": ["no class sub-folder"], "device": ["gpu9"]}[case]
    out = tmp_path / "x.md"
    assert _evaluate(out, *argv) == 2
    one_error_line(capsys.readouterr().err, *names)
    assert not out.exists() and not out.with_suffix(".jsonl").exists()


def test_an_unreadable_image_is_left_out_on_one_line_and_the_rest_scored(tmp_path, hf_vit, image_tree, capsys):
    """A truncated PNG used to stop the run with exit 2 after batches were recorded: now it is left
    out of its batch (one error: line, once), the other images are scored, the .json lists it and
    the exit status is 1; a resumed run reports it again from its records."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(image_tree, data)
    bad = data / "1" / "trunc.png"
    bad.write_bytes((image_tree / "1" / "img0.png").read_bytes()[:100])
    out = tmp_path / "t.md"
    assert _evaluate(out, "--model", f"hf:{hf_vit}", "--data", data, "--corruptions", "contrast",
                     "--severities", "1", "--variants", "sata") == 1
    one_error_line(capsys.readouterr().err, str(bad), "truncated", "left out")
    raw = strict_json(out.with_suffix(".json").read_text())
    assert [s["path"] for s in raw["skipped"]] == [str(bad)]
    assert raw["images"] == {"clean": 12, "contrast:1": 12}
    assert "left out: 1 unreadable image" in out.read_text()
    records = _records(out)
    for protocol in ("sorted", "shuffled", "bs1"):
        assert sum(r["n"] for r in records if r["set"] == "clean" and r["protocol"] == protocol) == 12
    assert any(r.get("skipped") for r in records)
    empty = [r for r in records if r["n"] == 0]  # batch size 1: the bad image's batch holds nothing
    assert empty and all(r["variants"] == {} for r in empty)
    rows = _rows(out)
    assert rows[("bs1", "plain")]["clean"] is not None
    # the same command again: every batch is recorded, the image is still reported (exit 1)
    assert _evaluate(out, "--model", f"hf:{hf_vit}", "--data", data, "--corruptions", "contrast",
                     "--severities", "1", "--variants", "sata") == 1
    one_error_line(capsys.readouterr().err, str(bad))
    assert len(_records(out)) == len(records)
