"""Model specs as the ecosystem means them (timm:NAME, torchvision:NAME, hf:ID_OR_DIR): pretrained
weights through each library's own cache, local files, preprocessing and class names from the
model's own config, recorded in summary.json. Random-init models saved locally; no network."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import one_error_line, strict_json
from visionlens.cli import main
from visionlens.errors import InputError, VisionlensWarning
from visionlens.models import load_model

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")
transformers = pytest.importorskip("transformers")


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((300, 420, 3)) * 255).astype("uint8"))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in offline mode (timm's pretrained weights live there)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _cache_timm_weights(hub: Path, repo: str, module: torch.nn.Module) -> None:
    """Put ``module``'s weights where huggingface_hub looks for ``repo``'s model.safetensors."""
    from safetensors.torch import save_file

    folder = hub / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, snapshot / "model.safetensors")


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every float parameter redrawn (library inits zero some heads, which would give flat maps)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return module


# --- timm ------------------------------------------------------------------------------------

def test_timm_pretrained_loads_from_the_hub_cache_with_its_own_preprocessing(offline_hub, photo):
    reference = timm.create_model("resnet18", pretrained=False)
    _cache_timm_weights(offline_hub, reference.pretrained_cfg["hf_hub_id"], reference)
    zoo = load_model("timm:resnet18")
    assert all(torch.equal(a, b) for a, b in zip(zoo.module.state_dict().values(), reference.state_dict().values()))
    assert zoo.class_names is not None and len(zoo.class_names) == 1000
    assert zoo.source == {"spec": "timm:resnet18", "weights": "pretrained"}
    timm_transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=zoo.module))
    assert (timm_transform(photo) - zoo.preprocess(photo)).abs().max() < 1e-5
    assert zoo.preprocess.interpolation == "bicubic" and zoo.preprocess.resize == 235  # crop_pct 0.95


def test_timm_pretrained_that_cannot_be_fetched_names_weights(offline_hub):
    with pytest.raises(InputError) as err:
        load_model("timm:resnet18")
    assert "--weights" in str(err.value) and "\n" not in str(err.value)
    reason = str(err.value).split("(", 1)[1].split(")")[0]  # the library's message, cut at a word
    assert len(reason) < 200 and (reason.endswith(" ...") or len(reason) < 160)


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """An empty hub cache, online mode, and an endpoint on a loopback port that nothing listens on
    (a connection is refused at once): what a machine without internet sees, without a network."""
    import socket

    import huggingface_hub.constants as constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_an_unreachable_hub_fails_at_once_and_cached_weights_still_load(unreachable_hub):
    """Without the fallback, huggingface_hub retries for about a minute and then fails with its own
    message; the load runs in offline mode instead (and offline mode is put back afterwards)."""
    import huggingface_hub.constants as constants

    for spec, hint in (("timm:resnet18", "--weights FILE"), ("hf:nobody/not-cached", "hf:LOCAL_DIR")):
        with pytest.raises(InputError) as err:
            load_model(spec)
        assert "127.0.0.1 cannot be reached" in str(err.value) and hint in str(err.value)
        assert constants.HF_HUB_OFFLINE is False
    reference = timm.create_model("resnet18", pretrained=False)
    _cache_timm_weights(unreachable_hub, reference.pretrained_cfg["hf_hub_id"], reference)
    zoo = load_model("timm:resnet18")
    assert all(torch.equal(a, b) for a, b in zip(zoo.module.state_dict().values(), reference.state_dict().values()))


def test_with_a_proxy_the_hub_library_decides_reachability(monkeypatch):
    from visionlens.models.hub import _unreachable

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    assert _unreachable("https://huggingface.co") is None  # no direct connection is tried


def test_hf_local_folder_with_a_tilde_is_the_users_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _tiny_hf_vit(tmp_path / "vit")
    zoo = load_model("hf:~/vit")
    assert zoo.source["weights"] == str((tmp_path / "vit").resolve())


def test_timm_file_keeps_the_architectures_preprocessing(tmp_path, photo):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4)
    torch.save({"model": {f"module.{k}": v for k, v in vit.state_dict().items()}}, tmp_path / "vit.pt")
    zoo = load_model("timm:vit_tiny_patch16_224", weights=tmp_path / "vit.pt")
    assert zoo.preprocess.mean == (0.5, 0.5, 0.5) and zoo.preprocess.std == (0.5, 0.5, 0.5)
    assert zoo.class_names is None  # 4 classes: not ImageNet's
    assert zoo.source["weights"] == str((tmp_path / "vit.pt").resolve())


# --- torchvision -----------------------------------------------------------------------------

def test_torchvision_pretrained_loads_from_torch_hub_cache(tmp_path, monkeypatch, photo):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = tvm.get_model_weights("mobilenet_v3_small").DEFAULT
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    reference = _randomised(tvm.mobilenet_v3_small())
    torch.save(reference.state_dict(), checkpoints / Path(weights.url).name)
    zoo = load_model("torchvision:mobilenet_v3_small")
    assert all(torch.equal(a, b) for a, b in zip(zoo.module.state_dict().values(), reference.state_dict().values()))
    assert zoo.class_names == tuple(weights.meta["categories"])
    assert (weights.transforms()(photo) - zoo.preprocess(photo)).abs().max() < 1e-5


class _TouchOnLoad:
    """Unpickling this runs code: it creates ``marker`` (what a tampered checkpoint could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_cached_torchvision_checkpoint_is_loaded_weights_only(tmp_path, monkeypatch):
    """torchvision's enums load cached files with ``weights_only=False`` and no hash check; here no
    pickled code in the cached file runs: the load is refused in one line."""
    import torchvision.models._api as tv_api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = tvm.get_model_weights("mobilenet_v3_small").DEFAULT
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = dict(tvm.mobilenet_v3_small().state_dict())
    state["extra"] = _TouchOnLoad(tmp_path / "code-ran")
    torch.save(state, checkpoints / Path(weights.url).name)
    loader = tv_api.load_state_dict_from_url
    with pytest.raises(InputError, match="cannot load the pretrained weights of torchvision:mobilenet_v3_small"):
        load_model("torchvision:mobilenet_v3_small")
    assert not (tmp_path / "code-ran").exists()
    assert tv_api.load_state_dict_from_url is loader  # torchvision's loader is restored


def test_torchvision_download_failure_is_one_line(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(InputError) as err:
        load_model("torchvision:mobilenet_v3_small")
    assert "--weights FILE" in str(err.value) and "name resolution" in str(err.value)


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(InputError, match="close names: .*resnet18"):
        load_model("timm:resnet181")


# --- Hugging Face ----------------------------------------------------------------------------

def _tiny_hf_vit(folder: Path, labels=("tabby", "beagle", "fox")) -> None:
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                   image_std=[0.25] * 3).save_pretrained(folder)


def test_hf_local_folder_gives_processor_preprocessing_and_id2label(tmp_path, photo):
    _tiny_hf_vit(tmp_path / "vit")
    zoo = load_model(f"hf:{tmp_path / 'vit'}")
    assert zoo.class_names == ("tabby", "beagle", "fox")
    assert zoo.preprocess.squash and zoo.preprocess.crop == 32 and zoo.preprocess.std == (0.25, 0.25, 0.25)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "vit")
    reference = processor(images=photo, return_tensors="pt")["pixel_values"][0]
    # one grey level apart at most (the processors resize through their own backend)
    assert (reference - zoo.preprocess(photo)).abs().max() < 2.5 / 255 / 0.25


