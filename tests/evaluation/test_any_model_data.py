"""`visionlens evaluate` on any model (specs with --weights, nn.Modules) and any data (ImageFolder
trees, Hugging Face datasets saved on disk, (image, label) pairs), resumed without recomputing."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionlens.cli import main
from visionlens.errors import InputError
from visionlens.evaluation import evaluate, read_folder_results
from visionlens.models import Preprocess, load_model

from helpers import TinyGapNet, one_error_line, strict_json

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("cat", "big dog", "bird")
FAST = {"methods": ["gradcam"], "metrics": ["deletion", "insertion"], "step": 256, "batch_size": 4,
        "device": "cpu", "progress": False}


def _tiny_model() -> torch.nn.Module:
    """TinyGapNet over 32 px inputs, with its preprocessing and class names as attributes."""
    torch.manual_seed(0)
    module = TinyGapNet(classes=len(CLASSES)).eval()
    module.preprocess = Preprocess(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    module.class_names = CLASSES
    return module


def _image(seed: int, size=(40, 36)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _tree(root: Path, files: dict[str, int]) -> Path:
    """An ImageFolder tree: ``{"class/file.png": count}`` -> that many images per listed folder."""
    seed = 0
    for folder, count in files.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            _image(seed := seed + 1).save(root / folder / f"img{i}.png")
    return root


def _records(out: Path) -> dict[str, dict]:
    return {r["image"]: r for r in read_folder_results(out) if r["image"] != "*"}


def _hf_dataset(labels: list[int], names: list[str]):
    datasets = pytest.importorskip("datasets")
    images = [_image(i) for i in range(len(labels))]
    return datasets.Dataset.from_dict({"picture": images, "kind": labels}).cast_column(
        "kind", datasets.ClassLabel(names=names))


def test_image_folder_named_by_index_keys_by_relative_path_and_resumes(tmp_path):
    data = _tree(tmp_path / "tree", {"0": 2, "2": 1})
    out = tmp_path / "o"
    evaluate({"tiny": _tiny_model()}, data=data, out=out, n=2, **FAST)
    assert set(_records(out)) == {"0/img0.png", "0/img1.png"}
    report = evaluate({"tiny": _tiny_model()}, data=data, out=out, n=None, **FAST)  # resumed to every image
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    recs = _records(out)
    assert set(recs) == {"0/img0.png", "0/img1.png", "2/img0.png"}
    assert {k: r["label"] for k, r in recs.items()} == {"0/img0.png": 0, "0/img1.png": 0, "2/img0.png": 2}
    assert all(0.0 <= r["metrics"]["deletion"] <= 1.0 for r in recs.values())
    assert {r["metric"]: r["n"] for r in report["rows"]} == {"deletion": 3, "insertion": 3}
    settings = strict_json((out / "settings.json").read_text())
    assert settings["data"]["kind"] == "imagefolder" and settings["models"]["tiny"]["spec"] == "module:TinyGapNet"

    before = (out / "results.jsonl").read_bytes()
    again = evaluate({"tiny": _tiny_model()}, data=data, out=out, n=None, **FAST)
    assert (out / "results.jsonl").read_bytes() == before  # nothing computed the second time
    assert again["rows"] == report["rows"]


def test_image_folder_named_by_class_names(tmp_path):
    """Folder names match the model's class names whatever their case, underscores or spaces."""
    data = _tree(tmp_path / "tree", {"Bird": 1, "BIG_DOG": 1, "cat": 1})
    model = load_model(_tiny_model(), preprocess=_tiny_model().preprocess, class_names=CLASSES)
    evaluate([model], data=str(data), out=tmp_path / "o", **FAST)
    labels = {k: r["label"] for k, r in _records(tmp_path / "o").items()}
    assert labels == {"Bird/img0.png": 2, "BIG_DOG/img0.png": 1, "cat/img0.png": 0}


def test_image_folder_named_by_imagenet_wordnet_ids(tmp_path):
    """ImageNet's own train/val layout: one folder per WordNet ID (n01440764 is class 0)."""
    data = _tree(tmp_path / "tree", {"n01440764": 1, "n02123045": 1})
    evaluate(["mobilenet_v2"], data=str(data), out=tmp_path / "o", **FAST)
    labels = {k: r["label"] for k, r in _records(tmp_path / "o").items()}
    assert labels == {"n01440764/img0.png": 0, "n02123045/img0.png": 281}


