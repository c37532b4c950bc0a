"""Detectors and segmenters as targets of the CAM family: torchvision models (random init, no
downloads, small inputs), :class:`BoxTarget` and :class:`SegmentationTarget`, checked against
pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` and ``SemanticSegmentationTarget``."""

import numpy as np
import pytest
import torch
from torch import nn

from helpers import assert_same_state, snapshot
from visionlens import (BoxTarget, EigenCAM, GradCAM, InputError, LayerCAM, ScoreCAM, SegmentationTarget,
                        explain_many, raw_output)

tv = pytest.importorskip("torchvision")
from torchvision.models import detection, segmentation  # noqa: E402

LAYER = "backbone.body.12"  # a backbone block of the detector's MobileNetV3 (stride 16)
SEG_LAYER = "backbone.12"  # the same block in the segmenters' backbone
SIZE = 160


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    # 3 classes and no score threshold: a randomly initialised detector still returns detections
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=SIZE, max_size=SIZE, box_score_thresh=0.0)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, SIZE, SIZE, generator=g)


@pytest.fixture(scope="module", params=["lraspp", "deeplabv3"])
def segmenter(request):
    torch.manual_seed(0)
    build = {"lraspp": segmentation.lraspp_mobilenet_v3_large,
             "deeplabv3": segmentation.deeplabv3_mobilenet_v3_large}[request.param]
    return build(weights=None, weights_backbone=None, num_classes=4).eval()


def _minmax(maps):
    """Exact per-image min-max: pytorch-grad-cam divides by ``max + 1e-7`` twice, which shifts its
    maps when the raw map is tiny (a randomly initialised detector's is ~1e-11)."""
    maps = np.asarray(maps, dtype=np.float64)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return (maps - low) / np.where(span > 0, span, 1.0)


def _detections(model, x):
    with torch.no_grad():
        return model(x)


def _common_category(model, x):
    """A class that is the argmax somewhere in every image."""
    with torch.no_grad():
        pred = model(x)["out"].argmax(1)
    present = [set(p.unique().tolist()) for p in pred]
    common = sorted(set.intersection(*present))
    assert common, present
    return max(common, key=lambda c: int((pred == c).sum()))


def test_detector_cam_family_on_box_target(detector, images):
    dets = _detections(detector, images)
    boxes = [d["boxes"][0] for d in dets]
    labels = [int(d["labels"][0]) for d in dets]
    before = snapshot(detector)
    methods = [GradCAM(detector, LAYER), EigenCAM(detector, LAYER), LayerCAM(detector, LAYER)]
    results = explain_many(methods, images, BoxTarget(boxes, labels))
    assert_same_state(before, snapshot(detector))
    for name, exp in results.items():
        assert exp.maps.shape == (2, SIZE, SIZE), name
        assert bool(torch.isfinite(exp.maps).all()) and bool(torch.isfinite(exp.raw).all()), name
        assert exp.targets is None
        for m in exp.maps:  # a box on a detection: a map with structure, spanning [0, 1]
            assert float(m.max() - m.min()) == pytest.approx(1.0, abs=1e-5), name
            assert float(m.std()) > 0.01, name
        torch.testing.assert_close(exp.scores, torch.stack([d["scores"][0] for d in dets]))
        assert exp.logits.shape == (2, 1)  # no logits in a detector's output: the explained scores
    # the same maps one call per method (the shared pass changes nothing)
    alone = GradCAM(detector, LAYER)(images, BoxTarget(boxes, labels))
    torch.testing.assert_close(alone.maps, results["gradcam"].maps)


def test_several_boxes_per_image_sum_their_scores(detector, images):
    dets = _detections(detector, images)
    two = [d["boxes"][:2] for d in dets]
    exp = GradCAM(detector, LAYER)(images, BoxTarget(two))  # any label: the best-overlapping detection
    torch.testing.assert_close(exp.scores, torch.stack([d["scores"][:2].sum() for d in dets]))
    assert bool(torch.isfinite(exp.maps).all())


