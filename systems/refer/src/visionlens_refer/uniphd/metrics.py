"""COCO-exact keypoint (OKS) and mask AP, plus RefHuman's top-1 metrics (PCKh@0.5, oIoU, mIoU).

``coco_ap`` re-implements pycocotools' ``COCOeval`` (evaluate + accumulate + summarize) for one
category in numpy, so results agree exactly with pycocotools without depending on it:

* ground truth: dicts with ``image_id``, ``id`` (>= 1), ``area``, ``bbox``, ``iscrowd`` and either
  ``keypoints`` (51 numbers) + ``num_keypoints`` or ``mask`` (bool array);
* predictions: dicts with ``image_id``, ``score`` and ``keypoints`` or ``mask``. As in ``loadRes``, a
  keypoint prediction's area is the area of its keypoints' extent box; a mask prediction's area is
  its pixel count.

RefHuman evaluates up to 20 ranked predictions per referring sample (keypoints ``maxDets=[20]``)
and mask AP with ``useCats=0`` (one category here, so the same thing).
"""

from __future__ import annotations

import numpy as np

from visionlens.errors import InputError

COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
KEYPOINT_AREAS = ([0 ** 2, 1e5 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2])
MASK_AREAS = ([0 ** 2, 1e5 ** 2], [0 ** 2, 32 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2])


def oks(pred_keypoints: np.ndarray, gt: dict, sigmas: np.ndarray = COCO_SIGMAS) -> np.ndarray:
    """OKS of each prediction (N, 17, 2+) against one GT, exactly as ``COCOeval.computeOks``.

    e_i = d_i^2 / (2 (2 sigma_i)^2 (area + eps)), averaged as exp(-e_i) over labelled joints; a GT
    with no labelled joint uses the distance to its box enlarged 3x.
    """
    d = np.asarray(pred_keypoints, dtype=np.float64).reshape(len(pred_keypoints), -1, 3 if np.shape(pred_keypoints)[-1] == 3 else 2)
    g = np.asarray(gt["keypoints"], dtype=np.float64).reshape(-1, 3)
    xg, yg, vg = g[:, 0], g[:, 1], g[:, 2]
    variances = (sigmas * 2) ** 2
    k1 = np.count_nonzero(vg > 0)
    bx, by, bw, bh = gt["bbox"]
    x0, x1, y0, y1 = bx - bw, bx + bw * 2, by - bh, by + bh * 2
    out = np.zeros(len(d))
    for i, dt in enumerate(d):
        xd, yd = dt[:, 0], dt[:, 1]
        if k1 > 0:
            dx, dy = xd - xg, yd - yg
        else:
            z = np.zeros(len(sigmas))
            dx = np.max((z, x0 - xd), axis=0) + np.max((z, xd - x1), axis=0)
            dy = np.max((z, y0 - yd), axis=0) + np.max((z, yd - y1), axis=0)
        e = (dx ** 2 + dy ** 2) / variances / (gt["area"] + np.spacing(1)) / 2
        if k1 > 0:
            e = e[vg > 0]
        out[i] = np.sum(np.exp(-e)) / e.shape[0]
    return out


