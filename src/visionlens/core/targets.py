"""What to explain: a class per sample, one class for the whole batch, the argmax, or a callable
that turns the model output into one score per sample.

Class indices are read from the model's logits (:func:`visionlens.core.vit.model_output`
unwraps a Hugging Face output or a tuple). A callable target receives that same tensor when the
output holds one, and the model's *raw* output (a detector's list of dicts, a segmenter's
``OrderedDict``) when it does not; a callable with ``raw_output = True`` (:class:`BoxTarget`,
:class:`SegmentationTarget`, or any function marked with :func:`raw_output`) always receives the
raw output, a Hugging Face ``ModelOutput`` included."""

from __future__ import annotations

from dataclasses import dataclass
import numbers
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from ..errors import InputError
from .boxes import pairwise_iou

Target = Union[None, int, Sequence[int], torch.Tensor, Callable[[Any], torch.Tensor]]


def raw_output(fn: Callable) -> Callable:
    """Mark a callable target to receive the model's raw output (``fn.raw_output = True``); returns ``fn``."""
    fn.raw_output = True
    return fn


def wants_raw_output(target) -> bool:
    """Whether a callable target asks for the model's raw output (``raw_output = True``)."""
    return bool(getattr(target, "raw_output", False))


@dataclass
class ClassTargets:
    """Resolved targets: ``indices`` (``(B,)`` long, or ``None`` for a callable) and ``scores``
    (``(B,)``, the quantity the explanation is about)."""

    indices: torch.Tensor | None
    scores: torch.Tensor


def _class_logits(output: torch.Tensor) -> torch.Tensor:
    if output is None:
        raise InputError("class targets need a model output of shape (B, num_classes), and this model's output holds "
                         "no tensor; pass a callable target (e.g. visionlens.BoxTarget for a detector)")
    if not torch.is_tensor(output) or output.dim() != 2:
        shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        hint = (" (for a segmenter, visionlens.SegmentationTarget(class))" if torch.is_tensor(output)
                and output.dim() == 4 else "")
        raise InputError(
            f"class targets need a model output of shape (B, num_classes), got {shape}; pass a callable target{hint}"
        )
    return output


def _is_scalar(target) -> bool:
    """One number: a Python or NumPy number, or a 0-d tensor or array."""
    return isinstance(target, (numbers.Number, np.generic)) or (
        isinstance(target, (torch.Tensor, np.ndarray)) and target.ndim == 0)


def _is_integer(target) -> bool:
    """A whole-number type (``2.0`` is not a class index)."""
    if isinstance(target, torch.Tensor):
        return not (target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool)
    if isinstance(target, np.ndarray):
        return np.issubdtype(target.dtype, np.integer)
    return isinstance(target, numbers.Integral)


def resolve_targets(target: Target, output: torch.Tensor | None, batch_size: int, raw=None) -> ClassTargets:
    """Validate ``target`` against the model ``output`` and return indices and scores.

    ``output`` is the unwrapped logits (``None`` when the model's output holds no tensor) and
    ``raw`` the model's raw output (default: ``output``); a callable target is called on
    ``output``, or on ``raw`` when ``output`` is ``None`` or the target has ``raw_output = True``.

    A list or tensor must have exactly one entry per sample (never silently truncated or
    broadcast); one integer is broadcast to the whole batch; ``None`` means the predicted class.
    A ``(B, K)`` list or tensor asks for ``K`` classes per image (indices and scores ``(B, K)``).
    """
    if callable(target) and not torch.is_tensor(target):
        scores = target(raw if raw is not None and (output is None or wants_raw_output(target)) else output)
        if not torch.is_tensor(scores) or scores.shape != (batch_size,):
            shape = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
            raise InputError(f"a callable target must return one score per sample, shape ({batch_size},), got {shape}")
        return ClassTargets(None, scores)
    logits = _class_logits(output)
    num_classes = logits.shape[1]
    if target is None:
        indices = logits.argmax(dim=1)
    elif isinstance(target, (bool, np.bool_)) or (_is_scalar(target) and not _is_integer(target)):
        raise InputError(f"target must be a class index, a list of indices or a callable, got {target!r}")
    elif _is_scalar(target):  # an int, a NumPy integer (np.argmax's result), a 0-d tensor or array
        if not 0 <= int(target) < num_classes:
            raise InputError(f"target class {int(target)} is out of range for a model with {num_classes} classes")
        indices = torch.full((batch_size,), int(target), dtype=torch.long, device=logits.device)
    else:
        try:
            indices = torch.as_tensor(list(target) if not torch.is_tensor(target) else target)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"target must be a class index, a list of indices or a callable, got {target!r}") from None
        if indices.dim() not in (1, 2) or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise InputError(f"target indices must be a 1-D list of integers, got {tuple(indices.shape)} {indices.dtype}")
        if indices.shape[0] != batch_size or indices.numel() == 0:
            raise InputError(
                f"got {indices.shape[0]} targets for a batch of {batch_size} images; give one class per image "
                "(or a row of classes per image) or a single int"
            )
        bad = (indices < 0) | (indices >= num_classes)  # checked where the indices are (a CPU list: no device sync)
        if bool(bad.any()):
            raise InputError(f"target class {int(indices[bad][0])} is out of range for a model with {num_classes} classes")
        indices = indices.to(device=logits.device, dtype=torch.long)
    if indices.dim() == 2:  # several classes per image: (B, K) indices and scores
        return ClassTargets(indices, logits.gather(1, indices))
    scores = logits.gather(1, indices[:, None])[:, 0]
    return ClassTargets(indices, scores)


