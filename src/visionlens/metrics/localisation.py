"""Localisation metrics against ground truth (spec 7.3-7.5): pointing game (Zhang et al., ECCV
2016), energy-based pointing game (Wang et al., Score-CAM), relevance mass and rank accuracy
(Arras et al., 2022) and the ILSVRC localisation error with the largest connected component.

All take ``maps`` ``(B, H, W)`` and ``masks`` ``(B, H, W)`` (any non-zero value is inside), or
boxes ``(B, 4)`` (``x0 y0 x1 y1`` pixels, exclusive end), as tensors on any device or NumPy
arrays, batched, and return per-image values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.boxes import box_of
from ..errors import InputError


def _inputs(maps, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """``maps`` and boolean ``masks`` as tensors on the maps' device (NumPy arrays too, such as
    another library's maps or a mask read from a 0/255 PNG); one line when they are not both
    ``(B, H, W)``."""
    maps, masks = torch.as_tensor(maps), torch.as_tensor(masks)
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise InputError(f"maps and masks must both be (B, H, W); got {tuple(maps.shape)} and {tuple(masks.shape)}")
    return maps, masks.to(maps.device).bool()


def boxes_to_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 4)`` or ``(B, K, 4)`` boxes (x0 y0 x1 y1, exclusive end) -> ``(B, H, W)`` union mask."""
    if boxes.ndim == 2:
        boxes = boxes[:, None]
    h, w = size
    ys = torch.arange(h, device=boxes.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, 1, w)
    b = boxes[..., None, None]
    inside = (xs >= b[:, :, 0]) & (xs < b[:, :, 2]) & (ys >= b[:, :, 1]) & (ys < b[:, :, 3])
    return inside.any(1)


