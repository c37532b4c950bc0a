"""SAM automatic mask proposals from local weights (transformers ``SamModel``), pure torch.

A ``points_per_side`` grid of single-point prompts, ``points_per_batch`` at a time; each point
gives SAM's three multimask outputs. Filtering is done on SAM's low-resolution logits (256 x 256
for the padded image), so memory per batch does not depend on the image size: a mask is kept
when its predicted IoU >= ``pred_iou_thresh``, its stability score (area above +offset over
area above -offset) >= ``stability_thresh`` and its area (in input-image pixels) >=
``min_area``. Greedy mask-IoU NMS at ``nms_thresh`` (by predicted IoU) follows, then the
``max_masks`` best are upsampled to the image.

The default thresholds are 0: a random-initialised SAM-base predicts IoUs within about 0.02 of
0 and logits within about 0.02 of 0 (far below the stability offset 1), so the 0.88 / 0.95 of
SAM's automatic mask generator keep nothing; with trained weights raise them
(``--sam-pred-iou 0.88 --sam-stability 0.95``). Stability and area are measured on the
low-resolution logits (SAM's generator measures them after upsampling); the area is checked
again on the upsampled masks.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from visionlens.errors import InputError

from .local_weights import loading, model_dir, require_transformers, weights_identity
from .sam_filters import FLAGS, SamFilters

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, thresh: float) -> list[int]:
    """Greedy NMS on mask IoU; returns kept indices in descending score order."""
    order = torch.argsort(scores, descending=True, stable=True)
    flat = masks[order].flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / (area[:, None] + area[None] - inter).clamp_min(1)
    keep: list[int] = []
    for i in range(len(order)):
        if all(iou[i, j] <= thresh for j in keep):
            keep.append(i)
    return [int(order[i]) for i in keep]


class SamProposer:
    """``SamProposer(path, **SamFilters fields, device=...)``; ``propose(image) -> (N, H, W) bool``.
    ``identity`` names the weights and the settings (the proposal cache's key)."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", **filters):
        self.filters = SamFilters(**filters)
        tf = require_transformers()
        self.path = model_dir(path, "SAM", "VISIONLENS_SAM", "facebook/sam-vit-base")
        with loading("SAM", self.path):
            self.model = tf.SamModel.from_pretrained(self.path, local_files_only=True).eval().to(device)
        cfg = self.path / "preprocessor_config.json"
        pre = json.loads(cfg.read_text()) if cfg.is_file() else {}
        self.mean = torch.tensor(pre.get("image_mean", IMAGENET_MEAN)).view(3, 1, 1)
        self.std = torch.tensor(pre.get("image_std", IMAGENET_STD)).view(3, 1, 1)
        self.size = int(self.model.config.vision_config.image_size)
        self.device = device
        self.name = f"sam:{self.path.name}"
        self.identity = json.dumps({"sam": weights_identity(self.path), **asdict(self.filters)}, sort_keys=True)

    @torch.no_grad()
    def propose(self, image: torch.Tensor, sample=None) -> torch.Tensor:
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"expected an image (3, H, W), got {tuple(image.shape)}")
        h, w = image.shape[1:]
        scale = self.size / max(h, w)
        nh, nw = int(round(h * scale)), int(round(w * scale))
        x = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)
        x = F.pad((x - self.mean) / self.std, (0, self.size - nw, 0, self.size - nh))
        emb = self.model.get_image_embeddings(pixel_values=x.to(self.device))
        emb = emb if isinstance(emb, torch.Tensor) else emb[0]
        logits, iou, seen = self._filtered_logits(emb, nh, nw, h * w)
        if len(logits) == 0:
            raise InputError(self._nothing_kept(seen))
        keep = mask_nms(logits > 0, iou, self.filters.nms_thresh)[: self.filters.max_masks]
        masks = F.interpolate(logits[keep][:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0
        masks = masks[masks.flatten(1).sum(1) >= max(1, self.filters.min_area)]  # the area again, at full size
        if len(masks) == 0:
            raise InputError(self._nothing_kept(seen))
        return masks

    def _filtered_logits(self, emb: torch.Tensor, nh: int, nw: int, pixels: int):
        """Low-resolution logits (cropped to the image) and predicted IoUs of the masks that pass
        the filters, batch by batch; ``seen`` holds the best value of each filtered quantity."""
        f = self.filters
        ticks = (torch.arange(f.points_per_side, dtype=torch.float32) + 0.5) / f.points_per_side
        pts = torch.stack(torch.meshgrid(ticks * nw, ticks * nh, indexing="xy"), -1).reshape(-1, 2)
        kept_logits, kept_iou = [], []
        seen = {"pred_iou_thresh": -float("inf"), "stability_thresh": 0.0, "min_area": 0}
        for s in range(0, len(pts), f.points_per_batch):
            p = pts[s:s + f.points_per_batch]
            out = self.model(image_embeddings=emb, input_points=p[None, :, None].to(self.device),
                             input_labels=torch.ones(1, len(p), 1, dtype=torch.long, device=self.device),
                             multimask_output=True)
            logits = out.pred_masks[0].flatten(0, 1).float().cpu()  # (P*3, L, L) for the padded square
            side = logits.shape[-1]
            lh, lw = max(1, round(nh * side / self.size)), max(1, round(nw * side / self.size))
            logits = logits[:, :lh, :lw]
            iou = out.iou_scores[0].flatten().float().cpu()
            hi = (logits > f.stability_offset).flatten(1).sum(1)
            lo = (logits > -f.stability_offset).flatten(1).sum(1)
            stability = hi.float() / lo.float().clamp_min(1)
            area = (logits > 0).flatten(1).sum(1).float() * pixels / (lh * lw)
            keep = (iou >= f.pred_iou_thresh) & (stability >= f.stability_thresh) & (area >= f.min_area)
            seen = {"pred_iou_thresh": max(seen["pred_iou_thresh"], float(iou.max())),
                    "stability_thresh": max(seen["stability_thresh"], float(stability.max())),
                    "min_area": max(seen["min_area"], int(area.max()))}
            kept_logits.append(logits[keep])
            kept_iou.append(iou[keep])
        return torch.cat(kept_logits), torch.cat(kept_iou), seen

    def _nothing_kept(self, seen: dict) -> str:
        shown = {key: f"{seen[key]:.3g}" if key != "min_area" else f"{seen[key]} px" for key in FLAGS}
        settings = ", ".join(f"{flag} {getattr(self.filters, key):g} (best seen {shown[key]})" for key, flag in FLAGS.items())
        return f"{self.name}: no mask passed the filters: {settings}; lower them"