def test_an_unknown_class_folder_is_one_line(tmp_path, capsys):
    data = _tree(tmp_path / "tree", {"goldfish": 1, "tabby_kat": 1})
    out = tmp_path / "o"
    assert main(["evaluate", "--models", "mobilenet_v2", "--data", str(data), "--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err, "'tabby_kat'", "mobilenet_v2", "close names", "tabby cat")
    assert "goldfish" not in line
    assert not out.exists()
    with pytest.raises(InputError, match="'parrot' is none of the classes"):
        evaluate([_tiny_model()], data=_tree(tmp_path / "t2", {"parrot": 1}), out=tmp_path / "o2", **FAST)
    argv = ["evaluate", "--models", "mobilenet_v2", "--data", str(data), "--out", str(out)]
    assert main([*argv, "--split", "test"]) == 2
    one_error_line(capsys.readouterr().err, "--split is for a Hugging Face dataset")


def test_a_folder_of_no_known_kind_is_one_line(tmp_path, capsys):
    (tmp_path / "loose.png").write_bytes(b"")
    assert main(["evaluate", "--models", "mobilenet_v2", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys.readouterr().err, "labels.csv", "ImageFolder", "save_to_disk")


def test_hf_dataset_on_disk_maps_class_label_names_and_resumes(tmp_path):
    root = tmp_path / "hf"
    _hf_dataset([0, 1, 1, 0, 1], ["cat", "bird"]).save_to_disk(str(root))
    out = tmp_path / "o"
    evaluate({"tiny": _tiny_model()}, data=root, n=4, out=out, **FAST)
    recs = _records(out)
    assert {k: r["label"] for k, r in recs.items()} == {"data/0": 0, "data/1": 2, "data/2": 2, "data/3": 0}
    settings = strict_json((out / "settings.json").read_text())["data"]
    assert settings["kind"] == "hf-dataset" and settings["label_column"] == "kind"
    assert settings["image_column"] == "picture" and settings["fingerprint"]
    before = (out / "results.jsonl").read_bytes()
    evaluate({"tiny": _tiny_model()}, data=root, n=4, out=out, **FAST)
    assert (out / "results.jsonl").read_bytes() == before


def test_hf_dataset_dict_needs_a_split(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "hf"
    part = _hf_dataset([1, 0], ["cat", "bird"])
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(root))
    out = tmp_path / "o"
    capsys.readouterr()  # the datasets library's own progress bars
    assert main(["evaluate", "--models", "mobilenet_v2", "--data", str(root), "--out", str(out), "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "train, test", "--split")
    assert main(["evaluate", "--models", "mobilenet_v2", "--data", str(root), "--split", "val", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "--split val", "train, test")
    assert not out.exists()

    evaluate({"tiny": _tiny_model()}, data=root, split="test", out=out, **FAST)
    assert {k: r["label"] for k, r in _records(out).items()} == {"test/0": 2, "test/1": 0}
    with pytest.raises(InputError, match=r"--data .*split test\) \(this command: .*split train\)"):  # other results
        evaluate({"tiny": _tiny_model()}, data=root, split="train", out=out, **FAST)


def test_hf_dataset_label_column_and_missing_package(tmp_path, monkeypatch):
    root = tmp_path / "hf"
    _hf_dataset([0, 1], ["cat", "bird"]).save_to_disk(str(root))
    with pytest.raises(InputError, match="--label-column kinds: no such column .*kind"):
        evaluate([_tiny_model()], data=root, label_column="kinds", out=tmp_path / "o", **FAST)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(InputError, match=r"pip install 'visionlens\[datasets\]'"):
        evaluate([_tiny_model()], data=root, out=tmp_path / "o", **FAST)


def test_pairs_in_the_api_are_keyed_by_index_or_path(tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"p{i}.png")
        _image(10 + i).save(paths[-1])
    out = tmp_path / "o"
    evaluate({"tiny": _tiny_model()}, data=[(_image(1), 1), (_image(2), 2)], out=out, **FAST)
    assert {k: r["label"] for k, r in _records(out).items()} == {"0": 1, "1": 2}
    assert strict_json((out / "settings.json").read_text())["data"]["kind"] == "pairs"

    named = tmp_path / "named"
    evaluate({"tiny": _tiny_model()}, data=iter([(paths[0], "bird"), (str(paths[1]), "Cat")]), out=named, **FAST)
    assert {k: r["label"] for k, r in _records(named).items()} == {paths[0].as_posix(): 2, paths[1].as_posix(): 0}
    with pytest.raises(InputError, match="data item 0 is not an \\(image, label\\) pair"):
        evaluate([_tiny_model()], data=[_image(1)], out=tmp_path / "bad", **FAST)


def test_an_nn_module_with_its_preprocess_and_a_name(tmp_path):
    module = _tiny_model()
    out = tmp_path / "o"
    report = evaluate({"mine": module}, data=[(_image(i), i % 3) for i in range(3)], out=out, **FAST)
    assert {r["model"] for r in report["rows"]} == {"mine"}
    source = strict_json((out / "settings.json").read_text())["models"]["mine"]
    assert source["preprocess"]["crop"] == 32 and source["weights"].startswith("sha256:")
    manifest = strict_json((out / "manifest.json").read_text())
    assert manifest["command"]["models"] == ["mine"] and manifest["command"]["data_kind"] == "pairs"
    assert sorted(p.name for p in (out / "examples").glob("mine.gradcam.*.png")) == [
        "mine.gradcam.0.png", "mine.gradcam.1.png", "mine.gradcam.2.png"]
    with torch.no_grad():
        module.fc.weight.add_(1.0)  # other weights under the same name: resuming would mix results
    with pytest.raises(InputError, match="--models mine with weights sha256:"):
        evaluate({"mine": module}, data=[(_image(i), i % 3) for i in range(3)], out=out, **FAST)


def test_a_torchvision_spec_with_weights_through_the_cli(tmp_path, capsys):
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    weights = tmp_path / "mnv3.pt"
    torch.save(tvm.mobilenet_v3_small(num_classes=1000).state_dict(), weights)
    data = _tree(tmp_path / "tree", {"281": 1, "goldfish": 1})
    out = tmp_path / "o"
    argv = ["evaluate", "--model", "torchvision:mobilenet_v3_small", "--weights", str(weights), "--data", str(data),
            "--methods", "gradcam", "--metrics", "deletion", "--step", "12544", "--device", "cpu", "--quiet",
            "--out", str(out)]
    assert main(argv) == 0
    recs = _records(out)
    assert {k: r["label"] for k, r in recs.items()} == {"281/img0.png": 281, "goldfish/img0.png": 1}
    assert {r["model"] for r in recs.values()} == {"torchvision:mobilenet_v3_small"}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["models"]["torchvision:mobilenet_v3_small"]["spec"] == "torchvision:mobilenet_v3_small"
    assert settings["data"]["kind"] == "imagefolder"
    capsys.readouterr()

    before = (out / "results.jsonl").read_bytes()
    assert main(argv) == 0
    assert (out / "results.jsonl").read_bytes() == before  # resumed: nothing computed again

    other = tmp_path / "other.pt"
    torch.save(tvm.mobilenet_v3_small(num_classes=1000).state_dict(), other)
    assert main([*argv[:4], str(other), *argv[5:]]) == 2  # the same name with other weights
    one_error_line(capsys.readouterr().err, "--models torchvision:mobilenet_v3_small with weights", "another --out")
    assert main([*argv, "--models", "mobilenet_v2,torchvision:mobilenet_v3_small"]) == 2
    one_error_line(capsys.readouterr().err, "--weights applies to one model")


def test_a_hugging_face_folder_spec_with_its_own_classes(tmp_path, capsys):
    """``hf:DIR`` (save_pretrained): class folders match its id2label names; its output object is
    scored through its logits."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
                                       id2label=dict(enumerate(CLASSES)),
                                       label2id={c: i for i, c in enumerate(CLASSES)})
    torch.manual_seed(0)
    transformers.ResNetForImageClassification(config).save_pretrained(tmp_path / "hfm")
    transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(tmp_path / "hfm")
    data = _tree(tmp_path / "tree", {"Bird": 1, "big_dog": 1})
    out = tmp_path / "o"
    capsys.readouterr()
    assert main(["evaluate", "--model", f"hf:{tmp_path / 'hfm'}", "--data", str(data), "--methods", "gradcam",
                 "--metrics", "deletion,average-drop", "--step", "256", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    recs = _records(out)
    assert {k: r["label"] for k, r in recs.items()} == {"Bird/img0.png": 2, "big_dog/img0.png": 1}
    assert all(0.0 <= r["metrics"]["deletion"] <= 1.0 and r["metrics"]["average-drop"] >= 0.0 for r in recs.values())
    assert not [r for r in read_folder_results(out) if r["image"] == "*"]  # nothing skipped


def test_a_corrupt_image_in_a_hf_dataset_is_one_line_naming_its_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    buf = io.BytesIO()
    _image(0).save(buf, format="PNG")
    rows = {"picture": [{"bytes": buf.getvalue(), "path": None}, {"bytes": b"not an image", "path": None}],
            "kind": [0, 1]}
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["cat", "bird"])})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    report = evaluate({"tiny": _tiny_model()}, data=tmp_path / "hf", batch_size=1, out=tmp_path / "o",
                      **{k: v for k, v in FAST.items() if k != "batch_size"})
    (bad,) = report["unreadable"]
    assert bad["image"] == "data/1" and "hf data/1: cannot be decoded" in bad["reason"] and "\n" not in bad["reason"]
    assert set(_records(tmp_path / "o")) == {"data/0"}  # the other image is scored
