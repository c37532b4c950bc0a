"""The benchmarks' real layouts (Office-31, Office-Home, VisDA-2017, DomainNet, image lists) on tiny
generated datasets (2-3 classes, 2 domains, 20 px PNGs), streamed through a DataLoader; model-spec
backbones (ResNet-50, a tiny timm ResNet from a weights file); the papers' presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import one_error_line, strict_json
from visionlens.cli import main
from visionlens_adapt.framework import SourceConfig, predict, take, train_source
from visionlens_adapt.imagelists import ImageList, benchmark_shift
from visionlens_adapt.network import AdaptNet
from visionlens_adapt.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ("bike", "cup", "lamp")
PER_CLASS = 4


def _png(path, label: int, domain: int, index: int) -> None:
    """A 20x20 image whose dominant channel is the class; the target domain is darker and noisier."""
    rng = np.random.default_rng(1000 * domain + 10 * label + index)
    arr = np.full((20, 20, 3), 40.0)
    arr[..., label] = 200.0
    arr = arr * (0.6 if domain else 1.0) + rng.normal(0, 25 if domain else 8, arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)


def _class_tree(root, domain: int) -> list[str]:
    """``root/<class>/img<i>.png`` for every class; the relative paths."""
    names = []
    for label, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            _png(root / name / f"img{i}.png", label, domain, i)
            names.append(f"{name}/img{i}.png")
    return names


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    """One tiny dataset per layout: {layout: (data_dir, extra CLI flags)}."""
    base = tmp_path_factory.mktemp("benchmarks")
    for d, domain in enumerate(("amazon", "webcam")):  # Office-31: domain/images/class
        _class_tree(base / "office31" / domain / "images", d)
    for d, domain in enumerate(("Art", "Real_World")):  # Office-Home: Domain/Class
        _class_tree(base / "officehome" / domain, d)
    for d, split in enumerate(("train", "validation")):  # VisDA-2017: split/image_list.txt
        names = _class_tree(base / "visda" / split, d)
        lines = [f"{n} {CLASSES.index(n.split('/')[0])}" for n in names]
        (base / "visda" / split / "image_list.txt").write_text("\n".join(lines) + "\n")
    for d, (domain, split) in enumerate((("clipart", "train"), ("sketch", "test"))):  # DomainNet
        names = _class_tree(base / "domainnet" / domain, d)
        lines = [f"{domain}/{n} {CLASSES.index(n.split('/')[0])}" for n in names]
        (base / "domainnet" / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    lists = base / "lists"
    for d, name in enumerate(("src", "tgt")):  # generic image lists, paths relative to the list's folder
        names = _class_tree(lists / name, d)
        (lists / f"{name}.txt").write_text("".join(f"{name}/{n} {CLASSES.index(n.split('/')[0])}\n" for n in names))
    return {
        "office31": ["--data-dir", base / "office31", "--source", "amazon", "--target", "webcam"],
        "officehome": ["--data-dir", base / "officehome", "--source", "Art", "--target", "Real_World"],
        "visda": ["--data-dir", base / "visda"],
        "domainnet": ["--data-dir", base / "domainnet", "--source", "clipart", "--target", "sketch"],
        "list": ["--source-list", lists / "src.txt", "--target-list", lists / "tgt.txt"],
    }


def _shift(layout: str, flags: list, size: int = 16):
    opts = dict(zip(flags[0::2], flags[1::2]))
    return benchmark_shift(layout, opts.get("--data-dir"), opts.get("--source"), opts.get("--target"), size,
                           source_list=opts.get("--source-list"), target_list=opts.get("--target-list"))


@pytest.mark.parametrize("layout", ["office31", "officehome", "visda", "domainnet", "list"])
def test_each_layout_lists_its_images_and_classes(layout, benchmarks):
    shift = _shift(layout, benchmarks[layout])
    assert isinstance(shift.source_x, ImageList) and isinstance(shift.target_x, ImageList)
    assert len(shift.source_x) == len(shift.target_x) == len(CLASSES) * PER_CLASS
    assert shift.class_names == CLASSES
    assert shift.source_y.tolist() == shift.target_y.tolist() == [c for c in range(3) for _ in range(PER_CLASS)]
    image = shift.target_x[5]
    assert image.shape == (3, 16, 16) and 0 <= float(image.min()) and float(image.max()) <= 1
    # the label is the image's dominant channel (how the images were drawn): files and labels agree
    dominant = [int(shift.source_x[i].mean((1, 2)).argmax()) for i in range(len(shift.source_x))]
    assert dominant == shift.source_y.tolist()


def test_images_are_decoded_per_batch_and_streaming_equals_the_in_memory_tensor(benchmarks, monkeypatch):
    shift = _shift("officehome", benchmarks["officehome"])
    stacked = take(shift.source_x, torch.arange(len(shift.source_x)))
    cfg = SourceConfig(epochs=1, batch_size=4, lr=1e-2, seed=0)
    in_memory = AdaptNet(3, "small-cnn", "linear", 8, seed=0)
    streamed = AdaptNet(3, "small-cnn", "linear", 8, seed=0)
    train_source(in_memory, stacked, shift.source_y, cfg)
    calls = []
    original = ImageList.__getitem__
    monkeypatch.setattr(ImageList, "__getitem__", lambda self, i: calls.append(i) or original(self, i))
    train_source(streamed, shift.source_x, shift.source_y, cfg)
    # one decode to check the first item, then exactly the 12 batched images (3 batches of 4), no preload
    assert len(calls) == 1 + 12 and sorted(calls[1:]) == list(range(12))
    for a, b in zip(in_memory.state_dict().values(), streamed.state_dict().values()):
        assert (a.float() - b.float()).abs().max() < 1e-5
    f_mem, p_mem = predict(streamed, stacked, batch_size=5)
    f_str, p_str = predict(streamed, shift.source_x, batch_size=5)
    assert (f_mem - f_str).abs().max() < 1e-5 and (p_mem - p_str).abs().max() < 1e-6


def _adapt(out, *flags) -> int:
    return main(["adapt", "--seeds", "0", "--source-epochs", "2", "--adapt-epochs", "1", "--batch-size", "4",
                 "--size", "16", "--bottleneck", "8", "--out", str(out), "--quiet", *map(str, flags)])


@pytest.mark.parametrize("layout", ["office31", "visda", "domainnet", "list"])
def test_cli_writes_the_accuracy_table_on_each_layout(layout, benchmarks, tmp_path):
    out = tmp_path / "run"
    assert _adapt(out, "--data", layout, *benchmarks[layout], "--methods", "source-only,shot-im,eianet",
                  "--gradcam", "2") == 0
    results = strict_json((out / "results.json").read_text())
    assert set(results["summary"]) == {"source-only", "shot-im", "eianet"}
    for row in results["per_seed"][0]["rows"].values():
        assert 0 <= row["accuracy"] <= 100 and len(row["curve"]) in (1, 2)
    table = (out / "table.md").read_text()
    assert "12 source / 12 target images (0% planted outliers)" in table and "| eianet |" in table
    assert (out / "gradcam.png").stat().st_size > 0


def test_resnet50_backbone_from_a_weights_file(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(num_classes=10).state_dict(), weights)
    net = AdaptNet(3, "resnet50", "etf", 16, temperature=0.01, seed=0, backbone_weights=str(weights))
    assert net.bottleneck.in_features == 2048
    saved = torch.load(weights, weights_only=True)
    loaded = net.backbone[1].body.state_dict()  # conv1 .. layer4 as a Sequential: 0 = conv1, 7 = layer4
    assert torch.equal(loaded["0.weight"], saved["conv1.weight"])
    assert torch.equal(loaded["7.2.bn3.running_var"], saved["layer4.2.bn3.running_var"])
    assert not any(k.startswith(("8.", "9.")) for k in loaded)  # avgpool and fc removed
    net.train()
    logits = net(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 3)
    logits.logsumexp(1).sum().backward()
    assert net.backbone[1].body[0].weight.grad is not None  # every layer is trained, as in the references


def test_preset_with_a_timm_backbone_on_office_home(benchmarks, tmp_path):
    timm = pytest.importorskip("timm")
    weights = tmp_path / "test_resnet.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), weights)
    out = tmp_path / "run"
    assert _adapt(out, "--data", "officehome", *benchmarks["officehome"], "--preset", "eianet", "--backbone",
                  "timm:test_resnet", "--weights", weights, "--methods", "source-only-etf,eianet", "--gradcam", "0",
                  "--workers", "1") == 0
    config = strict_json((out / "results.json").read_text())["config"]
    eianet = PRESETS["eianet"]
    # explicit flags win (epochs, batch, size, bottleneck); every other value is the preset's
    assert config["source_config"]["epochs"] == 2 and config["adapt_config"]["batch_size"] == 4
    assert config["adapt_config"]["lr_encoder"] == 0.5  # office_home.sh
    assert config["adapt_config"]["bottleneck_lr_mult"] == eianet["adapt"]["bottleneck_lr_mult"]
    assert config["source_config"]["lr"] == eianet["source"]["lr"] and config["temperature"] == 0.01
    assert "zichengpan/EIANet" in config["preset_source"]


@pytest.mark.parametrize("case", ["no-dir", "domain", "bad-line", "missing-image", "proulearn", "no-source", "no-lists",
                                  "device", "weights", "world-source"])
def test_bad_benchmark_input_is_one_line(case, benchmarks, tmp_path, capsys):
    office = benchmarks["office31"]
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text({"bad-line": "a.png 0\nb.png cat\n", "missing-image": "nothere/x.png 1\n"}.get(case, ""))
    argv, names = {
        "no-dir": (["--data", "office31", "--data-dir", tmp_path / "nowhere", "--source", "a", "--target", "b"],
                   ["nowhere"]),
        "domain": (["--data", "office31", *office[:4], "--target", "dslr"], ["dslr", "amazon, webcam"]),
        "bad-line": (["--data", "list", "--source-list", bad_list, "--target-list", benchmarks["list"][3]], ["line 1"]),
        "missing-image": (["--data", "list", "--source-list", bad_list, "--target-list", benchmarks["list"][3]],
                          ["line 1", "x.png"]),
        "proulearn": (["--data", "office31", *office, "--preset", "proulearn"], ["no public code", "shot"]),
        "no-source": (["--data", "officehome", office[0], office[1]], ["--source"]),
        "no-lists": (["--data", "list"], ["--source-list"]),
        "device": (["--data", "office31", *office, "--device", "gpu9"], ["gpu9"]),
        "weights": (["--data", "office31", *office, "--weights", bad_list], ["--weights", "small-cnn"]),
        "world-source": (["--data", "world", "--source", "amazon"], ["--source", "world"]),
    }[case]
    if case == "bad-line":
        Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
        names = ["line 2", "cat"]
    out = tmp_path / "run"
    assert _adapt(out, *argv) == 2
    one_error_line(capsys.readouterr().err, *names)
    assert not out.exists()


@pytest.mark.parametrize("layout", ["list", "visda"])
def test_a_target_label_the_source_lacks_is_one_line(layout, benchmarks, tmp_path, capsys):
    """A target list label outside the source's classes used to be taken silently (the class count
    became the largest label + 1)."""
    if layout == "list":
        src = benchmarks["list"][1]
        target = src.parent / "tgt_extra.txt"
        target.write_text(benchmarks["list"][3].read_text() + "tgt/cup/img0.png 7\n")
        flags = ["--source-list", src, "--target-list", target]
    else:
        root = tmp_path / "visda"
        for split in ("train", "validation"):
            (root / split).mkdir(parents=True)
            for path in (benchmarks["visda"][1] / split).rglob("*"):
                dest = root / split / path.relative_to(benchmarks["visda"][1] / split)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if path.is_file():
                    dest.write_bytes(path.read_bytes())
        target = root / "validation" / "image_list.txt"
        target.write_text(target.read_text() + "cup/img0.png 7\n")
        src, flags = root / "train" / "image_list.txt", ["--data-dir", root]
    out = tmp_path / "run"
    assert _adapt(out, "--data", layout, *flags) == 2
    one_error_line(capsys.readouterr().err, str(target), f"line {len(CLASSES) * PER_CLASS + 1}", "label 7",
                   str(src), "0-2")
    assert not out.exists()


def test_the_same_list_as_source_and_target_is_one_line(benchmarks, tmp_path, capsys):
    src = benchmarks["list"][1]
    out = tmp_path / "run"
    for target in (src, src.parent / "." / src.name):
        assert _adapt(out, "--data", "list", "--source-list", src, "--target-list", target) == 2
        one_error_line(capsys.readouterr().err, "--source-list", "--target-list", "same file")
    assert not out.exists()


def test_an_out_file_that_is_an_input_list_is_refused(benchmarks, tmp_path, capsys):
    """`--out DIR` whose table.md is the --target-list: the run would overwrite its own input."""
    out = tmp_path / "run"
    out.mkdir()
    target = out / "table.md"
    target.write_text(benchmarks["list"][3].read_text().replace("tgt/", str(benchmarks["list"][3].parent / "tgt") + "/"))
    before = target.read_text()
    assert _adapt(out, "--data", "list", "--source-list", benchmarks["list"][1], "--target-list", target) == 2
    one_error_line(capsys.readouterr().err, "--out", "--target-list")
    assert target.read_text() == before and sorted(out.iterdir()) == [target]


@pytest.mark.parametrize("case", ["binary", "folder"])
def test_unreadable_target_list_is_one_line(case, benchmarks, tmp_path, capsys):
    """A list file that is not UTF-8 used to end in an internal error (UnicodeDecodeError, exit 70);
    a folder given as the list was said not to exist."""
    target = tmp_path / "bin.txt"
    if case == "binary":
        target.write_bytes(b"\xff\xfe\x00garbage\n")
    else:
        target.mkdir()
    out = tmp_path / "run"
    assert _adapt(out, "--data", "list", "--source-list", benchmarks["list"][1], "--target-list", target) == 2
    line = one_error_line(capsys.readouterr().err, str(target))
    assert ("UTF-8" in line) if case == "binary" else ("is a folder" in line and "does not exist" not in line)
    assert not out.exists()


def test_vision_transformer_backbone_is_refused_before_any_work(benchmarks, tmp_path, capsys, monkeypatch):
    """A timm ViT used to crash with exit 70 (an AssertionError from probing it with a 64x64 tensor)
    after the data was read: one line that it is not a CNN, exit 2, before the data is read."""
    timm = pytest.importorskip("timm")
    import visionlens_adapt.cli as adapt_cli

    weights = tmp_path / "vit.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_vit", num_classes=5).state_dict(), weights)
    monkeypatch.setattr(adapt_cli, "_load", lambda *a: pytest.fail("the data was read before the backbone was checked"))
    out = tmp_path / "run"
    assert _adapt(out, "--data", "office31", *benchmarks["office31"], "--backbone", "timm:test_vit", "--weights",
                  weights, "--gradcam", "0") == 2
    one_error_line(capsys.readouterr().err, "timm:test_vit", "not a CNN")
    assert not out.exists()


def test_planted_outliers_on_a_streamed_target(benchmarks):
    from visionlens_adapt.data import plant_outliers

    shift = plant_outliers(_shift("list", benchmarks["list"]), 0.25, seed=0)
    assert len(shift.target_x) == 12 + 3 and shift.target_y[-3:].tolist() == [-1, -1, -1]
    assert shift.target_x[14].shape == shift.target_x[0].shape
    assert json.dumps(shift.class_names)


def test_shot_preset_on_visda_decays_the_learning_rate(benchmarks, tmp_path):
    out = tmp_path / "run"
    assert _adapt(out, "--data", "visda", *benchmarks["visda"], "--preset", "shot", "--backbone", "small-cnn",
                  "--methods", "source-only,shot-im", "--gradcam", "0") == 0
    config = strict_json((out / "results.json").read_text())["config"]
    assert config["source_config"]["schedule"] == config["adapt_config"]["schedule"] == "shot"
    assert config["adapt_config"]["lr"] == 1e-3 and config["source_config"]["lr"] == 1e-4  # VisDA in SHOT's readme
    assert config["adapt_config"]["lr_encoder"] == 0.1 and config["adapt_config"]["weight_decay"] == 1e-3
    assert "tim-learn/SHOT" in config["preset_source"]


def test_shot_schedule_decays_the_rate_every_step(monkeypatch):
    x, y = torch.rand(12, 3, 16, 16), torch.arange(12) % 3
    net = AdaptNet(3, "small-cnn", "linear", 8, seed=0)
    rates = []
    original = torch.optim.SGD.step

    def record(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", record)
    train_source(net, x, y, SourceConfig(epochs=2, batch_size=4, lr=0.1, schedule="shot"))
    steps = 6  # 2 epochs x 3 batches
    assert len(rates) == steps and abs(rates[0] - 0.1) < 1e-12
    expected = [0.1 * (1 + 10 * s / steps) ** -0.75 for s in range(steps)]
    assert max(abs(a - b) for a, b in zip(rates, expected)) < 1e-9
    assert rates == sorted(rates, reverse=True)


# --- unreadable images, contradicting flags, stale outputs ----------------------------------------

def _office_copy(benchmarks, tmp_path):
    import shutil

    root = tmp_path / "office31"
    shutil.copytree(benchmarks["office31"][1], root)
    return root


def test_an_unreadable_image_is_left_out_before_training_on_one_line(benchmarks, tmp_path, capsys):
    """A garbage file among the target images used to stop the run with exit 2 when evaluation first
    decoded it, after source training: now every image is decoded before training, the bad one is
    one error: line, the rest run, the results list it, exit 1."""
    root = _office_copy(benchmarks, tmp_path)
    bad = root / "webcam" / "images" / "cup" / "frame_9999.jpg"
    bad.write_bytes(b"garbage\n")
    out = tmp_path / "run"
    assert _adapt(out, "--data", "office31", "--data-dir", root, "--source", "amazon", "--target", "webcam",
                  "--methods", "source-only", "--gradcam", "0") == 1
    err = capsys.readouterr().err
    one_error_line(err, str(bad), "not a readable image", "left out")
    results = strict_json((out / "results.json").read_text())
    assert [s["path"] for s in results["skipped"]] == [str(bad)]
    assert "12 source / 12 target images" in (out / "table.md").read_text()


def test_a_target_without_readable_images_is_one_line_before_training(benchmarks, tmp_path, capsys):
    root = _office_copy(benchmarks, tmp_path)
    for path in (root / "webcam").rglob("*.png"):
        path.write_bytes(b"x")
    out = tmp_path / "run"
    assert _adapt(out, "--data", "office31", "--data-dir", root, "--source", "amazon", "--target", "webcam",
                  "--methods", "source-only", "--gradcam", "0") == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("error: no image of the target domain can be read")
    assert not out.exists()


@pytest.mark.parametrize("case", ["world-data-dir", "digits-data-dir", "same-domain", "empty-methods",
                                  "comma-methods"])
def test_contradicting_flags_are_one_line(case, benchmarks, tmp_path, capsys):
    office = benchmarks["office31"]
    argv, names = {
        "world-data-dir": (["--data", "world", "--data-dir", tmp_path], ["--data-dir", "world"]),
        "digits-data-dir": (["--data", "digits", "--data-dir", tmp_path], ["--data-dir", "digits"]),
        "same-domain": (["--data", "office31", *office[:2], "--source", "amazon", "--target", "Amazon"],
                        ["--source", "--target", "amazon"]),
        "empty-methods": (["--data", "office31", *office, "--methods", ""], ["--methods", "empty"]),
        "comma-methods": (["--data", "office31", *office, "--methods", " , "], ["--methods", "empty"]),
    }[case]
    out = tmp_path / "run"
    assert _adapt(out, *argv) == 2
    one_error_line(capsys.readouterr().err, *names)
    assert not out.exists()


def test_a_rerun_without_the_figure_removes_the_earlier_figure(benchmarks, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--data", "office31", *benchmarks["office31"], "--methods", "eianet"]
    assert _adapt(out, *flags, "--gradcam", "2") == 0
    assert (out / "gradcam.png").is_file()
    (out / "notes.txt").write_text("mine")
    assert _adapt(out, *flags, "--gradcam", "0") == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "results.json", "table.md"]
    assert "wrote " + ", ".join(str(out / n) for n in ("results.json", "table.md")) in capsys.readouterr().out
