"""ProULearn (Pan et al., arXiv:2501.13517): source-free *active* domain adaptation.

There is no public code and the method text was not retrievable: **every equation here is a
reconstruction** (spec §3.2, built from the abstract and the public reviews), each behind an
option so that it can be switched off or replaced:

* **Homogeneity propensity estimation (HPE)** [reconstructed]: an isolation forest of ``n_trees``
  random separation trees on target features (random channel, split uniform between the node's
  min and max, height limit ``ceil(log2 psi)``); ``h(x)`` = mean path length / ``c(psi)``. Short
  paths = isolated samples (outliers), which are never labelled. ``smooth_knn`` > 0 averages ``h``
  over each sample's k nearest neighbours (where the paper's K enters is unknown).
* **Correlation index** [reconstructed]: Pearson correlation across channels between two feature
  vectors (the cosine of per-sample-centred features).
* **Selection** [reconstructed]: drop the ``outlier_fraction`` least homogeneous samples, rank the
  rest by the entropy of ``softmax_c(r(f_i, mu_c) / T)`` (prototypes ``mu_c`` weighted by the
  soft predictions), optionally times ``h``, take the top ``budget`` (one round), optionally
  never two picks within each other's k nearest neighbours.
* **Training** [reconstructed]: labelled cross-entropy + ``beta_pl`` * confidence-weighted
  pseudo-label CE (pseudo-labels = argmax correlation to prototypes recomputed each epoch;
  weight = normalised ``h`` * max correlation-softmax) + ``beta_im`` * information maximisation
  + ``beta_cc`` * the central correlation loss ``mean_i (1 - r(f_i, mu_{y_i}))``.

Peers for the selection step at the same budget: ``random``, ``entropy`` (softmax entropy),
``kmeans`` (the sample nearest each of ``budget`` k-means centres) and ``density`` (k-NN density
peaks with neighbourhood exclusion, a stand-in for DBSCAN core points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from visionlens.checks import check_finite, check_number
from visionlens.core.memory_bank import cosine_neighbours
from visionlens.errors import InputError

from .framework import Objective, predict, take
from .peers import information_maximisation

STRATEGIES = ("random", "entropy", "kmeans", "density", "proulearn")


# --- HPE -------------------------------------------------------------------------------------------

def average_path_correction(n) -> np.ndarray:
    """``c(n)``: the mean path length of an unsuccessful BST search over ``n`` points (iForest)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _tree_path_lengths(x: np.ndarray, sub: np.ndarray, rng: np.random.Generator, limit: int) -> np.ndarray:
    """Path length of every row of ``x`` in one random tree grown on the rows ``sub``."""
    depth = np.zeros(len(x))
    stack = [(sub, np.arange(len(x)), 0)]
    while stack:
        node, points, d = stack.pop()
        if len(points) == 0:
            continue
        values = x[node]
        lo, hi = values.min(0), values.max(0)
        splittable = np.flatnonzero(hi > lo)
        if d >= limit or len(node) <= 1 or len(splittable) == 0:
            depth[points] = d + average_path_correction(len(node))
            continue
        q = int(rng.choice(splittable))
        cut = rng.uniform(lo[q], hi[q])
        left_node, left_points = values[:, q] < cut, x[points, q] < cut
        stack.append((node[left_node], points[left_points], d + 1))
        stack.append((node[~left_node], points[~left_points], d + 1))
    return depth


def homogeneity(features: torch.Tensor, n_trees: int = 100, sample_size: int = 256, seed: int = 0,
                smooth_knn: int = 0) -> torch.Tensor:
    """``h(x)`` [reconstructed HPE]: mean isolation path length / ``c(psi)``; higher = more homogeneous."""
    check_finite("the homogeneity features", features)
    x = features.detach().double().cpu().numpy()
    n = len(x)
    if n < 2:
        raise InputError("homogeneity needs at least 2 samples")
    if n_trees < 1:
        raise InputError(f"n_trees must be >= 1, got {n_trees}")
    psi = min(sample_size, n)
    limit = int(math.ceil(math.log2(max(psi, 2))))
    rng = np.random.default_rng(seed)
    total = np.zeros(n)
    for _ in range(n_trees):
        total += _tree_path_lengths(x, rng.choice(n, psi, replace=False), rng, limit)
    h = torch.tensor(total / n_trees / max(float(average_path_correction(psi)), 1e-12), dtype=torch.float32)
    if smooth_knn > 0:
        near = knn_indices(features, smooth_knn)
        h = torch.cat([h[:, None], h[near]], dim=1).mean(1)
    return h


# --- correlation, prototypes, uncertainty ----------------------------------------------------------

