"""Weights files given with ``--weights``: wrappers and DDP prefixes accepted, a wrong
architecture named by its first mismatched key, junk, pickled code and NaN refused in one line;
non-finite maps stop their image; every error of the command line is one line."""

from __future__ import annotations

import pickle

import pytest
import torch

import visionlens
from helpers import TinyGapNet, one_error_line, strict_json
from visionlens.cli import main
from visionlens.errors import InputError
from visionlens.models.zoo import load_state_dict_file

tv = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return tv.models.resnet18(num_classes=10).state_dict()


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def _explain(photo, *args) -> int:
    return main(["explain", str(photo), "--quiet", "--device", "cpu", *map(str, args)])


@pytest.mark.parametrize("wrap", ["plain", "module.", "model.", "state_dict", "model"])
def test_wrappers_and_prefixes_are_accepted(tmp_path, resnet18_state, wrap):
    state = resnet18_state
    if wrap.endswith("."):
        state = {wrap + k: v for k, v in state.items()}
    elif wrap != "plain":
        state = {wrap: state, "epoch": 3}
    torch.save(state, tmp_path / "w.pth")
    model = visionlens.load_model("torchvision:resnet18", weights=tmp_path / "w.pth")
    for k, v in model.module.state_dict().items():
        assert torch.equal(v, resnet18_state[k])


def test_a_wrong_architecture_names_the_first_mismatched_key_and_both_shapes(tmp_path, resnet18_state, imagenet_photos, capsys):
    state = dict(resnet18_state)
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(state, tmp_path / "w.pth")
    assert _explain(imagenet_photos[0], "--model", "torchvision:resnet18", "--weights", tmp_path / "w.pth",
                    "--out", tmp_path / "o") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "'layer2.0.conv1.weight'" in line and "(128, 64, 5, 5)" in line and "(128, 64, 3, 3)" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content,message", [
    (b"hello, not weights", "not a PyTorch state dict file"),
    (pickle.dumps({"w": Evil()}, protocol=2), "not a safe PyTorch state dict"),
])
def test_junk_and_pickled_code_are_refused(tmp_path, content, message, imagenet_photos, capsys):
    (tmp_path / "w.pth").write_bytes(content)
    assert _explain(imagenet_photos[0], "--model", "torchvision:resnet18", "--weights", tmp_path / "w.pth",
                    "--out", tmp_path / "o") == 2
    captured = capsys.readouterr()
    assert message in one_error_line(captured.err) and "code ran" not in captured.out


def test_zoo_model_uses_the_given_weights(tmp_path, mobilenet, imagenet_photos, capsys):
    (tmp_path / "junk").write_text("junk")
    assert _explain(imagenet_photos[0], "--model", "mobilenet_v2", "--weights", tmp_path / "junk", "--out", tmp_path / "o") == 2
    assert "junk" in one_error_line(capsys.readouterr().err)
    state = {k: v.clone() for k, v in mobilenet.module.state_dict().items()}
    head = [k for k, v in state.items() if k.endswith("weight") and v.dim() == 2][-1]
    state[head] = torch.zeros_like(state[head])  # every logit equal: a visibly different model
    torch.save(state, tmp_path / "zero.pth")
    loaded = visionlens.load_model("mobilenet_v2", weights=tmp_path / "zero.pth")
    assert torch.equal(loaded.module.state_dict()[head], state[head])


def test_nan_weights_are_refused_before_any_work(tmp_path, resnet18_state, imagenet_photos, capsys):
    state = dict(resnet18_state)
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"].clone()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(InputError, match="layer1.0.conv1.weight"):
        load_state_dict_file(tmp_path / "w.pth")
    assert _explain(imagenet_photos[0], "--model", "torchvision:resnet18", "--weights", tmp_path / "w.pth",
                    "--out", tmp_path / "o") == 2
    assert "NaN" in one_error_line(capsys.readouterr().err) and not (tmp_path / "o").exists()


def test_a_model_whose_output_is_never_finite_is_refused_before_any_work(tmp_path, imagenet_photos):
    """An infinite weight: every image's maps would be NaN; one line before anything is written."""
    net = TinyGapNet().eval()
    with torch.no_grad():
        net.fc.weight[0, 0] = float("inf")
    model = visionlens.load_model(net)
    with pytest.raises(visionlens.errors.InputError, match="NaN or infinite values for every image"):
        visionlens.explain_files(imagenet_photos[:2], model, ["gradcam"], target=0, out_dir=tmp_path / "o",
                                 progress=False)
    assert not (tmp_path / "o").exists()


def test_a_non_finite_map_stops_that_image_and_the_summary_stays_strict_json(tmp_path, imagenet_photos, capsys,
                                                                                monkeypatch):
    """Only some images' outputs are not finite (a float16 overflow on one photo): those images are
    reported and skipped, the others explained."""
    net = TinyGapNet().eval()
    first = {"seen": 0}

    def overflow_on_the_second_image(module, inputs, output):
        first["seen"] += 1
        if first["seen"] > 1 and output.shape[0] == 2:  # the run's batch, not the blank probe
            scale = torch.ones(2, 1)
            scale[1] = float("inf")
            return output * scale
        return None

    net.fc.register_forward_hook(overflow_on_the_second_image)
    model = visionlens.load_model(net)
    summary = visionlens.explain_files(imagenet_photos[:2], model, ["gradcam"], target=0, out_dir=tmp_path / "o",
                                       progress=False)
    assert len(summary["images"]) == 1 and len(summary["failures"]) == 1
    assert "NaN or infinite" in summary["failures"][0]["error"]
    strict_json((tmp_path / "o" / "summary.json").read_text())
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,flag", [
    (["explain", "x.png", "--batch-size", "zero"], "--batch-size"),
    (["explain", "x.png", "--target", "1.5"], "--target"),
    (["world", "--split", "nope"], "--split"),
    (["nope"], "invalid choice"),
])
def test_usage_errors_are_one_line(args, flag, capsys, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save("x.png")  # an input that exists: the flag is what is wrong
    assert main(args) == 2
    assert flag in one_error_line(capsys.readouterr().err)


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import visionlens.cli as cli

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "_cmd_models", broken)
    assert main(["models"]) == cli.EXIT_INTERNAL
    line = one_error_line(capsys.readouterr().err)
    assert "ZeroDivisionError: boom" in line and "--debug" in line
    with pytest.raises(ZeroDivisionError):
        main(["models", "--debug"])