class BoxTarget:
    """The score of a detection, for a detector whose output is a list of dicts (one per image,
    with ``boxes`` ``(N, 4)`` x0 y0 x1 y1 in input pixels, ``scores`` ``(N,)`` and ``labels``
    ``(N,)``, as torchvision's Faster R-CNN, RetinaNet, FCOS, SSD).

    ``boxes``: per image, one box ``(4,)`` or several ``(M, 4)`` (a list with one entry per image,
    or a ``(B, 4)`` / ``(B, M, 4)`` tensor); ``labels``: the same layout without the last
    dimension, or ``None`` for any label. For each given box the target takes the detection of
    the same label (when given) that overlaps it best, if that IoU is at least ``iou``, and
    scores its class score; an image's score is the **sum** over its boxes. With
    ``add_iou=True`` the matched IoU is added to each score (so the gradient also flows through
    the box regression), as pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``. An image with a box
    that no detection matches is one :class:`InputError` line naming the image."""

    raw_output = True

    def __init__(self, boxes, labels=None, iou: float = 0.5, add_iou: bool = False):
        if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0.0 <= float(iou) <= 1.0:
            raise InputError(f"iou must be a number in [0, 1], got {iou!r}")
        self.iou = float(iou)
        self.add_iou = bool(add_iou)
        self.boxes = [self._as_boxes(b, i) for i, b in enumerate(self._per_image(boxes, "boxes"))]
        if labels is None:
            self.labels = [None] * len(self.boxes)
        else:
            labels = self._per_image(labels, "labels")
            if len(labels) != len(self.boxes):
                raise InputError(f"got labels for {len(labels)} images but boxes for {len(self.boxes)}; "
                                 "give one entry per image")
            self.labels = [self._as_labels(lab, len(b), i) for i, (lab, b) in enumerate(zip(labels, self.boxes))]

    @staticmethod
    def _per_image(value, what: str) -> list:
        if torch.is_tensor(value):
            if value.dim() == 0:
                raise InputError(f"{what} must have one entry per image, got a scalar")
            return list(value)
        if isinstance(value, (list, tuple)) and value:
            return list(value)
        raise InputError(f"{what} must be a tensor or a non-empty list with one entry per image, got {value!r}")

    @staticmethod
    def _as_boxes(b, image: int) -> torch.Tensor:
        try:
            t = torch.as_tensor(b, dtype=torch.float32) if not torch.is_tensor(b) else b.detach().float()
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"the box of image {image} must be 4 numbers x0 y0 x1 y1, got {b!r}") from None
        t = t[None] if t.dim() == 1 else t
        if t.dim() != 2 or t.shape[1] != 4 or t.shape[0] == 0:
            raise InputError(f"the boxes of image {image} must have shape (4,) or (M, 4), got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()) or bool((t[:, 2:] <= t[:, :2]).any()):
            raise InputError(f"the boxes of image {image} must be finite x0 y0 x1 y1 with x1 > x0 and y1 > y0")
        return t

    @staticmethod
    def _as_labels(lab, n: int, image: int) -> torch.Tensor:
        t = torch.as_tensor(lab).detach() if not torch.is_tensor(lab) else lab.detach()
        t = t.reshape(-1)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.numel() != n:
            raise InputError(f"image {image} has {n} boxes but labels {lab!r}; give one integer label per box")
        return t.long()

    def select(self, images: torch.Tensor) -> "BoxTarget":
        """The target for the rows ``images`` (image positions) of a perturbed batch (Score-CAM):
        their boxes and labels, and a score of 0 where no detection matches a box any more."""
        picked = object.__new__(BoxTarget)
        rows = [int(i) for i in images.tolist()]
        picked.iou, picked.add_iou, picked._missing_zero = self.iou, self.add_iou, True
        picked.boxes = [self.boxes[i] for i in rows]
        picked.labels = [self.labels[i] for i in rows]
        return picked

    _missing_zero = False

    def __call__(self, output) -> torch.Tensor:
        if not isinstance(output, (list, tuple)) or not all(isinstance(d, dict) for d in output):
            raise InputError(f"BoxTarget needs a detector's output (a list of dicts with boxes, scores, labels), "
                             f"got {type(output).__name__}")
        if len(output) != len(self.boxes):
            raise InputError(f"BoxTarget has boxes for {len(self.boxes)} images but the batch has {len(output)}")
        scores = []
        for i, (det, boxes, labels) in enumerate(zip(output, self.boxes, self.labels)):
            missing = [k for k in ("boxes", "scores", "labels") if k not in det]
            if missing:
                raise InputError(f"the detections of image {i} have no {', '.join(missing)}; BoxTarget needs "
                                 "boxes, scores and labels")
            ious = pairwise_iou(boxes.to(det["boxes"]), det["boxes"])  # (M, N), on their device and dtype
            if labels is not None:
                ious = ious.masked_fill(labels.to(det["labels"].device)[:, None] != det["labels"][None, :], -1.0)
            if ious.shape[1] == 0 and self._missing_zero:
                scores.append(det["scores"].sum() * 0)
                continue
            if ious.shape[1] == 0:
                raise InputError(f"image {i} has no detections; lower the detector's score threshold or drop its box")
            best, index = ious.max(dim=1)
            best = best.detach() if not self.add_iou else best
            bad = (best.detach() < self.iou).nonzero()[:, 0]
            if len(bad) and self._missing_zero:  # unmatched boxes score 0
                keep = best.detach() >= self.iou
                score = det["scores"][index] + (best if self.add_iou else 0)
                scores.append((score * keep).sum())
                continue
            if len(bad):
                j = int(bad[0])
                raise InputError(f"no detection {'of label ' + str(int(labels[j])) + ' ' if labels is not None else ''}"
                                 f"overlaps box {j} of image {i} with IoU >= {self.iou:g} "
                                 f"(best {max(float(best[j].detach()), 0.0):.3f}); "
                                 "check the box, its label and the threshold")
            score = det["scores"][index]
            if self.add_iou:
                score = score + best
            scores.append(score.sum())
        return torch.stack(scores)


class SegmentationTarget:
    """The logits of class ``category`` summed over a region, for a semantic-segmentation output:
    the ``out`` entry of a dict (torchvision's FCN, DeepLabV3, LR-ASPP) or a ``(B, C, H, W)``
    tensor. ``mask``: ``(H, W)`` (every image) or ``(B, H, W)``, bool or float weights at the
    output's resolution; ``None`` takes the pixels where ``category`` is the argmax. An image whose
    region is empty is one :class:`InputError` line naming it."""

    raw_output = True

    def __init__(self, category: int, mask: torch.Tensor | None = None):
        if isinstance(category, bool) or not isinstance(category, int) or category < 0:
            raise InputError(f"category must be a class index (an int >= 0), got {category!r}")
        self.category = category
        if mask is not None:
            mask = torch.as_tensor(mask) if not torch.is_tensor(mask) else mask.detach()
            if mask.dim() not in (2, 3) or mask.numel() == 0:
                raise InputError(f"mask must have shape (H, W) or (B, H, W), got {tuple(mask.shape)}")
            if not mask.dtype.is_floating_point and mask.dtype != torch.bool:
                mask = mask.bool()
        self.mask = mask

    def __call__(self, output) -> torch.Tensor:
        logits = output.get("out") if isinstance(output, dict) else output
        if not torch.is_tensor(logits) and torch.is_tensor(getattr(output, "logits", None)):
            logits = output.logits  # a Hugging Face segmenter's output (at a quarter of the input size)
        if not torch.is_tensor(logits) or logits.dim() != 4:
            shape = tuple(logits.shape) if torch.is_tensor(logits) else type(output).__name__
            raise InputError(f"SegmentationTarget needs a (B, C, H, W) output or a dict with 'out', got {shape}")
        b, c, h, w = logits.shape
        if self.category >= c:
            raise InputError(f"category {self.category} is out of range for a segmentation model with {c} classes")
        if self.mask is None:
            mask = logits.detach().argmax(dim=1) == self.category
        else:
            mask = self.mask.to(logits.device)
            mask = mask.expand(b, -1, -1) if mask.dim() == 2 else mask
            if tuple(mask.shape) != (b, h, w):
                raise InputError(f"mask has shape {tuple(self.mask.shape)} but the output is {b} x {h} x {w}; "
                                 f"give (H, W) = ({h}, {w}) or (B, H, W)")
        return self._score(logits, mask)

    def select(self, images: torch.Tensor) -> "SegmentationTarget":
        """The target for the rows ``images`` of a perturbed batch (Score-CAM): needs a ``mask``,
        since the argmax of a perturbed image is not the region being explained."""
        if self.mask is None:
            raise InputError("Score-CAM and Ablation-CAM need SegmentationTarget(category, mask) with an explicit mask")
        picked = SegmentationTarget(self.category)
        picked.mask = self.mask if self.mask.dim() == 2 else self.mask[images.to(self.mask.device)]
        picked._perturbed = True
        return picked

    _perturbed = False

    def _score(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        empty = (mask.flatten(1) != 0).sum(1) == 0 if not self._perturbed else torch.zeros(1, dtype=torch.bool)
        if bool(empty.any()):
            i = int(empty.nonzero()[0, 0])
            raise InputError(f"image {i} has no pixel of class {self.category} in its "
                             f"{'mask' if self.mask is not None else 'prediction (argmax)'}; pass a mask")
        return (logits[:, self.category] * mask.to(logits.dtype)).flatten(1).sum(1)