def correlation_index(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` Pearson correlations across channels between rows of ``a`` and rows of ``b``."""
    a = F.normalize(a - a.mean(1, keepdim=True), dim=1, eps=1e-12)
    b = F.normalize(b - b.mean(1, keepdim=True), dim=1, eps=1e-12)
    return a @ b.T


def soft_prototypes(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mu_c = sum_i w_ic f_i / sum_i w_ic`` (SHOT-style weighted centroids), ``(K, d)``."""
    return (weights.T @ features) / weights.sum(0)[:, None].clamp_min(1e-8)


def correlation_softmax(features: torch.Tensor, prototypes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    return (correlation_index(features, prototypes) / temperature).softmax(1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(1)


def knn_indices(features: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` cosine nearest neighbours of every row, itself excluded."""
    return cosine_neighbours(features, features, k, exclude_self=True).indices


# --- selection -------------------------------------------------------------------------------------

@dataclass
class SelectionOptions:
    """Options of the reconstructed ProULearn selection (every default is an assumption)."""

    n_trees: int = 100
    sample_size: int = 256
    smooth_knn: int = 0
    outlier_fraction: float = 0.1
    temperature: float = 0.1
    use_hpe: bool = True
    times_homogeneity: bool = False
    diversity_knn: int = 0
    correlation: bool = True  # False: cosine instead of the correlation index (ablation)


def budget_size(n: int, budget: float) -> int:
    """``ceil(budget * n)`` for a fraction, or ``budget`` itself when it is an integer >= 1."""
    if budget <= 0 or (budget >= 1 and budget != int(budget)):
        raise InputError(f"budget must be a fraction in (0, 1) or a whole number of samples, got {budget}")
    b = int(budget) if budget >= 1 else math.ceil(budget * n)
    if b > n:
        raise InputError(f"budget {b} exceeds the {n} target samples")
    return b


def _greedy(order: torch.Tensor, b: int, exclude: torch.Tensor | None) -> torch.Tensor:
    """First ``b`` of ``order``, skipping members of an earlier pick's neighbourhood ``exclude[i]``."""
    if exclude is None:
        return order[:b]
    blocked = torch.zeros(exclude.shape[0], dtype=torch.bool)
    picks = []
    for i in order.tolist():
        if not blocked[i]:
            picks.append(i)
            blocked[exclude[i]] = True
            if len(picks) == b:
                break
    if len(picks) < b:  # neighbourhoods exhausted the pool: fill in order
        rest = [i for i in order.tolist() if i not in set(picks)]
        picks += rest[:b - len(picks)]
    return torch.tensor(picks)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 25) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns the ``(k, d)`` centres. Degenerate input
    (non-finite values, ``k`` outside 1..n) is one :class:`InputError`; duplicate points are fine."""
    if x.ndim != 2 or len(x) == 0:
        raise InputError(f"k-means needs a non-empty (n, d) feature matrix, got shape {tuple(x.shape)}")
    x = x if x.is_floating_point() else x.float()
    check_finite("the k-means features", x)
    check_number("k", k, minimum=1, maximum=len(x), integer=True)
    gen = torch.Generator().manual_seed(seed)
    centres = [x[torch.randint(len(x), (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).min(1).values ** 2
        weights = d2 + 1e-12 if bool(torch.isfinite(d2).all()) else torch.ones_like(d2)  # overflow: uniform
        centres.append(x[torch.multinomial(weights, 1, generator=gen)].squeeze(0))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c


def select(strategy: str, features: torch.Tensor, probs: torch.Tensor, budget: float = 0.05, seed: int = 0,
           options: SelectionOptions | None = None) -> torch.Tensor:
    """Indices (unique, ``budget_size(n, budget)`` of them) of target samples to label, one round."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown selection strategy {strategy!r}; choose from: {', '.join(STRATEGIES)}")
    n = len(features)
    if probs.shape[0] != n:
        raise InputError("features and probabilities must have the same number of rows")
    check_finite("the selection features", features)
    check_finite("the selection probabilities", probs)
    b = budget_size(n, budget)
    opt = options or SelectionOptions()
    gen = torch.Generator().manual_seed(seed)
    if strategy == "random":
        return torch.randperm(n, generator=gen)[:b]
    if strategy == "entropy":
        return entropy(probs).argsort(descending=True)[:b]
    f = F.normalize(features.float(), dim=1)
    if strategy == "kmeans":
        centres = kmeans(f, b, seed)
        order = torch.cdist(centres, f).argsort(1)
        picks: list[int] = []
        for row in order.tolist():
            picks.append(next(i for i in row if i not in picks))
        return torch.tensor(picks)
    if strategy == "density":
        k = min(10, n - 1)
        near = knn_indices(f, k)
        density = (f[:, None, :] * f[near]).sum(-1).mean(1)
        return _greedy(density.argsort(descending=True), b, near)
    # proulearn [reconstructed]
    keep = torch.ones(n, dtype=torch.bool)
    h = torch.ones(n)
    if opt.use_hpe:
        h = homogeneity(features, opt.n_trees, opt.sample_size, seed, opt.smooth_knn)
        drop = int(math.floor(opt.outlier_fraction * n))
        if n - drop < b:
            raise InputError(f"budget {b} exceeds the {n - drop} samples left after dropping outliers")
        if drop:
            keep[h.argsort()[:drop]] = False
    protos = soft_prototypes(features.float(), probs.float())
    if opt.correlation:
        q = correlation_softmax(features.float(), protos, opt.temperature)
    else:
        q = (f @ F.normalize(protos, dim=1).T / opt.temperature).softmax(1)
    score = entropy(q)
    if opt.times_homogeneity:
        score = score * h
    score = torch.where(keep, score, torch.full_like(score, -math.inf))
    order = score.argsort(descending=True)
    order = order[keep[order]]
    exclude = knn_indices(f, opt.diversity_knn) if opt.diversity_knn > 0 else None
    return _greedy(order, b, exclude)


