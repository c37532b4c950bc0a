"""Mask proposers without network weights: ground truth (oracle), files, classical segments.

Every proposer has ``propose(image, sample=None) -> (N, H, W) bool tensor`` with ``image``
(3, H, W) float in [0, 1]. SAM (local weights) is in ``sam.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from visionlens.errors import InputError

from ..masks import rle_decode


def _check(masks, image: torch.Tensor, source: str) -> torch.Tensor:
    masks = np.asarray(masks)
    if masks.dtype.kind not in "biuf":
        raise InputError(f"{source}: masks of type {masks.dtype} are not numbers; give 0/1 or boolean masks")
    if masks.dtype.kind == "f" and not np.isfinite(masks).all():
        raise InputError(f"{source}: masks hold NaN or infinite values; give 0/1 or boolean masks")
    masks = torch.as_tensor(masks).bool()
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(image.shape[1:]):
        raise InputError(f"{source}: masks of shape {tuple(masks.shape)} do not match the image {tuple(image.shape[1:])}")
    keep = masks.flatten(1).any(1)
    if not keep.any():
        raise InputError(f"{source}: no non-empty mask")
    return masks[keep]


class GTProposer:
    """Oracle: every instance mask of the sample (synthetic entities: objects, distractors and
    parts; RefCOCO: the image's instances), ordered by area, largest first (so that ties in the
    scores never favour the referent)."""

    name = "gt"

    def propose(self, image: torch.Tensor, sample=None) -> torch.Tensor:
        masks = getattr(sample, "candidates", None)
        if masks is None and hasattr(sample, "entities"):
            masks = np.stack([e.mask for e in sample.entities])
        if masks is None:
            raise InputError("the ground-truth proposer needs a sample with instance masks (synthetic or RefCOCO)")
        masks = _check(masks, image, "gt")
        order = sorted(range(len(masks)), key=lambda i: (-int(masks[i].sum()), i))
        return masks[order]


class FileProposer:
    """Precomputed masks: ``.npy`` / ``.npz`` (N, H, W), a folder of PNGs (non-zero = inside),
    or a ``.json`` list of COCO RLEs (or a dict from image id / file stem to such a list)."""

    name = "file"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"proposal file or folder {self.path} does not exist")

    def propose(self, image: torch.Tensor, sample=None) -> torch.Tensor:
        p, key = self.path, str(getattr(sample, "image_id", sample or ""))
        try:
            masks = self._read(p, key)
        except InputError as err:
            raise InputError(str(err) if str(p) in str(err) else f"{p}: {err}") from None
        except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError) as err:  # a corrupt or foreign file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            if "pickled" in reason:  # numpy's advice to load it unsafely is not ours to give
                reason = "not a numeric array"
            raise InputError(f"{p}: cannot be read as proposals ({reason}); use .npy, .npz, .json (COCO RLE) or a "
                             "folder of PNG masks") from None
        return _check(masks, image, str(p))

    @staticmethod
    def _read(p: Path, key: str):
        if p.is_dir():
            files = sorted(p.glob("*.png"))
            if not files:
                raise InputError(f"{p} holds no .png masks")
            masks = np.stack([np.asarray(Image.open(f).convert("L")) > 0 for f in files])
        elif p.suffix == ".npy":
            masks = np.load(p, allow_pickle=False)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                masks = z[key] if key in z.files else z[z.files[0]]
        elif p.suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                if key not in data and len(data) != 1:
                    raise InputError(f"{p} has no proposals for image {key!r}")
                data = data.get(key, next(iter(data.values())))
            masks = np.stack([rle_decode(r) for r in data])
        else:
            raise InputError(f"unsupported proposal file {p.name}; use .npy, .npz, .json (COCO RLE) or a folder of PNGs")
        return masks


def colour_segments(image: torch.Tensor, levels: int = 6, min_area: int = 12, max_iter: int = 4096) -> torch.Tensor:
    """Connected components (4-neighbour) of the quantised colours: pure torch, no weights."""
    q = (image.clamp(0, 1) * (levels - 1)).round().long()
    code = (q[0] * levels + q[1]) * levels + q[2]
    h, w = code.shape
    labels = torch.arange(h * w).view(h, w)
    big = h * w
    for _ in range(max_iter):
        new = labels.clone()
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            nb = torch.roll(labels, (dy, dx), (0, 1))
            same = torch.roll(code, (dy, dx), (0, 1)) == code
            if dy:
                same[0 if dy > 0 else -1] = False
            if dx:
                same[:, 0 if dx > 0 else -1] = False
            new = torch.minimum(new, torch.where(same, nb, big))
        flat = new.view(-1)
        for _ in range(3):  # pointer jumping: a label is a pixel of the same component
            flat = flat[flat]
        new = flat.view(h, w)
        if torch.equal(new, labels):
            break
        labels = new
    ids, counts = labels.unique(return_counts=True)
    ids = ids[counts >= min_area]
    return labels[None] == ids[:, None, None]


class ClassicalProposer:
    """Segments that need no weights: ``felzenszwalb`` or ``slic`` (scikit-image, several scales)
    or ``colour`` (connected components of quantised colours, pure torch). Segments smaller than
    ``min_area`` pixels (at the working size) are dropped; ``merge`` also proposes unions of
    touching segment pairs. Images larger than ``work_size`` are segmented downscaled."""

    def __init__(self, method: str = "colour", min_area: int = 12, merge: bool = True, max_masks: int = 200,
                 work_size: int = 160):
        if method not in ("colour", "felzenszwalb", "slic"):
            raise InputError(f"unknown classical proposer {method!r}; choose colour, felzenszwalb or slic")
        self.method, self.min_area, self.merge, self.max_masks = method, min_area, merge, max_masks
        self.work_size = work_size
        self.name = f"classical-{method}"
        self.identity = json.dumps({"classical": method, "min_area": min_area, "merge": merge, "max_masks": max_masks,
                                    "work_size": work_size})

    def _segments(self, image: torch.Tensor) -> torch.Tensor:
        if self.method == "colour":
            return colour_segments(image, min_area=self.min_area)
        try:
            from skimage import segmentation
        except ImportError:
            raise InputError(f"the {self.method} proposer needs scikit-image: pip install scikit-image "
                             "(or use --proposer colour)") from None
        arr = image.permute(1, 2, 0).numpy().astype(np.float64)
        maps = []
        if self.method == "felzenszwalb":
            for scale in (50, 200, 800):
                maps.append(segmentation.felzenszwalb(arr, scale=scale, sigma=0.5, min_size=self.min_area))
        else:
            for n in (16, 48, 128):
                maps.append(segmentation.slic(arr, n_segments=n, compactness=10, start_label=0))
        masks = [m == v for m in maps for v in np.unique(m)]
        out = torch.from_numpy(np.stack(masks))
        return out[out.flatten(1).sum(1) >= self.min_area]

    def propose(self, image: torch.Tensor, sample=None) -> torch.Tensor:
        h, w = image.shape[1:]
        scale = min(1.0, self.work_size / max(h, w))  # segment a downscaled copy, upsample the masks
        small = image.float()
        if scale < 1.0:
            small = F.interpolate(small[None], size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                  mode="area")[0]
        segs = self._segments(small)
        if self.merge and len(segs) > 1:
            grown = F.max_pool2d(segs[:, None].float(), 3, 1, 1)[:, 0] > 0
            touch = (grown.flatten(1).float() @ segs.flatten(1).float().T) > 0
            pairs = [(i, j) for i in range(len(segs)) for j in range(i + 1, len(segs)) if touch[i, j]]
            if pairs:
                a, b = zip(*pairs)
                segs = torch.cat([segs, segs[list(a)] | segs[list(b)]])
        segs = segs[segs.flatten(1).sum(1) < segs.shape[1] * segs.shape[2] * 0.9]  # drop near-full-image masks
        if len(segs) == 0:
            others = ", ".join(f"--proposer {m}" for m in ("colour", "felzenszwalb", "slic") if m != self.method)
            raise InputError(f"{self.name}: no proposals: the image has no region of at least {self.min_area} pixels "
                             f"that covers less than 90% of it (a plain or nearly plain image?); try {others}, "
                             "--proposer sam, or your own masks with --proposer file --proposals PATH")
        order = torch.argsort(segs.flatten(1).sum(1), descending=True, stable=True)
        segs = segs[order][: self.max_masks]
        if scale < 1.0:
            segs = F.interpolate(segs[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
        return segs