def mask_iou(pred: np.ndarray, gt: np.ndarray, crowd: bool = False) -> float:
    """Pixel IoU as pycocotools' RLE IoU (crowd GT: intersection over prediction area; empty -> 0)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    inter = np.count_nonzero(pred & gt)
    union = np.count_nonzero(pred) if crowd else np.count_nonzero(pred | gt)
    return float(inter) / float(union) if inter > 0 and union > 0 else 0.0


def _prediction_area(p: dict, kind: str) -> float:
    if kind == "segm":
        return float(np.count_nonzero(p["mask"]))
    k = np.asarray(p["keypoints"], dtype=np.float64).reshape(-1)
    x, y = k[0::3], k[1::3]
    return float((np.max(x) - np.min(x)) * (np.max(y) - np.min(y)))


def _evaluate_image(gts, dts, ious, area_range, max_det):
    """``COCOeval.evaluateImg`` for one image, one area range."""
    if not gts and not dts:
        return None
    ignore = [1 if (g["_ignore_base"] or g["area"] < area_range[0] or g["area"] > area_range[1]) else 0 for g in gts]
    gtind = np.argsort(ignore, kind="mergesort")
    gts = [gts[i] for i in gtind]
    g_ignore = np.array([ignore[i] for i in gtind])
    dts = dts[:max_det]  # already score-sorted (stable)
    crowd = [int(g.get("iscrowd", 0)) for g in gts]
    ious = ious[:, gtind] if len(ious) > 0 else ious
    T, G, D = len(IOU_THRESHOLDS), len(gts), len(dts)
    gtm, dtm, dt_ignore = np.zeros((T, G)), np.zeros((T, D)), np.zeros((T, D))
    if len(ious) != 0:
        for tind, t in enumerate(IOU_THRESHOLDS):
            for dind in range(D):
                iou, m = min([t, 1 - 1e-10]), -1
                for gind in range(G):
                    if gtm[tind, gind] > 0 and not crowd[gind]:
                        continue
                    if m > -1 and g_ignore[m] == 0 and g_ignore[gind] == 1:
                        break
                    if ious[dind, gind] < iou:
                        continue
                    iou, m = ious[dind, gind], gind
                if m == -1:
                    continue
                dt_ignore[tind, dind] = g_ignore[m]
                dtm[tind, dind] = gts[m]["id"]
                gtm[tind, m] = dts[dind]["_id"]
    out_of_range = np.array([d["_area"] < area_range[0] or d["_area"] > area_range[1] for d in dts]).reshape((1, D))
    dt_ignore = np.logical_or(dt_ignore, np.logical_and(dtm == 0, np.repeat(out_of_range, T, 0)))
    return {"dtMatches": dtm, "dtScores": np.array([d["score"] for d in dts]), "gtIgnore": g_ignore, "dtIgnore": dt_ignore}


def _accumulate(evals, max_det):
    T, R = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision, recall = -np.ones((T, R)), -np.ones(T)
    E = [e for e in evals if e is not None]
    if not E:
        return precision, recall
    scores = np.concatenate([e["dtScores"][0:max_det] for e in E])
    inds = np.argsort(-scores, kind="mergesort")
    dtm = np.concatenate([e["dtMatches"][:, 0:max_det] for e in E], axis=1)[:, inds]
    dt_ig = np.concatenate([e["dtIgnore"][:, 0:max_det] for e in E], axis=1)[:, inds]
    gt_ig = np.concatenate([e["gtIgnore"] for e in E])
    npig = np.count_nonzero(gt_ig == 0)
    if npig == 0:
        return precision, recall
    tps = np.logical_and(dtm, np.logical_not(dt_ig))
    fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))
    tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
    fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
        nd = len(tp)
        rc = tp / npig
        pr = (tp / (fp + tp + np.spacing(1))).tolist()
        q = np.zeros((R,)).tolist()
        recall[t] = rc[-1] if nd else 0
        for i in range(nd - 1, 0, -1):
            if pr[i] > pr[i - 1]:
                pr[i - 1] = pr[i]
        for ri, pi in enumerate(np.searchsorted(rc, RECALL_THRESHOLDS, side="left")):
            if pi >= len(pr):
                break
            q[ri] = pr[pi]
        precision[t] = np.array(q)
    return precision, recall


def _mean_valid(s):
    s = s[s > -1]
    return -1.0 if len(s) == 0 else float(np.mean(s))


def coco_ap(gts: list[dict], preds: list[dict], kind: str = "keypoints", max_dets: tuple = None) -> dict:
    """COCOeval stats for ``kind`` in {"keypoints", "segm"}; returns ``{"stats": array, "AP": ...}``.

    keypoints: 10 stats (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl), maxDets (20,);
    segm: 12 stats (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl), maxDets (1, 10, 100).
    """
    if kind not in ("keypoints", "segm"):
        raise InputError(f"unknown evaluation kind {kind!r}; use keypoints or segm")
    max_dets = tuple(max_dets or ((20,) if kind == "keypoints" else (1, 10, 100)))
    areas = KEYPOINT_AREAS if kind == "keypoints" else MASK_AREAS
    by_image: dict = {}
    for g in gts:
        g = dict(g)
        g["_ignore_base"] = bool(g.get("iscrowd", 0))  # COCOeval._prepare overwrites "ignore" with iscrowd
        if kind == "keypoints":
            g["_ignore_base"] = g.get("num_keypoints", 0) == 0 or g["_ignore_base"]
        by_image.setdefault(g["image_id"], ([], []))[0].append(g)
    for i, p in enumerate(preds):
        p = dict(p, _id=i + 1, _area=_prediction_area(p, kind))
        by_image.setdefault(p["image_id"], ([], []))[1].append(p)
    image_ids = sorted(by_image)
    per_image = {}
    for img in image_ids:
        g, d = by_image[img]
        order = np.argsort([-x["score"] for x in d], kind="mergesort")
        d = [d[i] for i in order][: max_dets[-1]]
        if not g or not d:
            ious = []
        elif kind == "keypoints":
            ious = np.stack([oks(np.array([x["keypoints"] for x in d]).reshape(len(d), -1, 3), gg) for gg in g], 1)
        else:
            ious = np.array([[mask_iou(x["mask"], gg["mask"], bool(gg.get("iscrowd", 0))) for gg in g] for x in d])
        per_image[img] = (g, d, ious)
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(areas), len(max_dets)))
    recall = -np.ones((len(IOU_THRESHOLDS), len(areas), len(max_dets)))
    for a, rng in enumerate(areas):
        evals = [_evaluate_image(*per_image[img][:2], per_image[img][2], rng, max_dets[-1]) for img in image_ids]
        for m, md in enumerate(max_dets):
            precision[:, :, a, m], recall[:, a, m] = _accumulate(evals, md)

    def summ(ap, thr=None, area=0, md=max_dets[-1]):
        mi = max_dets.index(md)
        s = precision[:, :, area, mi] if ap else recall[:, area, mi]
        if thr is not None:
            s = s[np.where(thr == IOU_THRESHOLDS)[0]]
        return _mean_valid(s)

    if kind == "keypoints":
        stats = [summ(1), summ(1, .5), summ(1, .75), summ(1, area=1), summ(1, area=2),
                 summ(0), summ(0, .5), summ(0, .75), summ(0, area=1), summ(0, area=2)]
    else:
        stats = [summ(1), summ(1, .5), summ(1, .75), summ(1, area=1), summ(1, area=2), summ(1, area=3),
                 summ(0, md=max_dets[0]), summ(0, md=max_dets[min(1, len(max_dets) - 1)]), summ(0),
                 summ(0, area=1), summ(0, area=2), summ(0, area=3)]
    return {"stats": np.array(stats), "AP": stats[0], "AP50": stats[1], "AP75": stats[2]}


def pckh(pred_keypoints: np.ndarray, gt_keypoints: np.ndarray, threshold: float = 0.5) -> float:
    """RefHuman PCKh@t on top-1 predictions: head size = distance between COCO keypoints 3 and 4 (the
    ears); samples missing an ear are skipped; only labelled joints count."""
    hits, total = 0, 0
    for p, g in zip(pred_keypoints, gt_keypoints):
        g = np.asarray(g).reshape(17, 3)
        if g[3, 2] == 0 or g[4, 2] == 0:
            continue
        head = np.linalg.norm(g[3, :2] - g[4, :2])
        labelled = g[:, 2] > 0
        d = np.linalg.norm(np.asarray(p).reshape(17, -1)[:, :2] - g[:, :2], axis=1)
        hits += int(np.count_nonzero(d[labelled] <= threshold * head))
        total += int(np.count_nonzero(labelled))
    return hits / total if total else 0.0


def referring_iou(pred_masks, gt_masks, eps: float = 1e-6) -> dict:
    """oIoU (cumulative I / cumulative U), mIoU (mean of per-sample (I+eps)/(U+eps), so an empty
    union scores 1 as in RefHuman) and precision at IoU 0.5..0.9 on top-1 masks."""
    inter = np.array([np.count_nonzero(np.asarray(p, bool) & np.asarray(g, bool)) for p, g in zip(pred_masks, gt_masks)], float)
    union = np.array([np.count_nonzero(np.asarray(p, bool) | np.asarray(g, bool)) for p, g in zip(pred_masks, gt_masks)], float)
    per = (inter + eps) / (union + eps)
    out = {"oIoU": float(inter.sum() / max(union.sum(), eps)), "mIoU": float(per.mean()) if len(per) else 0.0}
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        out[f"Pr@{t}"] = float((per > t).mean()) if len(per) else 0.0
    return out
