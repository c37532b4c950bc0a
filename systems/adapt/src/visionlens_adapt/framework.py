"""The source-free adaptation framework shared by every method and peer.

* :func:`train_source`: supervised training on the source domain (label-smoothed CE, SGD with
  Nesterov momentum, two learning rates as in EIANet's ``src_pretrain.py``).
* :class:`Banks`: the target feature bank (L2-normalised features) and score bank (softmax
  predictions), updated only at the batch's dataset indices, with k-NN retrieval that never
  returns the query's own row.
* :func:`adapt`: the target loop (no source data): an :class:`Objective` supplies the loss.
* :func:`evaluate`, :func:`predict`, :func:`prototype_separation`: transductive evaluation.

Images are an ``(N, 3, H, W)`` tensor (the generated shifts) or a ``Dataset`` of ``(3, H, W)``
image tensors (the real datasets, decoded per item): every loop takes batches by index, from the
tensor or through a ``DataLoader`` (``workers`` processes, the dataset's ``workers`` attribute), so
a dataset is never held in memory as a whole.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from visionlens.checks import check_number
from visionlens.errors import InputError, VisionlensError


class DivergedError(VisionlensError):
    """Training produced NaN or infinite values (a learning rate too large for the data)."""


def check_images(x, name: str = "images"):
    """Raise an :class:`InputError` unless ``x`` is a finite, non-empty float ``(N, 3, H, W)`` tensor
    or a non-empty dataset whose first item is a finite float ``(3, H, W)`` tensor."""
    if isinstance(x, Dataset) and not torch.is_tensor(x):
        if len(x) == 0:
            raise InputError(f"{name}: the dataset is empty")
        check_images(x[0][None], name)
        return x
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[0] == 0 or x.shape[1] != 3:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise InputError(f"{name} must be a non-empty (N, 3, H, W) tensor, got {shape}")
    if not x.dtype.is_floating_point or not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} must be finite float values in [0, 1]")
    return x


def take(x, idx) -> torch.Tensor:
    """The images at ``idx``: indexed from a tensor, or decoded and stacked from a dataset."""
    if torch.is_tensor(x):
        return x[idx]
    return torch.stack([x[int(i)] for i in idx])


def iterate(x, batches: list[torch.Tensor]):
    """``(idx, images)`` for each index batch: sliced from a tensor, or streamed from a dataset
    through a ``DataLoader`` (decoding overlaps training when the dataset has ``workers``)."""
    if torch.is_tensor(x):
        for idx in batches:
            yield idx, x[idx]
        return
    loader = DataLoader(x, batch_sampler=[b.tolist() for b in batches], num_workers=getattr(x, "workers", 0))
    yield from zip(batches, loader)


def check_labels(y, n: int, num_classes: int, name: str = "labels") -> torch.Tensor:
    if not torch.is_tensor(y) or y.dim() != 1 or y.shape[0] != n or y.dtype.is_floating_point:
        raise InputError(f"{name} must be an integer tensor of shape ({n},)")
    valid = y[y >= 0]
    if len(valid) and int(valid.max()) >= num_classes:
        raise InputError(f"{name} contain class {int(valid.max())} but the model has {num_classes} classes")
    return y


def translate(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Random integer translation by up to ``pixels`` (replicate padding): the training augmentation."""
    if pixels <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, [pixels] * 4, mode="replicate")
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 3, h, w + 2 * pixels)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 3, h, w)
    return out.gather(3, cols)


def model_device(net) -> torch.device:
    """Where the network's parameters are: batches are moved there, banks and labels stay on the CPU."""
    return next(net.parameters()).device