def argmax_points(maps: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` (row, col) of each map's maximum (the first in flat order on ties)."""
    idx = maps.flatten(1).argmax(1)
    return torch.stack([idx // maps.shape[-1], idx % maps.shape[-1]], 1)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 15.0) -> torch.Tensor:
    """Hit (1.0) when the map's maximum lies within ``tolerance`` pixels (Euclidean) of a mask pixel,
    i.e. inside the mask dilated by a disc of that radius; NaN for an empty mask. A maximum shared
    by several pixels scores the share of them that hit (the expected hit when the tie is broken at
    random); a constant map (all zero) points nowhere and scores 0, wherever the object is (by
    pixel order it would hit objects at the top left). Average per class, then over classes, for
    the original protocol (:func:`per_class_mean`)."""
    maps, masks = _inputs(maps, masks)
    p = argmax_points(maps)
    h, w = maps.shape[-2:]
    ys = torch.arange(h, device=maps.device).view(1, h, 1)
    xs = torch.arange(w, device=maps.device).view(1, 1, w)
    d2 = (ys - p[:, 0, None, None]) ** 2 + (xs - p[:, 1, None, None]) ** 2
    hit = (masks & (d2 <= tolerance**2)).flatten(1).any(1).float()
    flat = maps.flatten(1)
    peaks = flat == flat.max(1, keepdim=True).values
    tied = (peaks.sum(1) > 1).nonzero().flatten()
    if len(tied):
        near = _dilated(masks[tied], tolerance).flatten(1)
        hit[tied] = (near & peaks[tied]).sum(1).float() / peaks[tied].sum(1)
    hit[peaks.all(1)] = 0.0  # a constant map: every pixel is a peak
    return torch.where(masks.flatten(1).any(1), hit, torch.full_like(hit, float("nan")))


def _constant(maps: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the maps with one value everywhere (no pixel ranked above another)."""
    flat = maps.flatten(1)
    return flat.max(1).values == flat.min(1).values


def _dilated(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """``(B, H, W)`` bool: the pixels within ``radius`` (Euclidean) of a mask pixel."""
    r = int(radius)
    if r < 1:
        return masks
    offsets = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float32)
    disc = (offsets[:, None] ** 2 + offsets[None] ** 2 <= radius**2).float()
    return F.conv2d(masks[:, None].float(), disc[None, None], padding=r)[:, 0] > 0.5


def per_class_mean(values: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per class, then over the classes present (NaNs ignored)."""
    means = []
    for c in labels.unique():
        v = values[(labels == c) & ~values.isnan()]
        if len(v):
            means.append(v.float().mean())
    return float(torch.stack(means).mean()) if means else float("nan")


def relevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the (non-negative) map inside the mask: ``sum_M L / sum L`` (0 for an all-zero map;
    NaN for an empty mask, which has no inside, as the pointing game and relevance rank leave it out)."""
    maps, masks = _inputs(maps, masks)
    m = maps.float().clamp_min(0).flatten(1)
    inside = (m * masks.flatten(1).float()).sum(1)
    total = m.sum(1)
    mass = torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))
    return torch.where(masks.flatten(1).any(1), mass, torch.full_like(mass, float("nan")))


def energy_pointing_game(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Score-CAM's proportion of energy inside the union of the ground-truth boxes (min-max
    normalised maps). No image is excluded by box size here (the spec leaves it open)."""
    maps = maps.float()
    low = maps.flatten(1).min(1).values[:, None, None]
    high = maps.flatten(1).max(1).values[:, None, None]
    norm = (maps - low) / (high - low).clamp_min(1e-12)
    return relevance_mass(norm, boxes_to_mask(boxes.to(maps.device), maps.shape[-2:]))


def relevance_rank(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the ``K = |mask|`` highest-ranked pixels that lie in the mask; NaN for an empty
    mask. Pixels tied at the K-th value share the places left among them (the expected share when
    ties are broken at random); a constant map (all zero) ranks nothing and scores 0, wherever the
    object is (by pixel order it would score objects at the top left)."""
    maps, masks = _inputs(maps, masks)
    flat = masks.flatten(1)
    values = maps.flatten(1).float()
    k = flat.sum(1)
    kth = values.sort(1, descending=True).values.gather(1, (k - 1).clamp_min(0)[:, None])
    above, at = values > kth, values == kth
    places = (k - above.sum(1)).float()  # top-K places left for the pixels at the K-th value
    inside = (above & flat).sum(1) + places * (at & flat).sum(1) / at.sum(1).clamp_min(1)
    score = torch.where(_constant(maps), torch.zeros_like(inside), inside / k.clamp_min(1))
    return torch.where(k > 0, score, torch.full_like(score, float("nan")))


def largest_component(fg: torch.Tensor, max_iter: int | None = None) -> torch.Tensor:
    """``(B, H, W)`` bool -> the largest 8-connected component of each image (bool), by batched
    label propagation (max-pooling of pixel labels until stable); ties: the component with the
    largest label."""
    b, h, w = fg.shape
    fgf = fg.float()
    labels = (torch.arange(1, h * w + 1, device=fg.device, dtype=torch.float32).view(1, h, w) * fgf)
    for _ in range(max_iter or h * w):
        new = F.max_pool2d(labels[:, None], 3, 1, 1)[:, 0] * fgf
        if torch.equal(new, labels):
            break
        labels = new
    lab = labels.long().flatten(1)
    counts = torch.zeros(b, h * w + 1, device=fg.device).scatter_add_(1, lab, torch.ones_like(lab, dtype=torch.float32))
    counts[:, 0] = 0
    best = counts.argmax(1)
    return (lab == best[:, None]).view(b, h, w) & fg


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of paired boxes ``(B, 4)``."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = iw * ih
    area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def localisation_error(maps: torch.Tensor, boxes: torch.Tensor, correct_class: torch.Tensor | None = None,
                       threshold: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """ILSVRC protocol: threshold each map at ``threshold`` x its max, keep the largest
    8-connected component, take its box. Returns per image ``(error, iou)``: error is 0 when the
    IoU with the ground-truth box is >= 0.5 (and ``correct_class`` holds, for top-1 loc; leave it
    None for GT-known loc), else 1."""
    maps = maps.float()
    fg = maps >= threshold * maps.flatten(1).max(1).values[:, None, None].clamp_min(1e-12)
    pred = box_of(largest_component(fg))
    iou = box_iou(pred, boxes.to(maps.device).float())
    ok = iou >= 0.5
    if correct_class is not None:
        ok = ok & correct_class.to(maps.device).bool()
    return 1.0 - ok.float(), iou
