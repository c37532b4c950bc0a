"""torchvision:NAME / timm:NAME models with local weights, through the API and the CLI."""

import json
import pickle

import pytest
import torch

import visionlens
from visionlens.cli import main
from visionlens.errors import InputError

tv = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save({"state_dict": tv.models.resnet18(num_classes=7).state_dict()}, path)
    return path


def test_torchvision_model_from_a_local_state_dict(resnet_weights):
    zoo = visionlens.load_model("torchvision:resnet18", weights=resnet_weights)
    assert zoo.module.fc.out_features == 7 and zoo.class_names is None and not zoo.module.training
    exp = visionlens.GradCAM(zoo.module)(torch.randn(2, 3, 64, 64))
    assert exp.layer == "layer4"


def test_timm_model_from_a_local_state_dict(tmp_path):
    timm = pytest.importorskip("timm")
    path = tmp_path / "t.pth"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=4).state_dict(), path)
    zoo = visionlens.load_model("timm:resnet18", weights=path)
    assert zoo.module.fc.out_features == 4


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "spec, make, message",
    [
        # (a spec without weights loads pretrained weights: tests/models/test_model_specs.py)
        ("torchvision:resnet19", "good", "unknown torchvision model 'resnet19'; close names: resnet18"),
        ("caffe:alexnet", "good", "unknown model library 'caffe'"),
        ("torchvision:resnet34", "good", "does not fit torchvision:resnet34"),
        ("torchvision:resnet18", "evil", "not a safe PyTorch state dict"),
        ("torchvision:resnet18", "missing", "no such state dict file"),
    ],
)
def test_bad_library_models_give_one_line_errors(tmp_path, resnet_weights, spec, make, message, capsys):
    weights = {"good": resnet_weights, None: None, "missing": tmp_path / "nope.pth"}.get(make)
    if make == "evil":
        weights = tmp_path / "evil.pth"
        weights.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(InputError) as info:
        visionlens.load_model(spec, weights=weights)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "pwned" not in capsys.readouterr().out


def test_an_unknown_name_with_nothing_close_says_how_many_are_known():
    with pytest.raises(InputError) as info:
        visionlens.load_model("torchvision:zzzzzz")
    text = str(info.value)
    assert text.startswith("unknown torchvision model 'zzzzzz'; ") and " are known, e.g. " in text
    assert "close names" not in text  # none is close; the first names of the list are not offered as if they were


def test_cli_relevance_cam_on_a_torchvision_model(tmp_path, resnet_weights, imagenet_photos):
    out = tmp_path / "out"
    code = main(["explain", str(imagenet_photos[0]), "--model", "torchvision:resnet18", "--weights", str(resnet_weights),
                 "--method", "relevance-cam@layer2,gradcam", "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] == {"relevance-cam@layer2": "layer2", "gradcam": "layer4"}
    assert summary["images"][0]["predicted_name"].startswith("class ")


def test_default_gradcam_layer_of_a_vit_is_the_last_norm1():
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()
    exp = visionlens.GradCAM(vit)(torch.randn(2, 3, 32, 32))
    assert exp.layer == "blocks.1.norm1" and exp.raw.shape == (2, 4, 4)


def test_layers_lists_an_architecture_without_weights_and_takes_weights(tmp_path, capsys):
    from visionlens.cli import main

    assert main(["layers", "torchvision:resnet18", "--size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("layer4 ") and "(1, 512, 2, 2)" in line for line in lines)
    (tmp_path / "junk.pth").write_text("junk")
    assert main(["layers", "torchvision:resnet18", "--weights", str(tmp_path / "junk.pth")]) == 2
    assert "not a PyTorch state dict file" in capsys.readouterr().err
