"""--weights files beyond a classifier's torch.save: torchvision detectors and segmenters with their
own number of classes (read from the file's head), safetensors files (by suffix or header, with
the same checks as .pt files), and an offline torchvision:NAME without --weights that prints only
its one error line. Random-init models saved locally; nothing is downloaded."""

from __future__ import annotations

import inspect
import sys
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

import visionlens
from helpers import one_error_line, strict_json
from visionlens.cli import main
from visionlens.errors import InputError
from visionlens.models.zoo import dense_options, load_state_dict_file

tvm = pytest.importorskip("torchvision.models")
from torchvision.models import detection, segmentation  # noqa: E402

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"
SEGMENTER = "deeplabv3_mobilenet_v3_large"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "p.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((200, 260, 3)) * 255).astype("uint8")).save(path)
    return path


@pytest.fixture(scope="module")
def dense_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dense")
    torch.manual_seed(0)
    det = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    with torch.no_grad():  # every proposal scores as class 2: a random detector that detects
        det.roi_heads.box_predictor.cls_score.bias[2] = 8.0
    torch.save(det.state_dict(), folder / "det3.pt")
    seg = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4, aux_loss=True)
    torch.save(seg.state_dict(), folder / "seg4aux.pt")
    return folder


def _explain(capsys, *argv):
    code = main(["explain", *map(str, argv), "--device", "cpu", "--quiet"])
    return code, capsys.readouterr()


# --- detectors and segmenters with their own classes -------------------------------------------

DENSE = tvm.list_models(module=tvm.detection) + tvm.list_models(module=tvm.segmentation)


@pytest.mark.parametrize("name", DENSE)
def test_the_number_of_classes_is_read_from_every_dense_family(name):
    """Every torchvision detector and segmenter (built on the meta device: shapes only)."""
    params = inspect.signature(tvm.get_model_builder(name)).parameters
    kwargs = {"aux_loss": True} if "aux_loss" in params else {}
    if "num_keypoints" in params:
        kwargs["num_keypoints"] = 5
    with torch.device("meta"):
        state = tvm.get_model(name, weights=None, weights_backbone=None, num_classes=6, **kwargs).state_dict()
    options = dense_options(state)
    assert options["num_classes"] == 6
    assert options["aux_loss"] == ("aux_loss" in params)
    assert options.get("num_keypoints") == kwargs.get("num_keypoints")


@pytest.mark.parametrize("name,classes,kwargs", [
    (DETECTOR, 3, {}),
    ("ssdlite320_mobilenet_v3_large", 5, {}),
    (SEGMENTER, 4, {"aux_loss": True}),
    (SEGMENTER, 2, {}),
    ("lraspp_mobilenet_v3_large", 7, {}),
])
def test_a_dense_model_with_its_own_classes_loads_with_generic_names(tmp_path, name, classes, kwargs):
    torch.manual_seed(0)
    built = tvm.get_model(name, weights=None, weights_backbone=None, num_classes=classes, **kwargs)
    torch.save({"model": built.state_dict()}, tmp_path / "w.pt")
    zoo = visionlens.load_model(f"torchvision:{name}", weights=tmp_path / "w.pt")
    loaded = zoo.module.state_dict()
    assert loaded.keys() == built.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in built.state_dict().items())
    assert zoo.class_names == tuple(f"class {i}" for i in range(classes))
    assert zoo.describe()["classes"] == classes


def test_a_dense_file_with_the_default_classes_keeps_the_weights_categories(tmp_path):
    torch.save(segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).state_dict(), tmp_path / "w.pt")
    zoo = visionlens.load_model("torchvision:lraspp_mobilenet_v3_large", weights=tmp_path / "w.pt")
    assert len(zoo.class_names) == 21 and zoo.class_names[15] == "person"


def test_a_dense_file_without_a_readable_head_is_still_one_line(tmp_path, photo, dense_files, capsys):
    state = torch.load(dense_files / "det3.pt", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("roi_heads.box_predictor.cls_score")}
    torch.save(state, tmp_path / "headless.pt")
    code, io = _explain(capsys, photo, "--model", f"torchvision:{DETECTOR}", "--weights", tmp_path / "headless.pt",
                        "--out", tmp_path / "o")
    assert code == 2
    # the default 91-class model is built; its box regression (4 rows a class) is the first misfit
    one_error_line(io.err, "does not fit", "'roi_heads.box_predictor.bbox_pred.weight' has shape (12, 1024) in the file")
    assert not (tmp_path / "o").exists()


