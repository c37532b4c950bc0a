"""A k-NN memory bank for self-supervised models: L2-normalised embeddings with their labels, and
DINO's weighted k-NN vote (``k = 20``, ``T = 0.07``: cosine similarities, top-k, each neighbour
votes ``exp(sim / T)`` for its class). Saved with ``torch.save`` and loaded with
``weights_only=True``; built by ``visionlens bank`` from the synthetic world or a folder of images.
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
        from ..viz.overlay import save_atomic

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


def knn_vote(query: torch.Tensor, bank: MemoryBank, k: int = 20, temperature: float = 0.07):
    """DINO's weighted k-NN vote for ``query`` (``(B, D)``, normalised here).

    Returns ``(votes, sims, indices)``: ``votes`` ``(B, num_classes)`` summed ``exp(sim / T)``
    per class, and the top-``k`` cosine similarities and bank indices ``(B, k)``."""
    if query.dim() != 2 or query.shape[1] != bank.features.shape[1]:
        raise InputError(f"the model output {tuple(query.shape)} does not match the memory bank's "
                         f"{bank.features.shape[1]}-d embeddings; build the bank with the same model")
    k = min(k, len(bank))
    feats = bank.features.to(query.device, torch.float32)
    sims = F.normalize(query.float(), dim=1) @ feats.t()
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(query.shape[0], bank.num_classes, device=query.device)
    votes.scatter_add_(1, bank.labels.to(query.device)[idx], (top / temperature).exp())
    return votes, top, idx


@torch.no_grad()
def embed(module: torch.nn.Module, batches) -> torch.Tensor:
    """Model outputs (embeddings) for an iterable of preprocessed ``(B, C, H, W)`` batches."""
    from .vit import model_output

    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        return torch.cat([model_output(module(x.to(device))).float().cpu() for x in batches])
    finally:
        module.train(was_training)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _folder_items(images: str | Path, labels: str | Path | None, class_names) -> tuple[list[Path], list[int], int, tuple | None]:
    import csv

    root = Path(images)
    if not root.is_dir():
        raise InputError(f"--images {root} is not a folder")
    if labels is not None:
        index = {n: i for i, n in enumerate(class_names or [])}
        files, ys = [], []
        with open(labels, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if not row or row[0].strip().lower() in ("file", "filename", "path"):
                    continue
                if len(row) < 2:
                    raise InputError(f"{labels}: each row must be file,label; got {row}")
                name, label = row[0].strip(), row[1].strip()
                if label.lstrip("-").isdigit():
                    y = int(label)
                elif label in index:
                    y = index[label]
                else:
                    raise InputError(f"{labels}: label {label!r} is neither a class index nor a class name of the model")
                files.append(root / name)
                ys.append(y)
        num = max(len(class_names or []), max(ys, default=-1) + 1)
        return files, ys, num, tuple(class_names) if class_names else None
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise InputError(f"{root} has no class sub-folders; give one folder per class or a --labels CSV")
    # folders named after the model's classes keep the model's indices; otherwise sorted order
    known = class_names is not None and all(c in class_names for c in classes)
    index = {c: (list(class_names).index(c) if known else i) for i, c in enumerate(classes)}
    files, ys = [], []
    for c in classes:
        for p in sorted((root / c).rglob("*")):
            if p.suffix.lower() in _IMAGE_SUFFIXES:
                files.append(p)
                ys.append(index[c])
    return (files, ys, len(class_names), tuple(class_names)) if known else (files, ys, len(classes), tuple(classes))


def build_bank(model, images: str | Path | None = None, labels: str | Path | None = None, world_split: str = "train",
               n: int = 5000, batch_size: int = 250) -> MemoryBank:
    """A memory bank of ``model``'s (a :class:`~visionlens.models.ZooModel`) embeddings: of the
    first ``n`` images of a synthetic-world split (default), or of the images under ``images``
    (one sub-folder per class, or labels from a ``file,label`` CSV)."""
    from ..data.images import load_image

    if images is None:
        from ..data.world import World, WorldConfig

        size = model.preprocess.crop
        world = World(WorldConfig(size=size), seed=0)
        mean = torch.tensor(model.preprocess.mean)[:, None, None]
        std = torch.tensor(model.preprocess.std)[:, None, None]
        ys, chunks = [], []
        for start in range(0, n, batch_size):
            b = world.batch(world_split, range(start, min(n, start + batch_size)))
            chunks.append((b["image"] - mean) / std)
            ys.append(b["label"])
        feats = embed(model.module, chunks)
        return MemoryBank(feats, torch.cat(ys), len(model.class_names or []) or int(torch.cat(ys).max()) + 1,
                          model.class_names, model.name)
    files, ys, num, names = _folder_items(images, labels, model.class_names)
    if not files:
        raise InputError(f"no images found under {images}")
    batches = (torch.stack([model.preprocess(load_image(p)) for p in files[s:s + batch_size]])
               for s in range(0, len(files), batch_size))
    return MemoryBank(embed(model.module, batches), torch.tensor(ys), num, names, model.name)
