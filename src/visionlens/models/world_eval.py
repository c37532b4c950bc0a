"""Scores of the world reference models, with and without the evidence.

``evidence_check`` renders the *same* test scenes three times: as they are, with the class
object removed (the background shows through) and with the distractors removed. If the ground
truth is the evidence, the score falls to chance without the object and stays put without the
distractors.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.hooks import preserved_model_state
from ..core.memory_bank import cosine_neighbours, weighted_votes
from ..data.world import NUM_CLASSES, World


def normalise(images: torch.Tensor) -> torch.Tensor:
    """World images in [0, 1] -> model input (mean = std = 0.5)."""
    return (images - 0.5) / 0.5


@torch.no_grad()
def outputs(module: nn.Module, world: World, split: str, indices, batch: int = 250, **render) -> tuple[torch.Tensor, torch.Tensor]:
    """Model outputs and labels for rendered samples (``render``: remove_object, remove_distractors, view)."""
    device = next(module.parameters()).device
    outs, labels = [], []
    indices = list(indices)
    for start in range(0, len(indices), batch):
        b = world.batch(split, indices[start:start + batch], **render)
        outs.append(module(normalise(b["image"]).to(device)).float().cpu())
        labels.append(b["label"])
    return torch.cat(outs), torch.cat(labels)


def accuracy(module: nn.Module, world: World, split: str, indices, **render) -> float:
    logits, labels = outputs(module, world, split, indices, **render)
    return float((logits.argmax(1) == labels).float().mean())


def knn_predict(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """DINO's weighted k-NN vote (:func:`~visionlens.core.memory_bank.weighted_votes`): the class."""
    return weighted_votes(query, bank, bank_labels, NUM_CLASSES, k, temperature)[0].argmax(1)


def knn_accuracy(module: nn.Module, world: World, bank_indices, query_indices, **render) -> float:
    bank, bank_labels = outputs(module, world, "train", bank_indices)
    query, labels = outputs(module, world, "test", query_indices, **render)
    return float((knn_predict(query, bank, bank_labels) == labels).float().mean())


def recall_at_1(module: nn.Module, world: World, indices, **render) -> float:
    """Each (possibly modified) test image queries the clean test images, itself excluded."""
    gallery, labels = outputs(module, world, "test", indices)
    query, _ = outputs(module, world, "test", indices, **render) if render else (gallery, labels)
    nearest = cosine_neighbours(query, gallery, 1, exclude_self=True)[1][:, 0]  # image i's own copy left out
    return float((labels[nearest] == labels).float().mean())


def score(kind: str, module: nn.Module, world: World, indices, bank: int = 5000, **render) -> float:
    """The model's headline score on test ``indices``: accuracy, k-NN accuracy or recall@1."""
    if kind == "classifier":
        return accuracy(module, world, "test", indices, **render)
    if kind == "self-supervised":
        return knn_accuracy(module, world, range(bank), indices, **render)
    if kind == "metric":
        return recall_at_1(module, world, indices, **render)
    raise ValueError(f"unknown kind {kind!r}")


def evidence_check(kind: str, module: nn.Module, world: World, indices) -> dict:
    with preserved_model_state(module):  # eval mode; every module's own mode back afterwards
        return {
            "clean": score(kind, module, world, indices),
            "object_removed": score(kind, module, world, indices, remove_object=True),
            "distractors_removed": score(kind, module, world, indices, remove_distractors=True),
            "chance": 1.0 / NUM_CLASSES,
        }