def test_gradcam_box_matches_pytorch_grad_cam(detector, images):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    dets = _detections(detector, images)
    boxes = [d["boxes"][:1] for d in dets]
    labels = [d["labels"][:1] for d in dets]
    # pytorch-grad-cam adds the matched IoU to the score: add_iou=True is the same quantity
    ours = GradCAM(detector, LAYER)(images, BoxTarget(boxes, labels, add_iou=True)).maps.numpy()
    layer = detector.get_submodule(LAYER)
    with pgc.GradCAM(model=detector, target_layers=[layer]) as ref_cam:
        ref = ref_cam(input_tensor=images, targets=[
            FasterRCNNBoxScoreTarget(labels=lab.tolist(), bounding_boxes=b.numpy()) for b, lab in zip(boxes, labels)])
    assert ours.shape == ref.shape
    diff = float(np.abs(_minmax(ours) - _minmax(ref)).max())
    assert diff <= 1e-4, diff


class _Out(nn.Module):
    """pytorch-grad-cam needs a tensor output: the segmenter's ``out``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def test_segmenter_cam_family_on_segmentation_target(segmenter, images):
    category = _common_category(segmenter, images)
    before = snapshot(segmenter)
    methods = [GradCAM(segmenter, SEG_LAYER), EigenCAM(segmenter, SEG_LAYER), LayerCAM(segmenter, SEG_LAYER)]
    results = explain_many(methods, images, SegmentationTarget(category))
    assert_same_state(before, snapshot(segmenter))
    with torch.no_grad():
        out = segmenter(images)["out"]
    region = out.argmax(1) == category
    expected = (out[:, category] * region).flatten(1).sum(1)
    for name, exp in results.items():
        assert exp.maps.shape == (2, SIZE, SIZE), name
        assert bool(torch.isfinite(exp.maps).all()) and bool(torch.isfinite(exp.raw).all()), name
        torch.testing.assert_close(exp.scores, expected, rtol=1e-4, atol=1e-4)
        assert exp.logits.shape == out.shape  # the dict's 'out'


def test_gradcam_segmentation_matches_pytorch_grad_cam(segmenter, images):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    category = _common_category(segmenter, images)
    with torch.no_grad():
        masks = (segmenter(images)["out"].argmax(1) == category).float()
    ours = GradCAM(segmenter, SEG_LAYER)(images, SegmentationTarget(category)).maps.numpy()
    explicit = GradCAM(segmenter, SEG_LAYER)(images, SegmentationTarget(category, masks)).maps.numpy()
    np.testing.assert_array_equal(ours, explicit)
    wrapped = _Out(segmenter)
    with pgc.GradCAM(model=wrapped, target_layers=[segmenter.get_submodule(SEG_LAYER)]) as ref_cam:
        ref = ref_cam(input_tensor=images,
                      targets=[SemanticSegmentationTarget(category, m.numpy()) for m in masks])
    assert ours.shape == ref.shape
    diff = float(np.abs(_minmax(ours) - _minmax(ref)).max())
    assert diff <= 1e-4, diff


def test_scorecam_on_a_detector_and_a_segmenter(detector, images):
    # Score-CAM scores masked copies of each image: BoxTarget and SegmentationTarget pick the rows
    # of their image (select); a box whose detection vanished in a masked copy scores 0
    # (one image: a pass per channel of the detector is the slow part)
    dets = _detections(detector, images[:1])
    target = BoxTarget([d["boxes"][0] for d in dets], [int(d["labels"][0]) for d in dets])
    before = snapshot(detector)
    exp = ScoreCAM(detector, "backbone.body.4", batch_size=16)(images[:1], target)
    assert_same_state(before, snapshot(detector))
    assert exp.maps.shape == (1, SIZE, SIZE) and bool(torch.isfinite(exp.maps).all())
    torch.manual_seed(0)
    segmenter = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4).eval()
    category = _common_category(segmenter, images)
    with torch.no_grad():
        mask = segmenter(images)["out"].argmax(1) == category
    before = snapshot(segmenter)
    exp = ScoreCAM(segmenter, "backbone.3")(images, SegmentationTarget(category, mask))
    assert_same_state(before, snapshot(segmenter))
    assert exp.maps.shape == (2, SIZE, SIZE) and bool(torch.isfinite(exp.maps).all())
    assert all(float(m.std()) > 0.01 for m in exp.maps)


def test_callable_targets_get_the_raw_output(detector, images):
    torch.manual_seed(0)
    segmenter = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4).eval()
    seen = []

    def on_dicts(out):
        seen.append(type(out))
        return torch.stack([d["scores"][0] for d in out])

    GradCAM(detector, LAYER)(images, on_dicts)  # no tensor in the output: the raw list of dicts
    assert seen[-1] is list

    @raw_output
    def on_dict(out):
        seen.append(type(out))
        return out["out"][:, 0].mean((1, 2))

    GradCAM(segmenter, SEG_LAYER)(images, on_dict)
    assert issubclass(seen[-1], dict)
    GradCAM(segmenter, SEG_LAYER)(images, lambda y: seen.append(type(y)) or y[:, 0].mean((1, 2)))
    assert seen[-1] is torch.Tensor  # unmarked: the unwrapped 'out', as for any model with a tensor in its output


def test_one_line_errors_detector(detector, images):
    dets = _detections(detector, images)
    box = dets[0]["boxes"][0]
    far = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(InputError, match="overlaps box 0 of image 1"):
        GradCAM(detector, LAYER)(images, BoxTarget([box, far]))
    with pytest.raises(InputError, match="class targets need"):
        GradCAM(detector, LAYER)(images, 0)
    with pytest.raises(InputError, match="batch has 2"):
        GradCAM(detector, LAYER)(images, BoxTarget([box]))
    with pytest.raises(InputError, match="x1 > x0"):
        BoxTarget([[5, 5, 1, 1]])
    with pytest.raises(InputError, match="iou must be"):
        BoxTarget([box], iou=1.5)
    with pytest.raises(InputError, match="one integer label per box"):
        BoxTarget([box], labels=[[1, 2]])


def test_one_line_errors_segmenter(images):
    torch.manual_seed(0)
    segmenter = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4).eval()
    box = torch.tensor([0.0, 0.0, 8.0, 8.0])
    with pytest.raises(InputError, match="needs a detector's output"):
        GradCAM(segmenter, SEG_LAYER)(images, BoxTarget([box, box]))
    with pytest.raises(InputError, match="out of range"):
        GradCAM(segmenter, SEG_LAYER)(images, SegmentationTarget(7))
    with pytest.raises(InputError, match="image 0 has no pixel of class"):
        GradCAM(segmenter, SEG_LAYER)(images, SegmentationTarget(0, torch.zeros(SIZE, SIZE)))
    with pytest.raises(InputError, match=r"give \(H, W\)"):
        GradCAM(segmenter, SEG_LAYER)(images, SegmentationTarget(0, torch.ones(8, 8)))
    with pytest.raises(InputError, match="category must be"):
        SegmentationTarget(-1)
    with pytest.raises(InputError, match="explicit mask"):
        ScoreCAM(segmenter, SEG_LAYER)(images, SegmentationTarget(_common_category(segmenter, images)))


def test_segmentation_target_reads_a_hugging_face_output_and_a_class_index_names_it():
    from types import SimpleNamespace

    from visionlens.core.targets import resolve_targets

    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1, :2] = 5.0  # class 1 wins the top half
    scores = SegmentationTarget(1)(SimpleNamespace(logits=logits))  # e.g. SemanticSegmenterOutput
    assert torch.allclose(scores, torch.tensor([40.0]))
    with pytest.raises(InputError, match=r"got \(1, 3, 4, 4\); pass a callable target \(for a segmenter, "
                                         r"visionlens.SegmentationTarget\(class\)\)"):
        resolve_targets(1, logits, 1)
