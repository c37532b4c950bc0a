"""Evaluate a UniPHD on RefHuman-format samples with one prompt kind, RefHuman's protocol:
COCO keypoint AP over the ranked query predictions (maxDets 20), mask AP (one category = useCats 0),
and on the top-1 query PCKh@0.5 (ear distance), oIoU and mIoU."""

from __future__ import annotations

import numpy as np
import torch

from .data import RefSample
from .inference import fit_sample, images_tensor, make_prompt, postprocess
from .metrics import coco_ap, pckh, referring_iou


@torch.no_grad()
def evaluate_model(model, samples: list[RefSample], kind: str = "text", batch_size: int = 32, control: bool = False,
                   progress=None) -> dict:
    """Metrics dict; ``control=True`` replaces the prompt by an empty text / a random point (the
    prompt-agnostic control: what the model scores without knowing whom to pick)."""
    model.eval()
    size = model.config.image_size
    rng = np.random.default_rng(0)
    gts, kp_preds, mask_preds, top_kp, top_masks = [], [], [], [], []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        fitted = [fit_sample(s, size) for s in chunk]
        prompt = make_prompt(fitted, kind)
        if control:
            if kind == "text":
                prompt["texts"] = [""] * len(chunk)
            else:
                random_points = torch.tensor(rng.uniform(0, size - 1, size=(len(chunk), 1, 2)), dtype=torch.float32)
                prompt["points"] = random_points.expand_as(prompt["points"]).contiguous()
        outputs = model(images_tensor(fitted), prompt)
        for s, res in zip(chunk, _rescale(outputs, size, chunk)):
            gts.append({"image_id": s.image_id, "id": s.ann_id, "keypoints": s.keypoints.reshape(-1).tolist(), "area": s.area,
                        "bbox": list(s.bbox), "iscrowd": 0, "num_keypoints": int((s.keypoints[:, 2] > 0).sum()), "mask": s.mask})
            for q in range(len(res["scores"])):
                kp_preds.append({"image_id": s.image_id, "score": float(res["scores"][q]), "keypoints": res["keypoints"][q].reshape(-1).tolist()})
                mask_preds.append({"image_id": s.image_id, "score": float(res["scores"][q]), "mask": res["masks"][q]})
            top_kp.append(res["keypoints"][0])
            top_masks.append(res["masks"][0])
        if progress is not None:
            progress.update(len(chunk))
    kp = coco_ap(gts, kp_preds, "keypoints")
    seg = coco_ap(gts, mask_preds, "segm")
    out = {"prompt": kind + (" (control)" if control else ""), "samples": len(samples),
           "pose_AP": kp["AP"], "pose_AP50": kp["AP50"], "pose_AP75": kp["AP75"],
           "mask_AP": seg["AP"], "mask_AP50": seg["AP50"], "PCKh@0.5": pckh(top_kp, [g["keypoints"] for g in gts])}
    out.update(referring_iou(top_masks, [g["mask"] for g in gts]))
    return out


def _rescale(outputs, size, chunk):
    """Post-process per sample at its original size."""
    results = []
    for i, s in enumerate(chunk):
        one = {"layers": [{k: v[i:i + 1] for k, v in outputs["layers"][-1].items()}], "masks": outputs["masks"][i:i + 1]}
        results.append(postprocess(one, size, s.mask.shape)[0])
    return results
