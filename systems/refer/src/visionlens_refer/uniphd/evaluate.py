"""Evaluate a UniPHD on RefHuman-format samples with one prompt kind, RefHuman's protocol:
COCO keypoint AP over the ranked query predictions (maxDets 20), mask AP (one category = useCats 0),
and on the top-1 query PCKh@0.5 (ear distance), oIoU and mIoU."""

from __future__ import annotations

import numpy as np
import torch

from visionlens.errors import ImageLoadError, InputError, one_line

from .data import RefSample, sample_mask, sample_size
from .inference import fit_sample, images_tensor, make_prompt, move, postprocess
from .metrics import coco_ap, pckh, referring_iou


@torch.no_grad()
def evaluate_model(model, samples: list[RefSample], kind: str = "text", batch_size: int = 32, control: bool = False,
                   progress=None) -> dict:
    """Metrics dict; ``control=True`` replaces the prompt by an empty text / a random point (the
    prompt-agnostic control: what the model scores without knowing whom to pick). A sample whose image
    cannot be read, or whose segmentation cannot be decoded, is skipped and listed in ``skipped``
    (file and reason)."""
    model.eval()
    device = next(model.parameters()).device
    size = model.config.image_size
    rng = np.random.default_rng(0)
    gts, kp_preds, mask_preds, top_kp, top_masks, skipped = [], [], [], [], [], []
    for start in range(0, len(samples), batch_size):
        chunk, fitted = _fit_chunk(samples[start:start + batch_size], size, skipped)
        if progress is not None:
            progress.update(len(samples[start:start + batch_size]) - len(chunk))
        if not chunk:
            continue
        prompt = make_prompt(fitted, kind)
        if control:
            if kind == "text":
                prompt["texts"] = [""] * len(chunk)
            else:
                random_points = torch.tensor(rng.uniform(0, size - 1, size=(len(chunk), 1, 2)), dtype=torch.float32)
                prompt["points"] = random_points.expand_as(prompt["points"]).contiguous()
        outputs = move(model(images_tensor(fitted).to(device), move(prompt, device)), "cpu")
        for s, res in zip(chunk, _rescale(outputs, size, chunk)):
            gts.append({"image_id": s.image_id, "id": s.ann_id, "keypoints": s.keypoints.reshape(-1).tolist(), "area": s.area,
                        "bbox": list(s.bbox), "iscrowd": 0, "num_keypoints": int((s.keypoints[:, 2] > 0).sum()), "mask": sample_mask(s)})
            for q in range(len(res["scores"])):
                kp_preds.append({"image_id": s.image_id, "score": float(res["scores"][q]), "keypoints": res["keypoints"][q].reshape(-1).tolist()})
                mask_preds.append({"image_id": s.image_id, "score": float(res["scores"][q]), "mask": res["masks"][q]})
            top_kp.append(res["keypoints"][0])
            top_masks.append(res["masks"][0])
        if progress is not None:
            progress.update(len(chunk))
    if not gts:
        raise InputError(f"no sample could be evaluated: every one was skipped (first: {skipped[0]['reason']})")
    kp = coco_ap(gts, kp_preds, "keypoints")
    seg = coco_ap(gts, mask_preds, "segm")
    out = {"prompt": kind + (" (control)" if control else ""), "samples": len(samples),
           "pose_AP": kp["AP"], "pose_AP50": kp["AP50"], "pose_AP75": kp["AP75"],
           "mask_AP": seg["AP"], "mask_AP50": seg["AP50"], "PCKh@0.5": pckh(top_kp, [g["keypoints"] for g in gts])}
    out.update(referring_iou(top_masks, [g["mask"] for g in gts]))
    out.update(samples=len(gts), skipped=skipped)
    return out


def _fit_chunk(chunk: list[RefSample], size: int, skipped: list) -> tuple[list, list]:
    """The chunk's samples whose image loads and whose mask decodes, and those samples fitted to
    ``size``; the others are appended to ``skipped`` as ``{"file", "reason"}`` (``file``: the image,
    with the annotation id when only the annotation is bad)."""
    kept, fitted = [], []
    for s in chunk:
        try:
            fitted.append(fit_sample(s, size))
        except ImageLoadError as err:
            skipped.append({"file": s.image_path or s.file_name, "reason": one_line(err)})
            continue
        except InputError as err:  # a lazy segmentation that does not decode (e.g. a corrupt RLE counts string)
            where = s.image_path or s.file_name
            skipped.append({"file": f"{where} (annotation id {s.ann_id})", "reason": f"{where}: {one_line(err)}"})
            continue
        kept.append(s)
    return kept, fitted


def _rescale(outputs, size, chunk):
    """Post-process per sample at its original size."""
    results = []
    for i, s in enumerate(chunk):
        one = {"layers": [{k: v[i:i + 1] for k, v in outputs["layers"][-1].items()}], "masks": outputs["masks"][i:i + 1]}
        results.append(postprocess(one, size, sample_size(s))[0])
    return results
