"""Training and evaluation of patch-pair change detectors (SpectralKAN protocol, spec §4.5):
Adam (lr 1e-3, no weight decay), StepLR every ``epochs // 20`` epochs by 0.9, batch 64, cross-entropy."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from visionlens.errors import InputError

from .data import PatchPairs, Scene, stratified_split
from .metrics import boundary_mask, scores
from .peers import SUPERVISED_PEERS, UNSUPERVISED_PEERS
from .spectralkan import KAN_MODELS, analytic_cost, build_model, formula_parameter_count

TRAINABLE = KAN_MODELS + tuple(SUPERVISED_PEERS)


@dataclass
class TrainConfig:
    model: str = "spectralkan-b"
    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    gamma: float = 0.9
    patch: int = 5
    train_fraction: float = 0.01
    seed: int = 0
    eval_batch: int = 512
    basis: str = "fast"
    trained_elsewhere: bool = False       # the authors' weights: their split is unknown, so test on every labelled pixel

    def to_dict(self) -> dict:
        return asdict(self)


def create_model(name: str, bands: int, patch: int = 5, basis: str = "fast") -> nn.Module:
    if name in SUPERVISED_PEERS:
        return SUPERVISED_PEERS[name](bands, patch)
    if name not in KAN_MODELS:
        raise InputError(f"unknown trainable model {name!r}: use one of {', '.join(TRAINABLE)}")
    return build_model(name, bands, patch, basis)


def model_cost(model: nn.Module) -> dict:
    """Per-pixel analytic ``flops`` and ``base_macs`` (see ``kan.layer_flops`` for the convention)."""
    return analytic_cost(model) if hasattr(model, "stacks") else model.cost()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fit(model: nn.Module, pairs: PatchPairs, positions: np.ndarray, labels: np.ndarray, config: TrainConfig,
        progress: bool = False) -> dict:
    """Train in place on the pixels ``positions`` (``(N, 2)``); returns losses and timings. Seeds a
    forked torch RNG (the caller's is left as it was); a non-finite loss stops with an :class:`InputError`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _fit(model, pairs, positions, labels, config, progress)


def _check_loss(loss: torch.Tensor, epoch: int, config: TrainConfig) -> None:
    if not bool(torch.isfinite(loss)):
        raise InputError(f"hsi-cd training diverged: the loss became {loss.item()} in epoch {epoch} "
                         f"(lr {config.lr:g}); lower --lr or check the data for extreme values")


def _fit(model, pairs, positions, labels, config, progress) -> dict:
    x = pairs.patches(positions[:, 0], positions[:, 1])
    y = torch.from_numpy(labels[positions[:, 0], positions[:, 1]]).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, config.epochs // 20), gamma=config.gamma)
    loss_fn = nn.CrossEntropyLoss()
    bar = None
    if progress:
        from visionlens.core.progress import Progress
        bar = Progress(config.epochs, "hsi-cd train", unit="epoch")
    losses, wall, cpu = [], time.perf_counter(), time.process_time()
    model.train()
    for epoch in range(config.epochs):
        order, total = torch.randperm(len(y)), 0.0
        for start in range(0, len(y), config.batch_size):
            idx = order[start:start + config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            _check_loss(loss, epoch + 1, config)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        scheduler.step()
        losses.append(total / len(y))
        if bar:
            bar.update(1)
    model.eval()
    return {"losses": losses, "train_wall_s": time.perf_counter() - wall, "train_cpu_s": time.process_time() - cpu,
            "steps": config.epochs * -(-len(y) // config.batch_size)}


@torch.no_grad()
def predict(model: nn.Module, pairs: PatchPairs, positions: np.ndarray, batch: int = 512) -> np.ndarray:
    model.eval()
    out = [model(pairs.patches(positions[s:s + batch, 0], positions[s:s + batch, 1])).argmax(1)
           for s in range(0, len(positions), batch)]
    return torch.cat(out).numpy()


def all_positions(shape) -> np.ndarray:
    return np.argwhere(np.ones(shape, dtype=bool))


def evaluate(model: nn.Module, pairs: PatchPairs, positions: np.ndarray, labels: np.ndarray, batch: int = 512) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    pred = predict(model, pairs, positions, batch)
    truth = labels[positions[:, 0], positions[:, 1]]
    result = scores(truth, pred)
    result.update(test_wall_s=time.perf_counter() - wall, test_cpu_s=time.process_time() - cpu)
    near = boundary_mask(labels)[positions[:, 0], positions[:, 1]]
    for name, part in (("boundary", near), ("interior", ~near)):       # the paper: errors sit on change edges
        if part.any():
            result.update({f"{k}_{name}": v for k, v in scores(truth[part], pred[part]).items()})
    return result


def run(scene: Scene, config: TrainConfig, progress: bool = False):
    """Split, train and test one model; returns ``(model or None, result dict)``.

    Unsupervised peers (``cva-otsu``, ``pca-kmeans``) are scored on the same test pixels.
    """
    train_pos, test_pos = stratified_split(scene.labels, config.train_fraction, config.seed)
    if config.model in UNSUPERVISED_PEERS:
        wall, cpu = time.perf_counter(), time.process_time()
        kwargs = {"seed": config.seed} if config.model == "pca-kmeans" else {}
        pred_map = UNSUPERVISED_PEERS[config.model](scene, **kwargs)
        result = scores(scene.labels[test_pos[:, 0], test_pos[:, 1]], pred_map[test_pos[:, 0], test_pos[:, 1]])
        result.update(test_wall_s=time.perf_counter() - wall, test_cpu_s=time.process_time() - cpu,
                      train_wall_s=0.0, train_cpu_s=0.0)
        return None, result
    with torch.random.fork_rng(devices=[]):                            # leave the caller's RNG as it was
        torch.manual_seed(config.seed)
        model = create_model(config.model, scene.bands, config.patch, config.basis)
    pairs = PatchPairs(scene, config.patch)
    history = fit(model, pairs, train_pos, scene.labels, config, progress)
    result = evaluate(model, pairs, test_pos, scene.labels, config.eval_batch)
    result.update({k: v for k, v in history.items() if k != "losses"}, final_loss=history["losses"][-1],
                  first_loss=history["losses"][0], params=parameter_count(model), **model_cost(model),
                  train_pixels=int(len(train_pos)), test_pixels=int(len(test_pos)))
    if hasattr(model, "stacks"):
        result["formula_params"] = formula_parameter_count(model)
    return model, result