def label_smoothed_ce(logits: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Cross-entropy against ``(1 - eps) one_hot + eps / K`` (EIANet / SHOT source loss)."""
    logp = logits.log_softmax(1)
    target = torch.full_like(logp, epsilon / logits.shape[1])
    target.scatter_(1, y[:, None], 1 - epsilon + epsilon / logits.shape[1])
    return -(target * logp).sum(1).mean()


@dataclass
class SourceConfig:
    """Source training. Reference (ImageNet-pretrained ResNet-50): 20 epochs, batch 64, lr 1e-3
    backbone / 1e-2 bottleneck, eps 0.1. A from-scratch small CNN needs the larger ``lr``."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-2
    bottleneck_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    smoothing: float = 0.1
    shift_pixels: int = 2
    schedule: str = "constant"
    seed: int = 0

    def __post_init__(self):
        _check_config(self)


@dataclass
class AdaptConfig:
    """Target adaptation (EIANet ``tar_adapt.py`` structure: SGD Nesterov, constant learning rate,
    backbone + attention at ``lr * lr_encoder``, bottleneck + BN at ``lr * bottleneck_lr_mult``)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-2
    lr_encoder: float = 0.2
    bottleneck_lr_mult: float = 2.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    shift_pixels: int = 2
    schedule: str = "constant"
    seed: int = 0

    def __post_init__(self):
        _check_config(self)


SCHEDULES = ("constant", "shot")


def schedule_factor(schedule: str, progress: float) -> float:
    """Learning-rate factor at training ``progress`` in [0, 1]: ``constant`` 1, or SHOT's
    ``(1 + 10 p) ** -0.75`` (tim-learn/SHOT ``lr_scheduler``)."""
    return 1.0 if schedule == "constant" else (1 + 10 * progress) ** -0.75


def _set_rates(opt: torch.optim.Optimizer, base: list[float], factor: float) -> None:
    for group, lr in zip(opt.param_groups, base):
        group["lr"] = lr * factor


def _check_config(cfg) -> None:
    """One :class:`InputError` naming the first bad field of a training config."""
    check_number("epochs", cfg.epochs, minimum=0, integer=True)
    check_number("batch_size", cfg.batch_size, minimum=2, integer=True)
    check_number("lr", cfg.lr, above=0)
    check_number("momentum", cfg.momentum, minimum=0, maximum=1)
    check_number("weight_decay", cfg.weight_decay, minimum=0)
    check_number("shift_pixels", cfg.shift_pixels, minimum=0, integer=True)
    check_number("seed", cfg.seed, minimum=0, integer=True)
    for name in ("bottleneck_lr_mult", "lr_encoder"):
        if hasattr(cfg, name):
            check_number(name, getattr(cfg, name), minimum=0)
    if hasattr(cfg, "smoothing"):
        check_number("smoothing", cfg.smoothing, minimum=0, maximum=1)
    if cfg.schedule not in SCHEDULES:
        raise InputError(f"unknown schedule {cfg.schedule!r}; choose from: {', '.join(SCHEDULES)}")


def _sgd(groups, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, momentum=momentum, weight_decay=weight_decay, nesterov=True)


def _batches(n: int, batch_size: int, gen: torch.Generator, drop_last: bool = True):
    order = torch.randperm(n, generator=gen)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        if len(idx) > 1:  # BatchNorm1d needs two samples (the reference skips size-1 batches too)
            yield idx


def _check_loss(loss: torch.Tensor, stage: str) -> None:
    """Stop with one line when training diverged (a NaN or infinite loss)."""
    if not bool(torch.isfinite(loss)):
        raise DivergedError(f"{stage} diverged (the loss is {float(loss)}); lower the learning rate (--lr)")


def _check_model(net, stage: str) -> None:
    """Stop with one line when a parameter or buffer became NaN or infinite."""
    for name, value in list(net.named_parameters()) + list(net.named_buffers()):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DivergedError(f"{stage} diverged ({name} holds NaN or infinite values); lower the learning rate (--lr)")


def train_source(net, x, y: torch.Tensor, cfg: SourceConfig | None = None) -> dict:
    """Supervised source training of an :class:`~visionlens_adapt.network.AdaptNet` in place."""
    cfg = cfg or SourceConfig()
    check_images(x, "source images")
    check_labels(y, len(x), net.num_classes, "source labels")
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = _sgd([{"params": net.encoder_parameters(), "lr": cfg.lr},
                {"params": net.bottleneck_parameters(), "lr": cfg.lr * cfg.bottleneck_lr_mult}],
               cfg.momentum, cfg.weight_decay)
    start, losses, device = time.time(), [], model_device(net)
    base = [g["lr"] for g in opt.param_groups]
    steps, step = max(1, cfg.epochs * (len(x) // cfg.batch_size if len(x) >= cfg.batch_size else 1)), 0
    for _ in range(cfg.epochs):
        net.train()
        total = 0.0
        for idx, xb in iterate(x, list(_batches(len(x), cfg.batch_size, gen))):
            _set_rates(opt, base, schedule_factor(cfg.schedule, step / steps))
            xb = translate(xb, cfg.shift_pixels, gen).to(device)
            loss = label_smoothed_ce(net(xb), y[idx].to(device), cfg.smoothing)
            _check_loss(loss, "source training")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            step += 1
        losses.append(total)
    _check_model(net, "source training")
    net.eval()
    return {"losses": losses, "seconds": time.time() - start}


@torch.no_grad()
def predict(net, x, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode ``(features, probabilities)`` for all of ``x``, on the CPU (features are not normalised)."""
    was, device = net.training, model_device(net)
    net.eval()
    feats, probs = [], []
    for _, xb in iterate(x, list(torch.arange(len(x)).split(batch_size))):
        f = net.embed(xb.to(device))
        feats.append(f.cpu())
        probs.append(net.head(f).softmax(1).cpu())
    net.train(was)
    feats, probs = torch.cat(feats), torch.cat(probs)
    if not (bool(torch.isfinite(feats).all()) and bool(torch.isfinite(probs).all())):
        raise DivergedError("the network gives NaN or infinite outputs (its training diverged); "
                            "lower the learning rate (--lr)")
    return feats, probs


def evaluate(net, x, y: torch.Tensor) -> float:
    """Top-1 accuracy (%) over samples with a label >= 0 (planted outliers carry -1)."""
    _, p = predict(net, x)
    keep = y >= 0
    return float((p.argmax(1)[keep] == y[keep]).float().mean() * 100)


COLLAPSED = 5e-3  # 1 - intra below this (samples within ~6 degrees of their prototype): the ratio is undefined


def prototype_separation(features: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """Class-prototype geometry of L2-normalised features (true labels), over the ``classes`` with
    target samples (a class without any has no prototype): ``inter_cosine`` is the mean pairwise
    cosine between class prototypes (lower = better separated; a simplex reaches ``-1/(K-1)``),
    ``intra_cosine`` the mean cosine of a sample to its own prototype, and ``ratio`` = (1 - inter) /
    (1 - intra), larger = more separable; ``None`` when the features collapsed (1 - intra below
    ``COLLAPSED``: the ratio would only amplify noise) or fewer than two classes are present."""
    keep = y >= 0
    f, y = F.normalize(features[keep], dim=1), y[keep]
    present = [c for c in range(num_classes) if (y == c).any()]
    if not present:
        return {"inter_cosine": None, "intra_cosine": None, "ratio": None, "classes": 0}
    protos = F.normalize(torch.stack([f[y == c].mean(0) for c in present]), dim=1)
    row = torch.full((num_classes,), -1, dtype=torch.long)
    row[present] = torch.arange(len(present))
    intra = float((f * protos[row[y]]).sum(1).mean())
    off = ~torch.eye(len(present), dtype=torch.bool)
    inter = float((protos @ protos.T)[off].mean()) if len(present) > 1 else None
    ratio = None if inter is None or 1 - intra < COLLAPSED else (1 - inter) / (1 - intra)
    return {"inter_cosine": inter, "intra_cosine": intra, "ratio": ratio, "classes": len(present)}


class Banks:
    """Feature bank ``(N, d)`` (L2-normalised) and score bank ``(N, K)`` (probabilities)."""

    def __init__(self, features: torch.Tensor, scores: torch.Tensor):
        if features.shape[0] != scores.shape[0]:
            raise InputError("feature and score banks must have the same number of rows")
        self.features = F.normalize(features.detach().float(), dim=1).clone()
        self.scores = scores.detach().float().clone()

    @classmethod
    def from_model(cls, net, x: torch.Tensor) -> "Banks":
        """One eval pass over the whole target set (as before the reference adaptation loop)."""
        f, p = predict(net, x)
        return cls(f, p)

    def __len__(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def update(self, idx: torch.Tensor, features: torch.Tensor, scores: torch.Tensor) -> None:
        """Overwrite rows ``idx`` only: normalised ``features`` and ``scores``."""
        self.features[idx] = F.normalize(features.detach().float(), dim=1).to(self.features.device)
        self.scores[idx] = scores.detach().float().to(self.scores.device)

    @torch.no_grad()
    def neighbours(self, features: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
        """Indices ``(B, k)`` of the ``k`` most cosine-similar bank rows to each query, never the
        query's own row ``idx`` (the reference drops the top-1 hit, the same row barring ties)."""
        if not 1 <= k < len(self):
            raise InputError(f"k must be in [1, {len(self) - 1}] for a bank of {len(self)} rows, got {k}")
        sims = F.normalize(features.detach().float(), dim=1).to(self.features.device) @ self.features.T
        sims[torch.arange(len(idx)), idx] = -math.inf
        return sims.topk(k, dim=1).indices


class Objective:
    """A target objective: ``start`` once before training, ``epoch_start`` before each epoch,
    ``loss`` per batch (``idx``: dataset indices of the batch)."""

    name = "objective"
    trains = True

    def start(self, net, x: torch.Tensor) -> None:
        pass

    def epoch_start(self, net, x: torch.Tensor, epoch: int) -> None:
        pass

    def loss(self, net, xb: torch.Tensor, idx: torch.Tensor, progress: float) -> torch.Tensor:
        raise NotImplementedError


def adapt(net, x, objective: Objective, cfg: AdaptConfig | None = None,
          y_eval: torch.Tensor | None = None) -> dict:
    """Adapt ``net`` in place on unlabelled target images ``x`` with ``objective``. ``y_eval``
    (optional) is used only to log accuracy after each epoch, never for training."""
    cfg = cfg or AdaptConfig()
    check_images(x, "target images")
    history = {"accuracy": [evaluate(net, x, y_eval)] if y_eval is not None else []}
    if not objective.trains:
        return history
    with torch.random.fork_rng(devices=[]):  # seeded for the objective; the caller's state comes back
        torch.manual_seed(cfg.seed)
        return _adapt(net, x, objective, cfg, y_eval, history)


def _adapt(net, x, objective: Objective, cfg: AdaptConfig, y_eval, history: dict) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = _sgd([{"params": net.encoder_parameters(), "lr": cfg.lr * cfg.lr_encoder},
                {"params": net.bottleneck_parameters(), "lr": cfg.lr * cfg.bottleneck_lr_mult}],
               cfg.momentum, cfg.weight_decay)
    objective.start(net, x)
    base = [g["lr"] for g in opt.param_groups]
    steps = max(1, cfg.epochs * (len(x) // cfg.batch_size if len(x) >= cfg.batch_size else 1))
    step, start, device = 0, time.time(), model_device(net)
    for epoch in range(cfg.epochs):
        objective.epoch_start(net, x, epoch)
        net.train()
        for idx, xb in iterate(x, list(_batches(len(x), cfg.batch_size, gen))):
            _set_rates(opt, base, schedule_factor(cfg.schedule, step / steps))
            loss = objective.loss(net, translate(xb, cfg.shift_pixels, gen).to(device), idx, step / steps)
            _check_loss(loss, f"adaptation ({objective.name})")
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        _check_model(net, f"adaptation ({objective.name})")
        if y_eval is not None:
            history["accuracy"].append(evaluate(net, x, y_eval))
    net.eval()
    history["seconds"] = time.time() - start
    return history