def test_hf_convnext_style_processor_uses_crop_pct(tmp_path):
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2)
    transformers.ResNetForImageClassification(config).save_pretrained(tmp_path / "r")
    transformers.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875).save_pretrained(tmp_path / "r")
    zoo = load_model(f"hf:{tmp_path / 'r'}")
    assert (zoo.preprocess.resize, zoo.preprocess.crop, zoo.preprocess.squash) == (73, 64, False)
    assert zoo.class_names is None  # LABEL_0, LABEL_1 placeholders


def test_hf_backbone_folder_loads_the_bare_model(tmp_path):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8)
    transformers.ViTModel(config).save_pretrained(tmp_path / "b")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "b")
    zoo = load_model(f"hf:{tmp_path / 'b'}")
    assert type(zoo.module).__name__ == "ViTModel"


def test_an_hf_detector_or_segmenter_is_one_line_not_a_headless_classifier(tmp_path, capsys, photo):
    """Loaded as a backbone, a saved SegFormer lost its decode head and its hidden state was read
    as class scores (a DETR "predicted class 23", exit 0)."""
    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                                          mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=3)
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "seg")
    transformers.SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "seg")
    with pytest.raises(InputError, match=r"is a SegformerForSemanticSegmentation; visionlens explains Hugging Face "
                                         r"image classifiers and backbones"):
        load_model(f"hf:{tmp_path / 'seg'}")
    photo.save(tmp_path / "p.png")
    capsys.readouterr()  # transformers' save progress
    code = main(["explain", str(tmp_path / "p.png"), "--model", f"hf:{tmp_path / 'seg'}", "--out", str(tmp_path / "o"),
                 "--quiet"])
    assert code == 2 and not (tmp_path / "o").exists()
    one_error_line(capsys.readouterr().err, "SegformerForSemanticSegmentation", "docs/detection.md")


