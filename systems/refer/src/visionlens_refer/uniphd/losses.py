"""The UniPHD criterion: focal class loss over all queries, and on the matched query keypoint L1
(masked by GT labels), 1 - OKS, visibility BCE, box L1 + GIoU, and focal + dice on the mask at full
resolution and at stride 2. Applied to every decoder layer (each matched on its own) and, without
boxes/masks/visibility, to the encoder top-k proposals; all terms are normalised by the number of
targets (one per sample)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import box_cxcywh_to_xyxy, generalized_iou, oks_similarity
from .matcher import match


def sigmoid_focal(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    return ce * (1 - p_t) ** gamma * (alpha * targets + (1 - alpha) * (1 - targets))


def dice_loss(logits, targets):
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def _layer_losses(out, target, idx, with_boxes: bool):
    b = idx.shape[0]
    rows = torch.arange(b, device=idx.device)
    onehot = torch.zeros_like(out["logits"])
    onehot[rows, idx] = 1
    losses = {"ce": sigmoid_focal(out["logits"], onehot).sum() / b}
    kp, vis = out["keypoints"][rows, idx], target["visible"]
    losses["keypoints"] = ((kp - target["keypoints"]).abs().sum(-1) * vis).sum() / b
    losses["oks"] = (1 - oks_similarity(kp, target["keypoints"], vis, target["area"])).sum() / b
    if with_boxes:
        losses["visibility"] = F.binary_cross_entropy_with_logits(out["visibility"][rows, idx], target["visible_flag"], reduction="none").mean(1).sum() / b
        box = out["boxes"][rows, idx]
        losses["bbox"] = (box - target["boxes"]).abs().sum() / b
        losses["giou"] = (1 - generalized_iou(box_cxcywh_to_xyxy(box), box_cxcywh_to_xyxy(target["boxes"]))).sum() / b
    return losses


def criterion(outputs: dict, target: dict, config) -> tuple[torch.Tensor, dict]:
    """Total weighted loss and the unweighted terms of the final layer (for logging)."""
    w, cw = config.loss_weights, config.cost_weights
    total, log = 0.0, {}
    n_layers = len(outputs["layers"])
    for lid, out in enumerate(outputs["layers"]):
        last = lid == n_layers - 1
        idx = match(out, target, cw, outputs["masks"] if last else None, config.matcher_mask_points)
        terms = _layer_losses(out, target, idx, True)
        if last:
            rows = torch.arange(idx.shape[0], device=idx.device)
            m = outputs["masks"][rows, idx]
            gt = target["masks"].float()
            terms["mask"] = sigmoid_focal(m, gt).flatten(1).mean(1).sum() / idx.shape[0]
            terms["dice"] = dice_loss(m, gt).sum() / idx.shape[0]
            m_low = F.interpolate(m[:, None], scale_factor=0.5, mode="bilinear", align_corners=False)[:, 0]
            gt_low = F.interpolate(gt[:, None], scale_factor=0.5, mode="bilinear", align_corners=False)[:, 0]
            terms["mask_low"] = sigmoid_focal(m_low, gt_low).flatten(1).mean(1).sum() / idx.shape[0]
            terms["dice_low"] = dice_loss(m_low, gt_low).sum() / idx.shape[0]
            log = {k: float(v.detach()) for k, v in terms.items()}
        total = total + sum(w[k] * v for k, v in terms.items())
    interm = outputs["interm"]
    idx = match(interm, target, cw)
    total = total + sum(w[k] * v for k, v in _layer_losses(interm, target, idx, False).items())
    return total, log
