"""Our training matcher (the released UniPHD code has none: ``build_uniphd`` passes ``matcher=None``).

RefHuman has exactly one ground truth per referring sample, so Hungarian matching reduces to picking,
per sample, the query with the lowest cost

    C = w_ce * focal_cls + w_kpt * L1_kpt + w_oks * (1 - OKS) + w_box * L1_box + w_giou * (1 - GIoU)
        [+ w_mask * mask_focal + w_dice * dice, on a 12x12 grid of point samples when masks are given]

with the config weights (class 2, bbox 5, giou 2, keypoints 10, oks 4, mask 2, dice 5). Every other
query is a no-object negative for the class loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import box_cxcywh_to_xyxy, generalized_iou, oks_similarity


@torch.no_grad()
def match_cost(out: dict, target: dict, weights: dict, masks: torch.Tensor | None = None, mask_points: int = 144) -> torch.Tensor:
    """(B, Q) matching cost of each query for its sample's single target."""
    alpha, gamma = 0.25, 2.0
    prob = out["logits"].sigmoid()
    neg = (1 - alpha) * prob ** gamma * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    cost = weights["ce"] * (pos - neg)
    kp, vis = target["keypoints"], target["visible"]  # (B, 17, 2), (B, 17)
    l1 = ((out["keypoints"] - kp[:, None]).abs().sum(-1) * vis[:, None]).sum(-1) / vis.sum(-1, keepdim=True).clamp(min=1)
    cost = cost + weights["keypoints"] * l1
    cost = cost + weights["oks"] * (1 - oks_similarity(out["keypoints"], kp[:, None], vis[:, None], target["area"][:, None]))
    if "boxes" in out:
        cost = cost + weights["bbox"] * (out["boxes"] - target["boxes"][:, None]).abs().sum(-1)
        giou = generalized_iou(box_cxcywh_to_xyxy(out["boxes"]), box_cxcywh_to_xyxy(target["boxes"])[:, None])
        cost = cost + weights["giou"] * (1 - giou)
    if masks is not None and mask_points:
        side = int(round(mask_points ** 0.5))
        lin = (torch.arange(side, device=masks.device) + 0.5) / side * 2 - 1
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        grid = torch.stack([gx, gy], -1)[None].expand(masks.shape[0], -1, -1, -1)
        pl = F.grid_sample(masks, grid, align_corners=False).flatten(2)  # (B, Q, P)
        pt = F.grid_sample(target["masks"][:, None].float(), grid, align_corners=False).flatten(2)  # (B, 1, P)
        p = pl.sigmoid()
        focal = (alpha * (1 - p) ** gamma * F.softplus(-pl) * pt + (1 - alpha) * p ** gamma * F.softplus(pl) * (1 - pt)).mean(-1)
        dice = 1 - (2 * (p * pt).sum(-1) + 1) / (p.sum(-1) + pt.sum(-1) + 1)
        cost = cost + weights["mask"] * focal + weights["dice"] * dice
    return cost


def match(out: dict, target: dict, weights: dict, masks: torch.Tensor | None = None, mask_points: int = 144) -> torch.Tensor:
    """Index (B,) of the matched query per sample: the argmin of ``match_cost``."""
    return match_cost(out, target, weights, masks, mask_points).argmin(1)