# --- training --------------------------------------------------------------------------------------

def central_correlation_loss(features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                             margin: float = 0.0) -> torch.Tensor:
    """[reconstructed] ``mean_i (1 - r(f_i, mu_{y_i}))``; with ``margin`` > 0 also
    ``mean_i mean_{c != y_i} relu(r(f_i, mu_c) - margin)``."""
    r = correlation_index(features, prototypes)
    loss = (1 - r.gather(1, labels[:, None])[:, 0]).mean()
    if margin > 0:
        others = torch.ones_like(r, dtype=torch.bool).scatter_(1, labels[:, None], False)
        loss = loss + F.relu(r[others] - margin).mean()
    return loss


class ProULearnObjective(Objective):
    """[reconstructed] ProULearn's adaptation loss with the labelled set ``labelled_idx`` (true
    ``labels``) and homogeneity ``h`` of every target sample."""

    name = "proulearn"

    def __init__(self, labelled_idx: torch.Tensor, labels: torch.Tensor, h: torch.Tensor | None = None,
                 beta_pl: float = 0.3, beta_im: float = 1.0, beta_cc: float = 1.0, temperature: float = 0.1,
                 margin: float = 0.0, labelled_batch: int = 32, use_h_weight: bool = True, seed: int = 0):
        if len(labelled_idx) != len(labels):
            raise InputError("labelled_idx and labels must have the same length")
        self.labelled_idx, self.labels, self.h = labelled_idx.long(), labels.long(), h
        self.beta_pl, self.beta_im, self.beta_cc = beta_pl, beta_im, beta_cc
        self.temperature, self.margin, self.labelled_batch = temperature, margin, labelled_batch
        self.use_h_weight = use_h_weight
        self.gen = torch.Generator().manual_seed(seed)
        self.pseudo_accuracy: list[float] = []

    def start(self, net, x):
        self.x = x

    @torch.no_grad()
    def epoch_start(self, net, x, epoch):
        f, p = predict(net, x)
        weights = p.clone()
        if len(self.labelled_idx):
            weights[self.labelled_idx] = F.one_hot(self.labels, p.shape[1]).float()
        self.prototypes = soft_prototypes(f, weights)
        q = correlation_softmax(f, self.prototypes, self.temperature)
        self.pseudo = q.argmax(1)
        self.pseudo[self.labelled_idx] = self.labels
        conf = q.max(1).values
        if self.use_h_weight and self.h is not None:
            h = self.h
            conf = conf * (h - h.min()) / (h.max() - h.min()).clamp_min(1e-8)
        conf[self.labelled_idx] = 1.0
        self.weight = conf

    def loss(self, net, xb, idx, progress):
        nl = min(self.labelled_batch, len(self.labelled_idx))
        if nl:
            pos = torch.randperm(len(self.labelled_idx), generator=self.gen)[:nl]
            xb = torch.cat([xb, take(self.x, self.labelled_idx[pos]).to(xb.device)])
        f = net.embed(xb)
        logits = net.head(f)
        fu, lu = f[:len(idx)], logits[:len(idx)]
        w = self.weight[idx].to(f.device)
        pseudo = self.pseudo[idx].to(f.device)
        loss = self.beta_pl * (w * F.cross_entropy(lu, pseudo, reduction="none")).mean()
        loss = loss + self.beta_im * information_maximisation(lu.softmax(1))
        loss = loss + self.beta_cc * central_correlation_loss(fu, self.prototypes.to(f.device), pseudo, self.margin)
        if nl:
            loss = loss + F.cross_entropy(logits[len(idx):], self.labels[pos].to(f.device))
        return loss