def test_cli_explains_a_fine_tuned_detector(dense_files, photo, tmp_path, capsys):
    out = tmp_path / "det"
    code, io = _explain(capsys, photo, "--model", f"torchvision:{DETECTOR}", "--weights", dense_files / "det3.pt",
                        "--score-threshold", "0", "--top", "1", "--out", out)
    assert code == 0, io.err
    summary = strict_json((out / "summary.json").read_text())
    assert summary["task"] == "detection" and summary["model_source"]["classes"] == 3
    [target] = summary["images"][0]["targets"]
    assert target["label"] == 2 and target["name"] == "class 2"


def test_cli_explains_a_fine_tuned_segmenter_with_an_aux_head(dense_files, photo, tmp_path, capsys):
    out = tmp_path / "seg"
    code, io = _explain(capsys, photo, "--model", f"torchvision:{SEGMENTER}", "--weights", dense_files / "seg4aux.pt",
                        "--out", out)
    assert code == 0, io.err
    summary = strict_json((out / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["model_source"]["classes"] == 4
    [target] = summary["images"][0]["targets"]
    assert 0 <= target["label"] < 4 and target["name"] == f"class {target['label']}"


@pytest.mark.parametrize("model,file", [(DETECTOR, "det3.pt"), (SEGMENTER, "seg4aux.pt")])
def test_a_class_past_the_files_last_is_one_line(dense_files, photo, tmp_path, capsys, model, file):
    code, io = _explain(capsys, photo, "--model", f"torchvision:{model}", "--weights", dense_files / file,
                        "--target", "9", "--out", tmp_path / "o")
    assert code == 2
    one_error_line(io.err, "target class 9 is out of range")


def test_a_classifier_with_its_own_class_count_takes_the_class_n_it_shows(tmp_path, photo, capsys):
    """A 10-class file has no class names; its predictions are shown as "class N", and that name is
    a target (it was "unknown class 'class 2'")."""
    torch.manual_seed(0)
    torch.save(tvm.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    zoo = visionlens.load_model("torchvision:resnet18", weights=tmp_path / "r18.pt")
    assert zoo.class_names is None and zoo.class_name(2) == "class 2"
    assert zoo.class_indices(["class 2", "Class 7", "3"]) == [2, 7, 3]
    code, io = _explain(capsys, photo, "--model", "torchvision:resnet18", "--weights", tmp_path / "r18.pt",
                        "--target", "class 2", "--out", tmp_path / "o")
    assert code == 0, io.err
    summary = strict_json((tmp_path / "o" / "summary.json").read_text())
    assert summary["model_source"]["classes"] is None


# --- safetensors ---------------------------------------------------------------------------------

safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def resnet_state():
    torch.manual_seed(0)
    return tvm.resnet18(num_classes=10).state_dict()


@pytest.mark.parametrize("name,prefix", [("w.safetensors", ""), ("w.SAFETENSORS", "module."), ("w.bin", ""),
                                         ("model.bin", "model.")])
def test_a_safetensors_file_loads_by_suffix_or_header(tmp_path, resnet_state, name, prefix):
    safetensors_torch.save_file({prefix + k: v for k, v in resnet_state.items()}, tmp_path / name)
    zoo = visionlens.load_model("torchvision:resnet18", weights=tmp_path / name)
    assert zoo.module.fc.out_features == 10
    assert all(torch.equal(zoo.module.state_dict()[k], v) for k, v in resnet_state.items())


def test_a_safetensors_files_head_is_found_though_its_keys_are_sorted_by_name(tmp_path):
    """convnext's blocks hold 2-d Linear weights; sorted by name they come after the classifier."""
    built = tvm.convnext_tiny(num_classes=12)
    safetensors_torch.save_file(built.state_dict(), tmp_path / "c.safetensors")
    assert list(safetensors_torch.load_file(tmp_path / "c.safetensors"))[-1].startswith("features.")
    zoo = visionlens.load_model("torchvision:convnext_tiny", weights=tmp_path / "c.safetensors")
    assert zoo.module.classifier[2].out_features == 12


def test_a_timm_model_from_safetensors_on_the_command_line(tmp_path, photo, capsys):
    timm = pytest.importorskip("timm")
    safetensors_torch.save_file(timm.create_model("resnet18", pretrained=False, num_classes=5).state_dict(),
                                tmp_path / "t.safetensors")
    code, io = _explain(capsys, photo, "--model", "timm:resnet18", "--weights", tmp_path / "t.safetensors",
                        "--out", tmp_path / "o")
    assert code == 0, io.err
    assert strict_json((tmp_path / "o" / "summary.json").read_text())["model_source"]["weights"].endswith("t.safetensors")


def test_a_dense_model_from_safetensors(tmp_path):
    built = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    safetensors_torch.save_file(built.state_dict(), tmp_path / "seg.safetensors")
    zoo = visionlens.load_model("torchvision:lraspp_mobilenet_v3_large", weights=tmp_path / "seg.safetensors")
    assert len(zoo.class_names) == 3


def _nan_state(state):
    state = dict(state)
    state["fc.bias"] = torch.full_like(state["fc.bias"], float("nan"))
    return state


@pytest.mark.parametrize("make,message", [
    (lambda p, s: safetensors_torch.save_file(_nan_state(s), p), "'fc.bias' holds NaN or infinite values"),
    (lambda p, s: safetensors_torch.save_file({**s, "layer2.0.conv1.weight": torch.zeros(128, 64, 5, 5)}, p),
     "'layer2.0.conv1.weight' has shape (128, 64, 5, 5) in the file, (128, 64, 3, 3) in the model"),
    (lambda p, s: safetensors_torch.save_file({}, p), "expected a state dict of tensors"),
    (lambda p, s: p.write_bytes(b"\x10" + bytes(7) + b"{not json at all}"), "not a valid safetensors file"),
    (lambda p, s: p.write_bytes(b""), "not a valid safetensors file"),
    (lambda p, s: torch.save(s, p), "named .safetensors but written by torch.save; rename it"),
])
def test_bad_safetensors_files_are_one_line(tmp_path, photo, resnet_state, capsys, make, message):
    path = tmp_path / "w.safetensors"
    make(path, resnet_state)
    code, io = _explain(capsys, photo, "--model", "torchvision:resnet18", "--weights", path, "--out", tmp_path / "o")
    assert code == 2
    one_error_line(io.err, message)
    assert not (tmp_path / "o").exists()


def test_a_truncated_safetensors_file_is_one_line(tmp_path, resnet_state):
    safetensors_torch.save_file(resnet_state, tmp_path / "full.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "full.safetensors").read_bytes()[:4000])
    with pytest.raises(InputError, match="not a valid safetensors file"):
        load_state_dict_file(tmp_path / "cut.safetensors")


def test_without_the_safetensors_package_the_line_says_how_to_install_it(tmp_path, resnet_state, monkeypatch):
    safetensors_torch.save_file(resnet_state, tmp_path / "w.safetensors")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # the import fails
    with pytest.raises(InputError, match="pip install safetensors"):
        load_state_dict_file(tmp_path / "w.safetensors")


# --- torchvision:NAME without --weights, offline -------------------------------------------------

@pytest.fixture
def offline_torch_hub(tmp_path, monkeypatch):
    """An empty torch.hub cache and a download that fails as it does without internet."""
    def unreachable(url, *args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)


def test_an_offline_pretrained_torchvision_model_prints_nothing_from_the_api(offline_torch_hub, capfd):
    with pytest.raises(InputError, match="cannot load the pretrained weights of torchvision:resnet18"):
        visionlens.load_model("torchvision:resnet18")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_an_offline_pretrained_torchvision_model_is_one_line_on_the_command_line(offline_torch_hub, photo, tmp_path, capfd):
    code = main(["explain", str(photo), "--model", "torchvision:resnet18", "--device", "cpu", "--out", str(tmp_path / "o")])
    out, err = capfd.readouterr()
    assert code == 2 and "Downloading" not in out + err
    one_error_line(err, "cannot load the pretrained weights of torchvision:resnet18", "--weights FILE")


def test_cached_torchvision_weights_load_without_a_download_or_a_line(offline_torch_hub, tmp_path, capfd):
    weights = tvm.get_model_weights("resnet18").DEFAULT
    cached = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    state = tvm.resnet18().state_dict()
    torch.save(state, cached)
    zoo = visionlens.load_model("torchvision:resnet18")
    assert torch.equal(zoo.module.state_dict()["fc.weight"], state["fc.weight"])
    assert zoo.describe()["weights"] == "pretrained" and zoo.class_names[0] == "tench"
    assert capfd.readouterr() == ("", "")
