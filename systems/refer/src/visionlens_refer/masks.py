"""Binary masks in the COCO conventions: run-length encoding (column-major, starting with a run
of zeros; the compressed string form of ``maskApi.c``), polygon rasterisation (COCO's
``rleFrPoly`` algorithm) and mask IoU.

Pure Python + numpy, so RefCOCO annotations and precomputed proposals load without pycocotools
(which the tests use as the oracle).
"""

from __future__ import annotations

import math

import numpy as np

from visionlens.errors import InputError


def rle_counts_from_string(s: str) -> list[int]:
    """Decode the compressed COCO counts string (6-bit chunks, delta-coded after the 2nd run)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_counts_to_string(counts: list[int]) -> str:
    """Encode run lengths as the compressed COCO counts string (inverse of the above)."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((ch & 0x10) == 0 and x == 0 or (ch & 0x10) and x == -1)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def rle_encode(mask: np.ndarray, compressed: bool = True) -> dict:
    """``(H, W)`` bool mask -> COCO RLE dict ``{"size": [H, W], "counts": str | list}``."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise InputError(f"a mask must be (H, W), got shape {m.shape}")
    flat = m.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1] if flat.size else 0]])))
    runs = np.diff(np.concatenate([[0], change]))
    counts = [int(r) for r in runs]
    if flat.size and counts and sum(counts) > flat.size:  # trailing sentinel run
        counts[-1] -= sum(counts) - flat.size
        if counts[-1] == 0:
            counts.pop()
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle_counts_to_string(counts) if compressed else counts}


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE dict (compressed string or list counts) -> ``(H, W)`` bool mask."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"not a COCO RLE dict with 'size' and 'counts': {err}") from None
    if h < 0 or w < 0:
        raise InputError(f"RLE size must be non-negative, got {[h, w]}")
    try:
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        if isinstance(counts, str):
            counts = rle_counts_from_string(counts)
        counts = np.asarray(counts, dtype=np.int64)
    except (IndexError, UnicodeDecodeError, TypeError, ValueError, OverflowError):
        raise InputError("RLE 'counts' is neither a COCO counts string nor a list of integers") from None
    if counts.ndim != 1:
        raise InputError(f"RLE 'counts' must be a flat list, got shape {counts.shape}")
    if counts.sum() != h * w or (counts < 0).any():
        raise InputError(f"RLE counts sum to {int(counts.sum())}, expected {h}*{w}={h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((h, w), order="F")


def _polygon_counts(xy: list[float], h: int, w: int) -> list[int]:
    """RLE counts of one polygon, following COCO's ``rleFrPoly``: the boundary is traced on a
    5x finer grid, its x-crossings are brought back to pixel columns, and each crossing toggles
    inside / outside along the column-major pixel order."""
    scale = 5.0
    k = len(xy) // 2
    x = [int(scale * xy[2 * j] + 0.5) for j in range(k)] + [int(scale * xy[0] + 0.5)]
    y = [int(scale * xy[2 * j + 1] + 0.5) for j in range(k)] + [int(scale * xy[1] + 0.5)]
    u: list[int] = []
    v: list[int] = []
    for j in range(k):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            for d in range(dx + 1):
                t = dx - d if flip else d
                u.append(t + xs)
                v.append(int(ys + s * t + 0.5))
        else:
            s = (xe - xs) / dy
            for d in range(dy + 1):
                t = dy - d if flip else d
                v.append(t + ys)
                u.append(int(xs + s * t + 0.5))
    starts = []
    for j in range(1, len(u)):
        if u[j] == u[j - 1]:
            continue
        xd = (u[j] if u[j] < u[j - 1] else u[j] - 1 + 0.0)
        xd = (xd + 0.5) / scale - 0.5
        if math.floor(xd) != xd or xd < 0 or xd > w - 1:
            continue
        yd = (v[j] if v[j] < v[j - 1] else v[j - 1]) + 0.0
        yd = min(max((yd + 0.5) / scale - 0.5, 0.0), float(h))
        starts.append(int(xd) * h + int(math.ceil(yd)))
    a = sorted(starts + [h * w])
    diffs = [a[0]] + [a[i] - a[i - 1] for i in range(1, len(a))]
    counts = [diffs[0]]
    j = 1
    while j < len(diffs):
        if diffs[j] > 0:
            counts.append(diffs[j])
            j += 1
        else:
            j += 1
            if j < len(diffs):
                counts[-1] += diffs[j]
                j += 1
    return counts


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` (union), pixel-identical to
    pycocotools' ``frPyObjects`` + ``merge`` + ``decode``."""
    out = np.zeros((int(height), int(width)), dtype=bool)
    for poly in polygons:
        xy = _polygon_coordinates(poly, int(height), int(width))
        if len(xy) >= 6:
            out |= rle_decode({"size": [height, width], "counts": _polygon_counts(xy, int(height), int(width))})
    return out


def _polygon_coordinates(poly, height: int, width: int) -> list[float]:
    """``poly`` as floats: finite and not absurdly far outside the image (the tracing walks every
    1/5 pixel, so a coordinate of 1e9 would take hours)."""
    try:
        xy = [float(c) for c in poly]
    except (TypeError, ValueError):
        raise InputError("a polygon must be a flat list of numbers [x0, y0, x1, y1, ...]") from None
    reach = 10 * max(height, width, 1)
    if not all(math.isfinite(c) and abs(c) <= reach for c in xy):
        raise InputError(f"a polygon coordinate is NaN, infinite or far outside the {height}x{width} image")
    return xy


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` field (polygons, RLE dict, or uncompressed RLE) -> bool mask."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    if isinstance(segmentation, dict):
        return rle_decode(segmentation)
    raise InputError(f"unsupported segmentation type {type(segmentation).__name__}; expected polygons or RLE")


def mask_iou(pred: np.ndarray, gt: np.ndarray, empty: float = 0.0) -> tuple[float, int, int]:
    """``(IoU, |P & G|, |P | G|)`` of two bool masks; ``empty`` is the IoU when the union is
    empty (0 in Global-Local CLIP's evaluation, 1 in RefHuman's)."""
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise InputError(f"prediction {p.shape} and ground truth {g.shape} masks differ in shape")
    inter, union = int(np.logical_and(p, g).sum()), int(np.logical_or(p, g).sum())
    return (inter / union if union else float(empty)), inter, union
