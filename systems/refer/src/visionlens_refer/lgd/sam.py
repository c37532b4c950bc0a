"""SAM automatic mask proposals from local weights (transformers ``SamModel``), pure torch.

A ``points_per_side`` grid of single-point prompts, batched; each point gives SAM's three
multimask outputs. Masks are kept when the predicted IoU >= ``pred_iou_thresh`` and the
stability score (IoU of the mask thresholded at +offset and -offset) >= ``stability_thresh``;
then greedy mask-IoU non-maximum suppression at ``nms_thresh`` ordered by predicted IoU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from visionlens.errors import InputError

from .local_weights import loading, model_dir, require_transformers

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
    def __init__(self, path: str | Path | None = None, points_per_side: int = 16, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_thresh: float = 0.92, stability_offset: float = 1.0,
                 nms_thresh: float = 0.7, min_area: int = 16, device: str = "cpu"):
        tf = require_transformers()
        self.path = model_dir(path, "SAM", "VISIONLENS_SAM", "facebook/sam-vit-base")
        with loading("SAM", self.path):
            self.model = tf.SamModel.from_pretrained(self.path, local_files_only=True).eval().to(device)
        cfg = self.path / "preprocessor_config.json"
        pre = json.loads(cfg.read_text()) if cfg.is_file() else {}
        self.mean = torch.tensor(pre.get("image_mean", IMAGENET_MEAN)).view(3, 1, 1)
        self.std = torch.tensor(pre.get("image_std", IMAGENET_STD)).view(3, 1, 1)
        self.size = int(self.model.config.vision_config.image_size)
        self.pps, self.ppb, self.device = points_per_side, points_per_batch, device
        self.iou_t, self.stab_t, self.offset = pred_iou_thresh, stability_thresh, stability_offset
        self.nms_t, self.min_area = nms_thresh, min_area
        self.name = f"sam:{self.path.name}"

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
        ticks = (torch.arange(self.pps, dtype=torch.float32) + 0.5) / self.pps
        pts = torch.stack(torch.meshgrid(ticks * nw, ticks * nh, indexing="xy"), -1).reshape(-1, 2)
        all_masks, all_scores = [], []
        for s in range(0, len(pts), self.ppb):
            p = pts[s:s + self.ppb]
            out = self.model(image_embeddings=emb, input_points=p[None, :, None].to(self.device),
                             input_labels=torch.ones(1, len(p), 1, dtype=torch.long, device=self.device),
                             multimask_output=True)
            logits = out.pred_masks[0].flatten(0, 1)[:, None].float().cpu()  # (P*3, 1, h', w')
            logits = F.interpolate(logits, size=(self.size, self.size), mode="bilinear", align_corners=False)
            logits = F.interpolate(logits[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            iou = out.iou_scores[0].flatten().float().cpu()
            hi, lo = (logits > self.offset).flatten(1).sum(1), (logits > -self.offset).flatten(1).sum(1)
            stability = hi.float() / lo.float().clamp_min(1)
            masks = logits > 0
            keep = (iou >= self.iou_t) & (stability >= self.stab_t) & (masks.flatten(1).sum(1) >= self.min_area)
            all_masks.append(masks[keep])
            all_scores.append(iou[keep])
        masks, scores = torch.cat(all_masks), torch.cat(all_scores)
        if len(masks) == 0:
            raise InputError(f"{self.name}: no mask passed the filters (pred_iou_thresh {self.iou_t}, "
                             f"stability_thresh {self.stab_t}); lower them")
        return masks[mask_nms(masks, scores, self.nms_t)]
