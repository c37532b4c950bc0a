"""Evaluate the LGD pipeline on RefCOCO / RefCOCO+ / RefCOCOg with the user's local weights.

Every sentence of ``split`` (or the first ``limit``) is segmented; oIoU / mIoU / Pr@K are
computed against the referred instance. Proposals come from any proposer; the ground-truth
proposer receives the image's instance masks (the oracle upper bound of the RIS literature).
Description caches are keyed by ``coco:<image id>``. Sentences are run image by image, and each
image's proposals and region features come from a :class:`~.regions.RegionCache` (``cache_dir``
keeps them on disk across runs), so SAM and the CLIP image side run once per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from visionlens.core.progress import Progress
from visionlens.data.images import load_image
from visionlens.errors import InputError, display

from .metrics import ReferMetrics
from .regions import RegionCache


@dataclass
class ReferImage:
    image_id: str
    candidates: np.ndarray


def evaluate_refcoco(dataset, split: str, coco_dir, lgd, proposer, limit: int | None = None,
                     progress: bool = False, on_skip=None, cache_dir=None, on_warning=None) -> dict:
    """``{"summary": metrics, "samples": [{sent_id, ann_id, iou, chosen}], "skipped": [...],
    "region_cache": counts}``; samples keep the split's sentence order.

    Every image file is checked before any work. A sentence whose image or masks turn out to be
    unusable (an :class:`InputError`) is skipped: recorded in ``skipped`` and passed to
    ``on_skip(message)``; the rest still run. A corrupt file in ``cache_dir`` is recomputed and
    passed to ``on_warning(message)``."""
    items = list(islice(dataset.items(split), limit))
    if not items:
        raise InputError(f"split {split!r} has no sentences")
    check_image_files(dataset, items, coco_dir)
    cache = RegionCache(proposer, lgd.encoder, cache_dir, batch=lgd.region_batch, on_warning=on_warning)
    metrics, rows, skipped = ReferMetrics(), {}, []
    bar = Progress(len(items), f"refer {split}", enabled=progress)
    for position, item in _by_image(items):
        try:
            rows[position] = _evaluate_item(dataset, item, coco_dir, lgd, cache, metrics)
        except InputError as err:
            message = f"sentence {item.sent_id} (ann_id {item.ann_id}): {err}"
            skipped.append({"sent_id": item.sent_id, "ann_id": item.ann_id, "error": str(err)})
            if on_skip is not None:
                on_skip(message)
        bar.update(1)
    return {"summary": metrics.summary(), "samples": [rows[k] for k in sorted(rows)], "skipped": skipped,
            "region_cache": dict(cache.stats)}


def _by_image(items):
    """``(position, item)`` with each image's sentences together, images in order of first use."""
    order = {}
    for item in items:
        order.setdefault(item.image_id, len(order))
    return sorted(enumerate(items), key=lambda pair: (order[pair[1].image_id], pair[0]))


def check_image_files(dataset, items, coco_dir) -> None:
    """An :class:`InputError` naming the first image file of ``items`` missing from ``coco_dir``."""
    if not Path(coco_dir).is_dir():
        raise InputError(f"--coco-dir {display(coco_dir)}: no such folder (the COCO train2014 images)")
    for item in items:
        path = dataset.image_path(item, coco_dir)
        if not path.is_file():
            raise InputError(f"{display(path)}: no such image (sentence {item.sent_id}); check --coco-dir")


def _evaluate_item(dataset, item, coco_dir, lgd, cache: RegionCache, metrics: ReferMetrics) -> dict:
    pil = load_image(dataset.image_path(item, coco_dir))
    image = torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    ctx = ReferImage(f"coco:{item.image_id}", dataset.image_masks(item.image_id))
    gt = dataset.mask(item.ann_id)
    if gt.shape != tuple(image.shape[1:]):
        raise InputError(f"the image is {image.shape[2]}x{image.shape[1]} but its annotation is {gt.shape[1]}x{gt.shape[0]}")
    regions = cache.regions(image, ctx)
    result = lgd.segment(image, item.sentence, regions.masks, image_id=ctx.image_id, regions=regions)
    iou = metrics.add(result.mask, gt)
    return {"sent_id": item.sent_id, "ann_id": item.ann_id, "iou": iou, "chosen": result.index}
