"""`visionlens.explain`, the one-call API: bounded batches, opened images read as files are, the
device of the call (the audit of 2026-12-07)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import visionlens
from visionlens.errors import InputError


def test_many_images_run_in_batches_with_the_maps_of_one_batch(tiny_net):
    """All inputs went through one forward and backward pass (12 MB of memory per 224 px image);
    now ``batch_size`` at a time, with the same maps, targets given per image split with them."""
    model = visionlens.load_model(tiny_net)
    x = torch.randn(5, 3, 32, 32)
    whole = visionlens.explain(x, model, "gradcam", batch_size=32)
    parts = visionlens.explain(x, model, "gradcam", batch_size=2)
    torch.testing.assert_close(parts.maps, whole.maps, atol=1e-5, rtol=0)
    assert torch.equal(parts.targets, whole.targets) and parts.logits.shape == whole.logits.shape
    per_image = [0, 1, 2, 0, 1]
    torch.testing.assert_close(visionlens.explain(x, model, "gradcam", target=per_image, batch_size=2).maps,
                               visionlens.explain(x, model, "gradcam", target=per_image).maps, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="batch_size"):
        visionlens.explain(x, model, "gradcam", batch_size=0)


def test_joined_results_keep_per_batch_reports_and_shared_names():
    """NAFlow's solver reports (one per batch and layer) are joined; the layer names are not."""
    from visionlens.methods.naflow.method import NAFlowExplanation

    def part(b, report):
        t = torch.zeros(b, 4, 4)
        return NAFlowExplanation(t, t, torch.zeros(b, dtype=torch.long), torch.zeros(b), torch.zeros(b, 3), "naflow",
                                 "x", flow_layers=("a", "b"), solves=(report,))

    joined = NAFlowExplanation.cat([part(2, "r1"), part(3, "r2")])
    assert joined.maps.shape[0] == 5 and joined.solves == ("r1", "r2") and joined.flow_layers == ("a", "b")


def test_an_opened_image_is_read_as_its_file_is(tmp_path, imagenet_photos):
    """``explain([Image.open(f)])`` skipped the loader's conversions: a 16-bit PNG came out all
    white and a phone photo with an EXIF rotation was explained sideways."""
    model = visionlens.load_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                                      torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                                      torch.nn.Linear(4, 3)),
                                  preprocess=visionlens.Preprocess(resize=64, crop=64))
    photo = Image.open(imagenet_photos[0]).convert("RGB").resize((80, 60))
    exif = photo.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    photo.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    gray = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    model_layer = "0"
    for name in ("phone.jpg", "g16.png"):
        from_file = visionlens.explain([tmp_path / name], model, "gradcam", layer=model_layer)
        with Image.open(tmp_path / name) as opened:
            from_image = visionlens.explain([opened], model, "gradcam", layer=model_layer)
        torch.testing.assert_close(from_image.maps, from_file.maps, atol=1e-5, rtol=0)


def test_a_device_the_machine_lacks_is_one_line_for_any_model(tiny_net):
    """``device`` was ignored for a module (it ran on the CPU without a word)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="CUDA is not available"):
        visionlens.explain(torch.randn(1, 3, 32, 32), tiny_net, "gradcam", device="cuda:7")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_model_given_with_a_device_comes_back_where_it_was(tiny_net):
    """A ZooModel or module explained with ``device="cuda"`` was left on the GPU."""
    exp = visionlens.explain(torch.randn(2, 3, 32, 32), tiny_net, "gradcam", device="cuda")
    assert exp.maps.device.type == "cuda"
    assert all(p.device.type == "cpu" for p in tiny_net.parameters())


def test_perturbation_methods_run_one_image_at_a_time_so_progress_moves(tmp_path, imagenet_photos, monkeypatch):
    """A Score-CAM run's bar sat at 0/4 for minutes, then jumped to 4/4: a batch of 16 images is
    thousands of passes each. Such runs now go one image at a time (the maps are the same)."""
    import visionlens.pipeline as pipeline

    model = visionlens.load_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                                      torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                                      torch.nn.Linear(4, 3)),
                                  preprocess=visionlens.Preprocess(resize=32, crop=32))
    explain_classes, sizes = pipeline.explain_classes, []

    def counted(explainers, x, classes):
        sizes.append(len(x))
        return explain_classes(explainers, x, classes)

    monkeypatch.setattr(pipeline, "explain_classes", counted)
    pipeline.explain_files(imagenet_photos[:3], model, ["scorecam", "gradcam"], layer="0", out_dir=tmp_path / "s",
                           progress=False)
    pipeline.explain_files(imagenet_photos[:3], model, ["gradcam"], layer="0", out_dir=tmp_path / "g", progress=False)
    assert sizes == [1, 1, 1, 1, 1, 3]  # the probe, three single images; then the probe and one batch of three


def test_an_embedding_model_has_no_predicted_class_to_explain(tmp_path, capsys):
    """``explain --model world-metric --method gradcam`` explained the largest of its 64 embedding
    values as "class 34" of a 10-class world, exit 0; it is refused in one line, and --target N
    still explains output N."""
    from helpers import one_error_line
    from visionlens.cli import main

    photo = tmp_path / "w.png"
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(photo)
    base = ["explain", str(photo), "--model", "world-metric", "--method", "gradcam", "--quiet", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    one_error_line(capsys.readouterr().err, "outputs 64 values", "explain-pair")
    assert not (tmp_path / "a").exists()
    assert main([*base, "--target", "3", "--out", str(tmp_path / "b")]) == 0
