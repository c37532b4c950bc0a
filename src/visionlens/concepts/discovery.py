"""Concept discovery for one class at one layer (ICE pipeline with a pluggable reducer; TraNCE
when the reducer is the VAE). Spec section 6.2.

For class ``y``: collect the layer activations ``A`` of its images (streamed, subsampled above a
memory bound), fit the reducer on the channel vectors, then one more pass gives per image the
concept heatmaps ``S`` (``(c', h, w)``), the reconstruction ``A' = decode(codes(A))`` and the
outputs ``C(A)``, ``C(A')`` for the metrics; the class-concept weights
``zeta_k = mean_x sum_ij dC_y(dec(z))/dz_k(i, j)`` (autograd, or a central finite difference that
moves concept ``k`` by ``eps`` at every position, as ICE does along each CAV) on the first
``estimate_num`` images; the FeatureRank (concepts by descending weight) and the prototypes (the
images with the highest mean concept score).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..core.hooks import outside_inference_mode
from ..core.layers import resolve_layer
from ..core.progress import Progress
from ..errors import InputError
from ..metrics.concepts import DEFAULT_COHERENCE, concept_scores
from .collect import CALC_LIMIT, collect_rows, from_rows, head_output, layer_activations, to_rows
from .reducers import Reducer

WEIGHT_MODES = ("autograd", "finite-difference")


@dataclass
class ClassConcepts:
    """Everything discovered for one class; ``items`` index the source, and tensors follow them."""

    cls: int
    class_name: str
    layer: str
    reducer: Reducer
    items: list
    views: list                    # PIL images the model saw
    heatmaps: torch.Tensor         # (N, c', h, w) concept scores S
    similarity: torch.Tensor       # (N, c') mean concept score per image
    weights: torch.Tensor          # (c',) zeta_{k, y}
    ranking: list[int]             # concepts by descending weight (FeatureRank)
    prototypes: list[list[int]]    # per concept: indices into items, best first
    outputs: torch.Tensor          # (N, K) C(A)
    reconstructed_outputs: torch.Tensor  # (N, K) C(A')
    scores: dict                   # fidelity, coherence, faith (percent)
    concept_vectors: torch.Tensor  # (c', c) CAVs
    rows_seen: int = 0
    rows_used: int = 0
    part_masks: torch.Tensor | None = None
    part_ids: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


def concept_weights(model, module, x: torch.Tensor, codes: torch.Tensor, reducer: Reducer, cls: int,
                    mode: str = "autograd", eps: float = 1e-4) -> torch.Tensor:
    """``(B, c')`` per-image weights of each concept for output ``cls``: the derivative of
    ``C_y(dec(z))`` along concept ``k`` moved at every position at once. ``codes``: ``(B, c', h, w)``."""
    if mode not in WEIGHT_MODES:
        raise InputError(f"unknown weight mode '{mode}'; choose from: {', '.join(WEIGHT_MODES)}")
    shape = codes.shape

    def output(z):
        a = from_rows(reducer.decode(to_rows(z)), shape)
        return head_output(model, module, x, a, grad=z.requires_grad)[:, cls]

    if mode == "autograd":
        with torch.enable_grad():  # also inside the caller's torch.no_grad()
            z = codes.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(output(z).sum(), z)
        return grad.sum(dim=(2, 3))
    result = codes.new_zeros(shape[0], shape[1])
    with torch.no_grad():
        for k in range(shape[1]):
            step = torch.zeros_like(codes)
            step[:, k] = eps
            result[:, k] = (output(codes + step) - output(codes - step)) / (2 * eps)
    return result


def discover_class(model, layer, source, cls: int, reducer: Reducer, n_images: int = 32, batch_size: int = 32,
                   weight_mode: str = "autograd", eps: float = 1e-4, estimate_num: int = 10, n_prototypes: int = 5,
                   coherence: str = DEFAULT_COHERENCE, max_numel: int = CALC_LIMIT, fit: bool = True,
                   seed: int = 0, progress: bool = True) -> ClassConcepts:
    """Fit ``reducer`` on the class's activations (unless ``fit=False``) and explain the class
    (also inside the caller's ``torch.no_grad()`` or ``torch.inference_mode()``)."""
    with outside_inference_mode():
        return _discover_class(model, layer, source, cls, reducer, n_images, batch_size, weight_mode, eps,
                               estimate_num, n_prototypes, coherence, max_numel, fit, seed, progress)


def _discover_class(model, layer, source, cls, reducer, n_images, batch_size, weight_mode, eps, estimate_num,
                    n_prototypes, coherence, max_numel, fit, seed, progress) -> ClassConcepts:
    net = getattr(model, "module", model)
    name, module = resolve_layer(net, layer)
    items = source.items(cls, n_images)
    if not items:
        raise InputError(f"no images of class {cls} in the data; choose classes the data holds")
    class_name = source.class_names[cls] if source.class_names and 0 <= cls < len(source.class_names) else f"class {cls}"
    rows_seen = rows_used = 0
    if fit:
        rows, rows_seen = collect_rows(net, name, module, source, items, batch_size, max_numel, seed, progress,
                                       f"activations {class_name}")
        rows_used = len(rows)
        reducer.fit(rows, progress=progress)
    device = next(iter(net.parameters()), torch.empty(0)).device
    heat, outs, recs, sims, weights, views, masks, ids = [], [], [], [], [], [], [], []
    bar = Progress(len(items), f"concepts {class_name}", enabled=progress)
    for start in range(0, len(items), batch_size):
        batch = source.load(items[start:start + batch_size])
        x = batch["x"].to(device)
        act = layer_activations(net, name, module, x)
        rows = to_rows(act)
        with torch.no_grad():
            codes = reducer.codes(rows)
            scores = from_rows(reducer.transform(rows), act.shape)
            recon = from_rows(reducer.decode(codes), act.shape)
        outs.append(head_output(net, module, x, act).detach().cpu())
        recs.append(head_output(net, module, x, recon).detach().cpu())
        need = estimate_num - sum(len(w) for w in weights)
        if need > 0:
            z = from_rows(codes, act.shape)[:need]
            weights.append(concept_weights(net, module, x[:need], z, reducer, cls, weight_mode, eps).detach().cpu())
        heat.append(scores.detach().cpu())
        sims.append(scores.mean(dim=(2, 3)).detach().cpu())
        views += batch["views"]
        if batch["part_masks"] is not None:
            masks.append(batch["part_masks"])
            ids.append(batch["part_ids"])
        bar.update(len(batch["views"]))
    heatmaps, similarity = torch.cat(heat), torch.cat(sims)
    outputs, rec_outputs = torch.cat(outs), torch.cat(recs)
    zeta = torch.cat(weights).mean(0)
    ranking = torch.argsort(zeta, descending=True).tolist()
    prototypes = torch.argsort(similarity, dim=0, descending=True)[:n_prototypes].T.tolist()
    return ClassConcepts(
        cls=cls, class_name=class_name, layer=name, reducer=reducer, items=items, views=views, heatmaps=heatmaps,
        similarity=similarity, weights=zeta, ranking=ranking, prototypes=prototypes, outputs=outputs,
        reconstructed_outputs=rec_outputs, scores=concept_scores(outputs, rec_outputs, cls, coherence),
        concept_vectors=reducer.concept_vectors().detach().cpu(), rows_seen=rows_seen, rows_used=rows_used,
        part_masks=torch.cat(masks) if masks else None, part_ids=torch.cat(ids) if ids else None,
    )


def explain_image(model, concepts: ClassConcepts, x: torch.Tensor) -> dict:
    """Local explanation of one preprocessed image ``x`` ``(1, 3, H, W)`` with a class's concepts:
    per concept the similarity (mean score), the weight ``zeta_{k,y}`` and the contribution
    (their product), with the prediction and the total contribution."""
    net = getattr(model, "module", model)
    if x.dim() != 4 or x.shape[0] != 1:
        raise InputError(f"explain_image needs one image of shape (1, 3, H, W), got {tuple(x.shape)}")
    name, module = resolve_layer(net, concepts.layer)
    act = layer_activations(net, name, module, x)
    with torch.no_grad():
        sim = concepts.reducer.transform(to_rows(act)).mean(0).cpu()
        logits = head_output(net, module, x, act)[0]
    contribution = sim * concepts.weights
    return {"predicted": int(logits.argmax()), "class": concepts.cls, "similarity": sim.tolist(),
            "weight": concepts.weights.tolist(), "contribution": contribution.tolist(),
            "total_contribution": float(contribution.sum()), "ranking": concepts.ranking}


def normalised_masks(heatmaps: torch.Tensor, size: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """ICE's binary concept masks: ``h * 1[h > 0]`` divided by its per-image max, upsampled
    (bilinear) to ``size`` and thresholded at ``threshold``. ``(N, c', h, w)`` -> bool ``(N, c', H, W)``."""
    h = heatmaps.clamp_min(0)
    h = h / h.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
    up = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
    return up > threshold


def part_iou(heatmaps: torch.Tensor, part_masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Mean IoU ``(c', P)`` of each concept's thresholded heatmap with each part slot, over the
    images where that part is visible."""
    masks = normalised_masks(heatmaps, tuple(part_masks.shape[-2:]), threshold)  # (N, c', H, W)
    m = masks[:, :, None].flatten(3).float()
    p = part_masks[:, None].flatten(3).float()
    inter = (m * p).sum(-1)
    union = ((m + p) > 0).float().sum(-1)
    iou = inter / union.clamp_min(1)
    visible = (p.sum(-1) > 0).float()  # (N, 1, P)
    return (iou * visible).sum(0) / visible.sum(0).clamp_min(1)


def shuffled_heatmaps(heatmaps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The random baseline: each map's cells permuted (same size and values, random layout)."""
    gen = torch.Generator().manual_seed(seed)
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n * k, h * w)
    perm = torch.argsort(torch.rand(n * k, h * w, generator=gen), dim=1)
    return flat.gather(1, perm).reshape(n, k, h, w)


def best_part_iou(concepts: ClassConcepts, threshold: float = 0.5, random_repeats: int = 5) -> dict:
    """Per concept: the best-matching ground-truth part (world data only), its IoU and the IoU
    of the same maps with a random layout (mean of ``random_repeats`` shuffles)."""
    if concepts.part_masks is None:
        return {}
    iou = part_iou(concepts.heatmaps, concepts.part_masks, threshold)
    rand = torch.stack([part_iou(shuffled_heatmaps(concepts.heatmaps, s), concepts.part_masks, threshold)
                        for s in range(random_repeats)]).mean(0)
    best, slot = iou.max(dim=1)
    slot_ids = concepts.part_ids[0].tolist()
    return {"iou": best.tolist(), "random_iou": rand.gather(1, slot[:, None])[:, 0].tolist(),
            "part": [slot_ids[s] for s in slot.tolist()]}
