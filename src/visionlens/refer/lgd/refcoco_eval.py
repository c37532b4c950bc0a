"""Evaluate the LGD pipeline on RefCOCO / RefCOCO+ / RefCOCOg with the user's local weights.

Every sentence of ``split`` (or the first ``limit``) is segmented; oIoU / mIoU / Pr@K are
computed against the referred instance. Proposals come from any proposer; the ground-truth
proposer receives the image's instance masks (the oracle upper bound of the RIS literature).
Description caches are keyed by ``coco:<image id>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch

from ...core.progress import Progress
from ...data.images import load_image
from .metrics import ReferMetrics


@dataclass
class ReferImage:
    image_id: str
    candidates: np.ndarray


def evaluate_refcoco(dataset, split: str, coco_dir, lgd, proposer, limit: int | None = None,
                     progress: bool = False) -> dict:
    """``{"summary": metrics, "samples": [{sent_id, ann_id, iou, chosen}]}``."""
    items = list(islice(dataset.items(split), limit))
    metrics, rows = ReferMetrics(), []
    bar = Progress(len(items), f"refer {split}", enabled=progress)
    for item in items:
        pil = load_image(dataset.image_path(item, coco_dir))
        image = torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
        ctx = ReferImage(f"coco:{item.image_id}", dataset.image_masks(item.image_id))
        masks = proposer.propose(image, ctx)
        result = lgd.segment(image, item.sentence, masks, image_id=ctx.image_id)
        iou = metrics.add(result.mask, dataset.mask(item.ann_id))
        rows.append({"sent_id": item.sent_id, "ann_id": item.ann_id, "iou": iou, "chosen": result.index})
        bar.update(1)
    return {"summary": metrics.summary(), "samples": rows}
