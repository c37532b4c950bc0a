"""RefHuman at full size: masks decoded lazily per batch (bounded memory) and ``--device`` on the pose commands."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch

import visionlens_refer.uniphd.data as data_module
from helpers import one_error_line
from visionlens.cli import main
from visionlens.errors import InputError
from visionlens_refer.uniphd.data import load_refhuman, sample_mask, sample_size, synthetic_refhuman, write_refhuman
from visionlens_refer.uniphd.train import batch_at

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def decode_counter(monkeypatch):
    """Counts the masks decoded through the loader module."""
    calls = []
    real = data_module.segmentation_to_mask

    def counting(segmentation, height, width):
        calls.append((height, width))
        return real(segmentation, height, width)

    monkeypatch.setattr(data_module, "segmentation_to_mask", counting)
    return calls


def test_the_lazy_loader_decodes_no_mask_until_a_batch_needs_it(tmp_path, decode_counter):
    samples = synthetic_refhuman(6, seed=3, size=64)
    ann = write_refhuman(samples, tmp_path / "ann.json", tmp_path / "images")
    lazy = load_refhuman(ann, tmp_path / "images", lazy=True)
    assert decode_counter == [] and all(s.mask is None and s.image is None for s in lazy)
    assert [sample_size(s) for s in lazy] == [(64, 64)] * 6 and decode_counter == []
    batch_at(lazy, step=0, batch_size=4, seed=0, size=64)
    assert len(decode_counter) == 4                                   # one per sample of the batch, no more
    eager = load_refhuman(ann, tmp_path / "images")
    for a, b, original in zip(lazy, eager, samples):
        assert np.array_equal(sample_mask(a), b.mask) and np.array_equal(b.mask, original.mask)


def _big_refhuman(tmp_path, count: int, side: int) -> tuple:
    """``count`` annotations on ``side`` x ``side`` images (declared; the lazy loader reads no pixels)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    images, annotations = [], []
    for i in range(count):
        x = 10 + i % 500
        images.append({"id": i, "file_name": "a.png", "height": side, "width": side, "caption": "the person"})
        annotations.append({"id": i, "image_id": i, "iscrowd": 0, "num_keypoints": 17, "category_id": 1,
                            "keypoints": [float(x), 20.0, 2.0] * 17, "bbox": [x, 10, 200, 400], "area": 8e4,
                            "segmentation": [[x, 10, x + 200, 10, x + 200, 410, x, 410]], "scribble": [float(x + 5)] * 120})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations}))
    return ann, tmp_path / "images"


def test_lazy_loading_memory_does_not_grow_with_the_masks(tmp_path, decode_counter):
    side, count = 1000, 400                    # eager masks alone: 400 MB
    ann, folder = _big_refhuman(tmp_path, count, side)
    tracemalloc.start()
    try:
        samples = load_refhuman(ann, folder, lazy=True)
        _, load_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for start in range(0, 16, 8):                              # two batches of 8, one at a time
            masks = [sample_mask(s) for s in samples[start:start + 8]]
            assert all(m.shape == (side, side) and 0.95 < m.sum() / (200 * 400) < 1.05 for m in masks)
            del masks
        _, batch_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(samples) == count and len(decode_counter) == 16
    assert load_peak < 40 * 2 ** 20, load_peak                      # measured 4.5 MiB: the parsed JSON
    assert batch_peak < 8 * side * side * 4, batch_peak           # measured 10.7 MiB for 8 masks of 1 MB


@pytest.mark.parametrize("counts", [[5, 3], "zz!!"])                  # sums to 8, not 96 * 96; not a counts string
def test_a_corrupt_rle_found_lazily_is_one_line_and_that_sample_is_left_out(tmp_path, capsys, counts):
    """A corrupt RLE found when its batch is decoded used to stop `pose eval` with exit 2: now that
    sample is left out on one line naming the annotation and the field, the rest are scored, exit 1."""
    samples = synthetic_refhuman(3, seed=4)
    ann = write_refhuman(samples, tmp_path / "ann.json", tmp_path / "images")
    data = json.loads(ann.read_text())
    data["annotations"][1]["segmentation"]["counts"] = counts
    ann.write_text(json.dumps(data))
    js = tmp_path / "m.json"
    assert main(["pose", "eval", "--data", str(ann), "--images", str(tmp_path / "images"), "--prompt", "point",
                 "--quiet", "--json", str(js)]) == 1
    one_error_line(capsys.readouterr().err, f"annotation id {data['annotations'][1]['id']}", "'segmentation'",
                   "left out")
    rows = json.loads(js.read_text())
    assert rows[0]["samples"] == 2 and len(rows[0]["skipped"]) == 1


@pytest.mark.parametrize("command", [
    ["pose", "train", "--synthetic", "2", "--steps", "1", "--quiet"],
    ["pose", "eval", "--synthetic", "2", "--prompt", "point", "--quiet"],
])
def test_device_flag_refuses_an_unknown_or_missing_device_in_one_line(tmp_path, capsys, command):
    assert main([*command, "--device", "tpu:9", *(["--out", str(tmp_path / "c.pt")] if "train" in command else [])]) == 2
    one_error_line(capsys.readouterr().err, "unknown device")
    if not torch.cuda.is_available():
        assert main([*command, "--device", "cuda", *(["--out", str(tmp_path / "c.pt")] if "train" in command else [])]) == 2
        one_error_line(capsys.readouterr().err, "CUDA is not available", "--device cpu")
    assert not (tmp_path / "c.pt").exists()


def test_predict_and_eval_run_on_the_device_given(tmp_path, capsys):
    from PIL import Image

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sample = synthetic_refhuman(1, seed=2)[0]
    Image.fromarray(sample.image).save(tmp_path / "p.png")
    assert main(["pose", "predict", str(tmp_path / "p.png"), "--point", "40,50", "--device", device,
                 "--out", str(tmp_path / "o.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert np.isfinite(result["keypoints"]).all() and (tmp_path / "o.png").stat().st_size > 0
    assert main(["pose", "eval", "--synthetic", "3", "--prompt", "text", "--device", device, "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["samples"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_matches_the_first_cpu_loss(tmp_path):
    from visionlens_refer.uniphd.config import UniPHDConfig
    from visionlens_refer.uniphd.text import build_vocab
    from visionlens_refer.uniphd.train import train

    data = synthetic_refhuman(4, seed=5, size=64, people=(2, 2))
    config = lambda: UniPHDConfig(image_size=64, backbone_widths=(8, 16, 24, 32), d_model=32, heads=2, ffn=64,  # noqa: E731
                                  encoder_layers=1, decoder_layers=1, queries=3, vocab=build_vocab(s.caption for s in data))
    runs = [train(data, tmp_path / f"{d}.pt", steps=2, batch_size=2, config=config(), progress=False, device=d)
            for d in ("cpu", "cuda")]
    assert abs(runs[0]["history"][0]["loss"] - runs[1]["history"][0]["loss"]) < 1e-3 * abs(runs[0]["history"][0]["loss"])
    with pytest.raises(InputError):
        train(data, tmp_path / "x.pt", steps=1, config=config(), progress=False, device="cuda:99")