def test_weights_missing_from_an_hf_checkpoint_are_one_warning_line_not_a_load_report(tmp_path, capsys, photo):
    """A backbone checkpoint saved under a classifier's architecture: the head starts at random.
    transformers printed a multi-line "LOAD REPORT"; the command prints one warning: line."""
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8, num_labels=3)
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "v")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "v")
    saved = json.loads((tmp_path / "v" / "config.json").read_text())
    (tmp_path / "v" / "config.json").write_text(json.dumps({**saved, "architectures": ["ViTForImageClassification"]}))
    with pytest.warns(VisionlensWarning, match=r"2 weight\(s\) are not in the checkpoint and start at random "
                                               r"\(classifier.bias, classifier.weight\)"):
        load_model(f"hf:{tmp_path / 'v'}")
    photo.save(tmp_path / "p.png")
    capsys.readouterr()
    code = main(["explain", str(tmp_path / "p.png"), "--model", f"hf:{tmp_path / 'v'}", "--out", str(tmp_path / "o"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "LOAD REPORT" not in err
    assert [line for line in err.splitlines() if "start at random" in line][0].startswith("warning: hf:")


def test_hf_failures_are_one_line(tmp_path, offline_hub):
    with pytest.raises(InputError, match="hf:LOCAL_DIR"):
        load_model("hf:nobody/not-cached")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="save_pretrained"):
        load_model(f"hf:{tmp_path / 'empty'}")
    with pytest.raises(InputError, match="no such folder"):  # not a repo id the hub would reject
        load_model(f"hf:{tmp_path / 'missing'}")
    _tiny_hf_vit(tmp_path / "vit")
    with pytest.raises(InputError, match="--weights is for"):
        load_model(f"hf:{tmp_path / 'vit'}", weights=tmp_path / "x.pt")


# --- the commands ----------------------------------------------------------------------------

def test_explain_records_the_spec_and_its_preprocessing(tmp_path, photo, capsys):
    _tiny_hf_vit(tmp_path / "vit")
    photo.save(tmp_path / "p.png")
    out = tmp_path / "out"
    code = main(["explain", str(tmp_path / "p.png"), "--model", f"hf:{tmp_path / 'vit'}", "--method", "gradcam",
                 "--target", "beagle", "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = strict_json((out / "summary.json").read_text())
    source = summary["model_source"]
    assert source["spec"] == f"hf:{tmp_path / 'vit'}" and source["processor"] == "ViTImageProcessor"
    assert source["preprocess"]["crop"] == 32 and source["preprocess"]["squash"] is True
    assert source["classes"] == 3


@pytest.mark.parametrize("command", ["explain-pair", "bank", "layers"])
def test_every_model_command_takes_weights(tmp_path, photo, capsys, command):
    net = _randomised(timm.create_model("resnet18", pretrained=False, num_classes=3))
    torch.save(net.state_dict(), tmp_path / "r.pt")
    photo.save(tmp_path / "a.png")
    photo.transpose(Image.FLIP_LEFT_RIGHT).save(tmp_path / "b.png")
    spec = ["--model", "timm:resnet18", "--weights", str(tmp_path / "r.pt")]
    if command == "explain-pair":
        argv = ["explain-pair", str(tmp_path / "a.png"), str(tmp_path / "b.png"), *spec, "--out", str(tmp_path / "o"),
                "--device", "cpu"]
    elif command == "bank":
        folder = tmp_path / "imgs" / "0"
        folder.mkdir(parents=True)
        photo.save(folder / "a.png")
        argv = ["bank", "--images", str(tmp_path / "imgs"), *spec, "--out", str(tmp_path / "bank.pt"), "--device", "cpu"]
    else:
        argv = ["layers", "timm:resnet18", "--weights", str(tmp_path / "r.pt")]
    assert main(argv) == 0, capsys.readouterr().err
    if command == "explain-pair":
        assert strict_json((tmp_path / "o" / "summary.json").read_text())["model_source"]["spec"] == "timm:resnet18"


def test_a_checkpoint_of_another_architecture_is_one_line(tmp_path, capsys):
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), tmp_path / "r.pt")
    code = main(["layers", "timm:resnet34", "--weights", str(tmp_path / "r.pt")])
    assert code == 2
    one_error_line(capsys.readouterr().err, "does not fit timm:resnet34")


def test_a_flat_map_is_one_warning_line_in_the_cli(tmp_path, photo, capsys):
    net = _randomised(timm.create_model("resnet18", pretrained=False, num_classes=3))
    with torch.no_grad():
        net.fc.weight.zero_()  # a head that ignores the features: every Grad-CAM map is flat
    torch.save(net.state_dict(), tmp_path / "r.pt")
    photo.save(tmp_path / "p.png")
    code = main(["explain", str(tmp_path / "p.png"), "--model", "timm:resnet18", "--weights", str(tmp_path / "r.pt"),
                 "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "layer4" in warnings[0], err
    assert warnings[0].startswith("warning: " + str(tmp_path / "p.png") + ": all-zero"), err  # which image
    assert "FlatMapWarning" not in err and "Traceback" not in err


def test_flat_map_warnings_are_in_the_json_summary(tmp_path, photo, capsys):
    net = _randomised(timm.create_model("resnet18", pretrained=False, num_classes=3))
    with torch.no_grad():
        net.fc.weight.zero_()
    torch.save(net.state_dict(), tmp_path / "r.pt")
    photo.save(tmp_path / "p.png")
    code = main(["explain", str(tmp_path / "p.png"), "--model", "timm:resnet18", "--weights", str(tmp_path / "r.pt"),
                 "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet", "--json"])
    io = capsys.readouterr()
    assert code == 0
    summary = strict_json(io.out)
    assert len(summary["warnings"]) == 1 and "layer4" in summary["warnings"][0]


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:resnet18", "hf:some/model"])
def test_a_library_that_is_not_installed_is_one_line_naming_its_extra(monkeypatch, spec, tmp_path, capsys):
    """Before: torchvision:NAME without torchvision was an internal error (exit 70) in every command."""
    import sys

    library = {"torchvision": "torchvision", "timm": "timm", "hf": "transformers"}[spec.split(":")[0]]
    extra = {"torchvision": "torchvision", "timm": "timm", "transformers": "hf"}[library]
    for name in [m for m in sys.modules if m == library or m.startswith(library + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, library, None)  # the import fails
    with pytest.raises(InputError, match=rf"{library} is not installed; pip install 'visionlens\[{extra}\]'"):
        load_model(spec)
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    assert main(["explain", str(image), "--model", spec, "--out", str(tmp_path / "o")]) == 2
    assert f"pip install 'visionlens[{extra}]'" in one_error_line(capsys.readouterr().err)
