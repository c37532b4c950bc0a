"""Faithfulness metrics (spec 7.1, 7.2, 7.6): deletion / insertion AUC (Petsiuk et al., RISE,
arXiv:1806.07421) and Average Drop / Increase in Confidence (Chattopadhyay et al., WACV 2018).

Everything is batched torch on the model's device. The model's output becomes a per-image
"confidence" through a :class:`Confidence` (softmax probability for classifiers; the spec 7.6
variants for embedding models: prototype softmax, k-NN vote mass, clamped similarity to a
reference embedding computed once on the clean images).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.hooks import preserved_model_state
from ..core.layers import torch_module
from ..errors import InputError


# --- confidences (spec 7.6) -----------------------------------------------------------------

class Confidence:
    """Softmax probability of the target class (classifiers). ``predict`` picks the class scored
    when no target is given: the argmax on the original image."""

    def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return out.float().softmax(1).gather(1, target[:, None])[:, 0]

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return out.argmax(1)

    def classes(self, out: torch.Tensor) -> int:
        """How many classes a target can name, given one batch of model outputs."""
        return out.shape[1]

    def check(self, out: torch.Tensor, target: torch.Tensor) -> None:
        """One line for a target the output has no class for (once per call of a metric: reading
        the targets waits for the device)."""
        count = self.classes(out)
        low, high = (int(v) for v in target.aminmax()) if len(target) else (0, 0)
        if not 0 <= low <= high < count:
            raise InputError(f"target class {high if high >= count else low} is out of range for a model with "
                             f"{count} classes")


class PrototypeConfidence(Confidence):
    """Few-shot: ``softmax_c(-d(e, p_c))`` over N prototypes (Euclidean, squared distance as
    ProtoNets) or ``softmax_c(tau * cos(e, p_c))`` (cosine)."""

    def __init__(self, prototypes: torch.Tensor, metric: str = "euclidean", temperature: float = 10.0):
        if metric not in ("euclidean", "cosine"):
            raise InputError(f"unknown metric '{metric}'; choose euclidean or cosine")
        self.prototypes, self.metric, self.temperature = prototypes, metric, temperature

    def logits(self, e: torch.Tensor) -> torch.Tensor:
        p = self.prototypes.to(e)
        if self.metric == "euclidean":
            return -torch.cdist(e.float(), p.float()) ** 2
        return self.temperature * F.normalize(e.float(), dim=1) @ F.normalize(p.float(), dim=1).T

    def __call__(self, out, target):
        return super().__call__(self.logits(out), target)

    def predict(self, out):
        return self.logits(out).argmax(1)

    def classes(self, out):
        return len(self.prototypes)


class KNNConfidence(Confidence):
    """DINO-style k-NN: the normalised vote mass of class ``c`` among the top-``k`` bank entries
    (cosine similarity, weights ``exp(sim / T)``)."""

    def __init__(self, bank: torch.Tensor, labels: torch.Tensor, k: int = 20, temperature: float = 0.07):
        self.bank, self.labels, self.k, self.temperature = F.normalize(bank.float(), dim=1), labels.long(), k, temperature

    def votes(self, out: torch.Tensor) -> torch.Tensor:
        sim = F.normalize(out.float(), dim=1) @ self.bank.to(out.device).T
        top, idx = sim.topk(min(self.k, sim.shape[1]), dim=1)
        w = (top / self.temperature).exp()
        votes = torch.zeros(out.shape[0], int(self.labels.max()) + 1, device=out.device)
        votes.scatter_add_(1, self.labels.to(out.device)[idx], w)
        return votes / votes.sum(1, keepdim=True)

    def __call__(self, out, target):
        return self.votes(out).gather(1, target[:, None])[:, 0]

    def predict(self, out):
        return self.votes(out).argmax(1)

    def classes(self, out):
        return int(self.labels.max()) + 1


class SimilarityConfidence(Confidence):
    """Retrieval: ``max(cos(e, r_t), 0)`` with the reference embeddings ``r`` (computed once, on
    the clean images); the "class" ``t`` of an image is the row of its reference, so perturbed
    copies of image ``i`` (any batching) are scored against ``r_i``. ``predict`` gives
    ``0 .. B-1``: one reference per image, in order."""

    def __init__(self, references: torch.Tensor):
        self.references = F.normalize(references.float(), dim=1)

    def __call__(self, out, target):
        ref = self.references.to(out.device)
        ref = ref[: out.shape[0]] if target is None else ref[torch.as_tensor(target, device=out.device).long()]
        return (F.normalize(out.float(), dim=1) * ref).sum(1).clamp_min(0)

    def predict(self, out):
        return torch.arange(out.shape[0], device=out.device)

    def classes(self, out):
        return len(self.references)


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def in_eval_mode(metric):
    """Run ``metric(model, ...)`` with the model in eval mode, every module's mode restored after
    (in train mode it would score with batch statistics and overwrite BatchNorm's running ones)."""
    @functools.wraps(metric)
    def run(model, *args, **kwargs):
        module = torch_module(model)
        with preserved_model_state(module):
            return metric(module, *args, **kwargs)
    return run


def _inputs(x, maps) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``maps`` as tensors (NumPy arrays too, such as another library's maps); one line
    when the maps are not ``(B, H, W)`` at the input's resolution."""
    x, maps = torch.as_tensor(x), torch.as_tensor(maps)
    if x.ndim != 4 or maps.ndim != 3 or maps.shape[0] != x.shape[0] or maps.shape[-2:] != x.shape[-2:]:
        raise InputError(f"maps must be (B, H, W) at input resolution; got maps {tuple(maps.shape)} for input {tuple(x.shape)}")
    return x, maps


def _targets(target, b: int, device) -> torch.Tensor:
    """``(b,)`` class indices from one class or one per image (int, sequence, tensor or array)."""
    t = torch.as_tensor(target, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"target must be class indices (integers), got {t.dtype}")
    if t.ndim == 0:
        return t.long().expand(b)
    if t.shape != (b,):
        raise InputError(f"target must be one class or one class per image ({b}), got shape {tuple(t.shape)}")
    return t.long()


@torch.no_grad()
def _scores(model, inputs, confidence, target, batch_size) -> torch.Tensor:
    out = []
    for i in range(0, len(inputs), batch_size):
        logits = model(inputs[i:i + batch_size])
        if i == 0:
            confidence.check(logits, target)
        out.append(confidence(logits, target[i:i + batch_size]))
    return torch.cat(out)


# --- deletion / insertion -------------------------------------------------------------------

def trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """RISE's AUC of ``(..., n + 1)`` curves on [0, 1]: ``(sum_i s_i - s_0/2 - s_n/2) / n``."""
    n = curves.shape[-1] - 1
    if n < 1:
        raise InputError("a curve needs at least two points")
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / n


INSERTION_START = "RISE gkern(11, 5)"  # recorded in an evaluate folder: whose insertion values may be resumed


def gaussian_blur(x: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's insertion start: each channel convolved with RISE's ``gkern(size, sigma)`` (see
    :func:`rise_kernel`), zero padding ``size // 2``."""
    k = torch.from_numpy(rise_kernel(size, sigma)).to(x.device, x.dtype)
    c = x.shape[1]
    return F.conv2d(x, k.expand(c, 1, size, size), padding=size // 2, groups=c)


def rise_kernel(size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """RISE's blur kernel ``(size, size)``: a centred delta smoothed by ``scipy.ndimage.gaussian_filter``
    (truncated at 4 sigma, ``reflect`` boundary), which folds the Gaussian's tails back into the
    window. A sampled Gaussian of the same size and sigma is peakier (centre 0.0120 instead of 0.0088
    at 11 and 5): insertion AUCs per photo moved by up to 0.07 (docs/evaluating.md)."""
    radius = int(4.0 * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * t**2 / sigma**2)
    weights /= weights.sum()
    delta = np.zeros(size)
    delta[size // 2] = 1.0
    line = np.correlate(np.pad(delta, radius, mode="symmetric"), weights, mode="valid")  # scipy's "reflect"
    return np.outer(line, line).astype(np.float32)


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` -> ``(B, HW)`` rank of each pixel in the order of removal: descending
    saliency, ties broken by the larger flat index first (RISE's flipped stable argsort)."""
    flat = maps.flatten(1).float()
    order = torch.argsort(flat, dim=1, stable=True).flip(1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def _curve_images(x: torch.Tensor, mode: str, substrate: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first and last images of a ``mode`` curve: deletion goes from ``x`` to the substrate
    (default zeros), insertion from the substrate (default :func:`gaussian_blur`) to ``x``."""
    if mode == "deletion":
        return x, (torch.zeros_like(x) if substrate is None else substrate.to(x).expand_as(x))
    if mode == "insertion":
        return (gaussian_blur(x) if substrate is None else substrate.to(x).expand_as(x)), x
    raise InputError(f"unknown mode '{mode}'; choose deletion or insertion")


@torch.no_grad()
def curve_points(model: nn.Module, sources: torch.Tensor, rows: "CurveRows", points: torch.Tensor, step: int,
                 confidence: Confidence, batch_size: int, on_chunk=None) -> torch.Tensor:
    """Scores ``(R, P)`` of the images of ``R`` curves at ``points`` (step counts): row ``r``'s image at
    point ``k`` takes the pixels of rank below ``k * step`` from ``sources[rows.finish[r]]`` and the
    others from ``sources[rows.start[r]]``. The (point, row) images are built and scored
    ``batch_size`` at a time across rows and points, so curves of several images, modes and maps
    share full forward passes. ``on_chunk(images)`` is called after each pass."""
    r, p = len(rows.target), len(points)
    scores = torch.empty(p * r, device=sources.device)
    for a in range(0, p * r, batch_size):
        jobs = torch.arange(a, min(p * r, a + batch_size), device=sources.device)
        k, row = points[jobs // r], jobs % r
        done = rows.ranks[rows.rank[row]] < (k * step)[:, None, None, None]  # (J, 1, H, W): already changed
        imgs = torch.where(done, sources[rows.finish[row]], sources[rows.start[row]])
        out = model(imgs)
        if a == 0:
            confidence.check(out, rows.target)
        scores[a:a + len(jobs)] = confidence(out, rows.target[row]).float()
        if on_chunk is not None:
            on_chunk(len(jobs))
    return scores.view(p, r).T


class CurveRows:
    """What defines each of ``R`` curves: indices into the source images of its ``start`` and
    ``finish`` images and into ``ranks`` (``(M, 1, H, W)``, :func:`pixel_ranks`) of its pixel
    order, and its ``target``."""

    def __init__(self, start: torch.Tensor, finish: torch.Tensor, ranks: torch.Tensor, rank: torch.Tensor,
                 target: torch.Tensor):
        self.start, self.finish, self.ranks, self.rank, self.target = start, finish, ranks, rank, target


def curve_length(h: int, w: int, step: int | None) -> tuple[int, int]:
    """``(step, n)``: pixels per step (default the image width) and the number of steps of a curve."""
    step = w if step is None else int(step)
    if step < 1:
        raise InputError(f"step must be at least 1 pixel, got {step}")
    return step, math.ceil(h * w / step)


@in_eval_mode
@torch.no_grad()
def causal_curves(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, mode: str = "deletion", target=None,
                  step: int | None = None, substrate: torch.Tensor | None = None, confidence: Confidence | None = None,
                  batch_size: int = 64, ends: tuple[torch.Tensor, torch.Tensor] | None = None,
                  on_chunk=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion or insertion curves, RISE protocol. ``x``: ``(B, C, H, W)`` normalised input;
    ``maps``: ``(B, H, W)``. Deletion replaces pixels (most salient first, ``step`` per iteration,
    default the image width) by ``substrate`` (default zeros: the dataset-mean colour in
    normalised space); insertion starts from :func:`gaussian_blur` and puts original pixels back.
    ``ends``: the scores of the first and last images of the curve (they do not depend on the
    map, so methods compared on the same images can share them; :func:`curve_ends`).
    ``batch_size`` images per forward pass, across images and steps; ``on_chunk(images)`` after each.
    Returns ``(curves (B, n + 1), target (B,))``; the class is the argmax on ``x`` by default."""
    x, maps = _inputs(x, maps)
    confidence = confidence or Confidence()
    device = _device(model)
    x, maps = x.to(device), maps.to(device)
    b, _, h, w = x.shape
    step, n = curve_length(h, w, step)
    target = confidence.predict(model(x)) if target is None else _targets(target, b, device)
    start, finish = _curve_images(x, mode, substrate)
    own = torch.arange(b, device=device)
    rows = CurveRows(own, own + b, pixel_ranks(maps).view(b, 1, h, w), own, target)
    points = torch.arange(n + 1, device=device)
    if ends is not None:
        points = points[1:n]
    scores = curve_points(model, torch.cat([start, finish]), rows, points, step, confidence, batch_size, on_chunk)
    if ends is None:
        return scores, target
    return torch.cat([ends[0].to(device)[:, None], scores, ends[1].to(device)[:, None]], dim=1), target


@in_eval_mode
@torch.no_grad()
def joint_causal_curves(model: nn.Module, x: torch.Tensor, maps: list[torch.Tensor], targets: list[torch.Tensor],
                        step: int | None = None, batch_size: int = 64, on_chunk=None,
                        modes: tuple[str, ...] = ("deletion", "insertion")) -> list[dict[str, torch.Tensor]]:
    """Deletion and/or insertion curves (``modes``; softmax confidence, default substrates) of
    several maps of the same images ``x`` at once, e.g. one per method: ``[{"deletion": (B, n + 1),
    ...}]`` per map, equal to :func:`causal_curves` of each. Every inner point of every curve is
    scored in forward passes of ``batch_size`` images across images, steps, modes and maps; the
    map-independent ends once per distinct target."""
    confidence = Confidence()
    device = _device(model)
    x = x.to(device)
    b, _, h, w = x.shape
    step, n = curve_length(h, w, step)
    maps = [_inputs(x, m)[1] for m in maps]
    for mode in modes:
        _curve_images(x[:0], mode, None)  # an unknown mode is one line
    own = torch.arange(b, device=device)
    x_at, zero_at, blur_at = own, own + b, own + 2 * b  # where each image's sources are in `sources`
    sources = torch.cat([x, torch.zeros_like(x), gaussian_blur(x)])
    targets = [_targets(t, b, device) for t in targets]
    ends: dict = {}
    for t in targets:
        key = tuple(t.tolist())
        if key not in ends:
            ends[key] = _scores(model, sources, confidence, t.repeat(3), batch_size).view(3, b)
    ranks = torch.cat([pixel_ranks(m.to(device)) for m in maps]).view(len(maps) * b, 1, h, w)
    ends_of = {"deletion": (x_at, zero_at), "insertion": (blur_at, x_at)}  # start and finish images
    starts, finishes, rank, target = [], [], [], []
    for i, t in enumerate(targets):
        for mode in modes:
            starts.append(ends_of[mode][0]), finishes.append(ends_of[mode][1])
            rank.append(own + i * b), target.append(t)
    rows = CurveRows(torch.cat(starts), torch.cat(finishes), ranks, torch.cat(rank), torch.cat(target))
    inner = curve_points(model, sources, rows, torch.arange(1, n, device=device), step, confidence, batch_size,
                         on_chunk)
    out = []
    for i, t in enumerate(targets):
        scored = ends[tuple(t.tolist())].view(-1)  # the scores of `sources`
        curves = {}
        for j, mode in enumerate(modes):
            first, last = scored[ends_of[mode][0]], scored[ends_of[mode][1]]
            rows_of = inner[(len(modes) * i + j) * b:(len(modes) * i + j + 1) * b]
            curves[mode] = torch.cat([first[:, None], rows_of, last[:, None]], dim=1)
        out.append(curves)
    return out


@in_eval_mode
@torch.no_grad()
def curve_ends(model: nn.Module, x: torch.Tensor, target, mode: str, substrate: torch.Tensor | None = None,
               confidence: Confidence | None = None, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the first and last images of the ``mode`` curves of ``x`` for ``target``
    (deletion: ``x`` and the substrate; insertion: the blurred start and ``x``)."""
    confidence = confidence or Confidence()
    device = _device(model)
    x = torch.as_tensor(x).to(device)
    target = _targets(target, x.shape[0], device)
    start, finish = _curve_images(x, mode, substrate)
    both = _scores(model, torch.cat([start, finish]), confidence, target.repeat(2), batch_size)
    return both[:x.shape[0]], both[x.shape[0]:]


def deletion(model, x, maps, target=None, **kw) -> torch.Tensor:
    """Deletion AUC per image (lower is better)."""
    return trapezoid_auc(causal_curves(model, x, maps, "deletion", target, **kw)[0])


def insertion(model, x, maps, target=None, **kw) -> torch.Tensor:
    """Insertion AUC per image (higher is better)."""
    return trapezoid_auc(causal_curves(model, x, maps, "insertion", target, **kw)[0])


# --- Average Drop / Increase in Confidence --------------------------------------------------

@in_eval_mode
@torch.no_grad()
def drop_increase(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, mean, std, target=None,
                  confidence: Confidence | None = None, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image drop ``max(0, Y_c - O_c) / Y_c`` and increase ``1[O_c > Y_c]`` (multiply by 100 and
    average for the paper's Average Drop % and Increase in Confidence %). ``x`` is normalised with
    ``mean``/``std``; the explanation image is ``x_raw * E`` with ``x_raw`` in [0, 1] (the paper),
    normalised again before the forward pass. Scores are softmax probabilities, not logits."""
    x, maps = _inputs(x, maps)
    confidence = confidence or Confidence()
    device = _device(model)
    x, maps = x.to(device), maps.to(device).float()
    mean = torch.as_tensor(mean, dtype=x.dtype, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=device).view(1, -1, 1, 1)
    target = confidence.predict(model(x)) if target is None else _targets(target, x.shape[0], device)
    y = _scores(model, x, confidence, target, batch_size)  # same batching as O_c, so E = 1 gives O_c = Y_c exactly
    e = maps[:, None]
    x_tilde = x * e + mean * (e - 1) / std  # = (x_raw * E - mean) / std, exact for E = 1
    o = _scores(model, x_tilde, confidence, target, batch_size)
    drop = (y - o).clamp_min(0) / y.clamp_min(1e-12)
    return drop, (o > y).float()
