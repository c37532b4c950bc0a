"""A k-NN memory bank for self-supervised models: L2-normalised embeddings with their labels, and
DINO's weighted k-NN vote (``k = 20``, ``T = 0.07``: cosine similarities, top-k, each neighbour
votes ``exp(sim / T)`` for its class). Saved with ``torch.save`` and loaded with
``weights_only=True``; built by ``visionlens bank`` (:mod:`visionlens.data.bank`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError


@dataclass
class MemoryBank:
    """``features``: ``(N, D)`` L2-normalised embeddings; ``labels``: ``(N,)`` class indices."""

    features: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...] | None = None
    model: str | None = None

    def __post_init__(self):
        if self.features.dim() != 2 or self.labels.shape != (self.features.shape[0],):
            raise InputError(f"a memory bank needs (N, D) features and (N,) labels, got {tuple(self.features.shape)} "
                             f"and {tuple(self.labels.shape)}")
        self.features = F.normalize(self.features.float(), dim=1)
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device) -> "MemoryBank":
        return MemoryBank(self.features.to(device), self.labels.to(device), self.num_classes, self.class_names, self.model)

    def save(self, path: str | Path) -> Path:
        from ..io import save_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"features": self.features.cpu(), "labels": self.labels.cpu(), "num_classes": int(self.num_classes),
                "class_names": list(self.class_names) if self.class_names else None, "model": self.model}
        save_atomic(lambda tmp: torch.save(data, tmp), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "MemoryBank":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"memory bank {path} does not exist; build one with `visionlens bank --model MODEL --out {path}`")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            names = data.get("class_names")
            return cls(data["features"], data["labels"], int(data["num_classes"]), tuple(names) if names else None,
                       data.get("model"))
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"{path} is not a visionlens memory bank ({type(err).__name__}); rebuild it with `visionlens bank`") from None


def cosine_neighbours(query: torch.Tensor, keys: torch.Tensor, k: int, exclude_self: bool = False):
    """The ``k`` nearest ``keys`` of each ``query`` row by cosine similarity: ``(sims, indices)``,
    each ``(B, k)``; ``exclude_self`` (query and keys the same set) leaves each row's own index out.
    The one k-NN search of the package (memory banks, world-model scores, the adaptation systems)."""
    sims = F.normalize(query.float(), dim=1) @ F.normalize(keys.float(), dim=1).t()
    if exclude_self:
        sims.fill_diagonal_(-float("inf"))
    return sims.topk(min(k, keys.shape[0] - int(exclude_self)), dim=1)


def weighted_votes(query: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int = 20,
                   temperature: float = 0.07):
    """DINO's weighted k-NN vote: ``(votes (B, num_classes), sims (B, k), indices (B, k))``, each
    of the top-``k`` neighbours adding ``exp(sim / T)`` to its class."""
    top, idx = cosine_neighbours(query, keys, k)
    votes = torch.zeros(query.shape[0], num_classes, device=query.device)
    votes.scatter_add_(1, labels.to(query.device)[idx], (top / temperature).exp())
    return votes, top, idx


def knn_vote(query: torch.Tensor, bank: MemoryBank, k: int = 20, temperature: float = 0.07):
    """DINO's weighted k-NN vote for ``query`` (``(B, D)``, normalised here) against a memory bank.

    Returns ``(votes, sims, indices)``: ``votes`` ``(B, num_classes)`` summed ``exp(sim / T)``
    per class, and the top-``k`` cosine similarities and bank indices ``(B, k)``."""
    if query.dim() != 2 or query.shape[1] != bank.features.shape[1]:
        raise InputError(f"the model output {tuple(query.shape)} does not match the memory bank's "
                         f"{bank.features.shape[1]}-d embeddings; build the bank with the same model")
    return weighted_votes(query, bank.features.to(query.device), bank.labels, bank.num_classes, k, temperature)
