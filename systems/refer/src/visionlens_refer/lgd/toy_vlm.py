"""A small white-box vision-language model for the synthetic referring world (CLIP stand-in).

* Image side: two small CNNs over 4-channel crops (RGB + the proposal mask), 24x24 each.
  **Local** branch: the mask's box, pixels outside the mask filled with grey (GL-CLIP's local
  crop). **Context** branch: a box three times larger around the mask, pixels kept (plays the
  role of GL-CLIP's global-context feature: what surrounds the region).
* Text side: a bag of words over the synthetic vocabulary, with separate embeddings for the
  words after "with" and after "surrounded by" (a bag alone cannot tell "a lantern surrounded by
  a grey ring" from "a grey ring surrounded by a lantern"). Words outside the vocabulary are
  ignored; a sentence with none gives the zero vector (cosine 0 for every region).

It is trained (``systems/refer/training/train_toy_vlm.py``) contrastively on region captions
only, the way CLIP is trained on alt-text: appearance captions and surrounding captions, never
referring expressions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visionlens.data.world import CLASS_NAMES, PART_NAMES, SHAPES
from visionlens.errors import AssetError, InputError, display

from .synthetic import DISTRACTOR_COLOUR_NAMES

CROP = 24
CONTEXT_SCALE = 3.0
WEIGHTS = Path(__file__).parents[1] / "weights" / "toy_vlm.pt"  # manifest: toy_vlm.json beside it
FUNCTION_WORDS = frozenset({"a", "an", "photo", "of", "with", "and", "surrounded", "by"})
_WORDS = sorted(FUNCTION_WORDS
                | set(CLASS_NAMES) | {w for p in PART_NAMES for w in p.split()}
                | set(DISTRACTOR_COLOUR_NAMES) | set(SHAPES))
VOCAB = {w: i for i, w in enumerate(_WORDS)}
SEGMENT_WORDS = {"with": 1, "surrounded": 2}


def tokenize(text: str) -> list[int]:
    """Known words -> ids; words after "with" / "surrounded" are shifted to their own segment."""
    ids, seg = [], 0
    for w in re.findall(r"[a-z][a-z\-]*", text.lower()):
        seg = max(seg, SEGMENT_WORDS.get(w, 0))
        if w in VOCAB:
            ids.append(VOCAB[w] + seg * len(VOCAB))
    return ids


def content_words(text: str) -> list[str]:
    """The words of ``text`` the toy VLM knows, function words ("a", "of", "with", ...) left out."""
    return [w for w in re.findall(r"[a-z][a-z\-]*", text.lower()) if w in VOCAB and w not in FUNCTION_WORDS]


def _box_grids(boxes: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Sampling grids for square crops ``boxes`` (N, 3: cx, cy, side in pixels)."""
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    gx = boxes[:, 0, None] + lin[None] * boxes[:, 2, None]  # (N, size) pixel x
    gy = boxes[:, 1, None] + lin[None] * boxes[:, 2, None]
    nx = gx / width * 2 - 1
    ny = gy / height * 2 - 1
    return torch.stack([nx[:, None, :].expand(-1, size, -1), ny[:, :, None].expand(-1, -1, size)], dim=-1)


def region_crops(image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` (3, H, W) in [0, 1], ``masks`` (N, H, W) bool -> local and context crops, each
    (N, 4, 24, 24). Empty masks give empty (all-zero mask channel) crops."""
    n, h, w = masks.shape
    m = masks.float()
    ys = torch.arange(h, dtype=torch.float32)
    xs = torch.arange(w, dtype=torch.float32)
    rows, cols = m.amax(2) > 0, m.amax(1) > 0
    big = 1e9
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -big).amax(1)
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -big).amax(1)
    empty = ~rows.any(1)
    y0, y1, x0, x1 = (torch.where(empty, 0.0, v) for v in (y0, y1, x0, x1))
    side = torch.maximum(x1 - x0, y1 - y0) * 1.15 + 3
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
    stack = torch.cat([image[None].expand(n, -1, -1, -1), m[:, None]], dim=1)
    local_src = torch.cat([torch.where(m[:, None] > 0, image[None], torch.full_like(image[None], 0.5)), m[:, None]], 1)
    local = F.grid_sample(local_src, _box_grids(torch.stack([cx, cy, side], 1), CROP, h, w), align_corners=False)
    context = F.grid_sample(stack, _box_grids(torch.stack([cx, cy, side * CONTEXT_SCALE], 1), CROP, h, w),
                            align_corners=False)
    return local, context


def _cnn(dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 9, 96), nn.ReLU(), nn.Linear(96, dim),
    )


class ToyVLM(nn.Module):
    """Region encoders (local, context) and a bag-of-words text encoder in one ``dim``-d space."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.local = _cnn(dim)
        self.context = _cnn(dim)
        self.words = nn.EmbeddingBag(3 * len(VOCAB), dim, mode="mean")
        self.text_proj = nn.Linear(dim, dim, bias=False)

    def encode_crops(self, local: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm ``(global/context, local)`` features of precomputed crops."""
        return F.normalize(self.context(context), dim=-1), F.normalize(self.local(local), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = [tokenize(t) for t in texts]
        flat = torch.tensor([i for seq in ids for i in seq], dtype=torch.long)
        offsets = torch.tensor(np.cumsum([0] + [len(s) for s in ids[:-1]]), dtype=torch.long)
        bag = self.words(flat, offsets)  # empty bags -> zeros
        out = F.normalize(self.text_proj(bag), dim=-1)
        empty = torch.tensor([len(s) == 0 for s in ids])
        return torch.where(empty[:, None], torch.zeros_like(out), out)


class ToyVLMEncoder:
    """The pipeline's encoder interface on :class:`ToyVLM`: ``encode_regions(image, masks)`` ->
    ``(global, local)`` unit features and ``encode_text(texts)``; ``name`` for caches."""

    def __init__(self, model: ToyVLM, name: str = "toy-vlm"):
        self.model, self.name = model.eval(), name
        self.identity = f"{name}:{_state_digest(model)}"

    @torch.no_grad()
    def encode_regions(self, image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 3 or image.shape[0] != 3 or masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
            raise InputError(f"expected image (3, H, W) and masks (N, H, W) of the same size, got "
                             f"{tuple(image.shape)} and {tuple(masks.shape)}")
        return self.model.encode_crops(*region_crops(image.float(), masks.bool()))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(list(texts))


def _state_digest(model: nn.Module) -> str:
    """A short hash of the weights (the region cache's model identity)."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_toy_vlm(path: str | Path | None = None) -> ToyVLMEncoder:
    """The packaged weights (``weights/toy_vlm.pt``, made by ``systems/refer/training/train_toy_vlm.py``)
    or another file; a file that is not a toy VLM checkpoint (or holds NaN / infinite weights) is one
    :class:`InputError`."""
    from visionlens.io import load_checkpoint

    if path is None and not WEIGHTS.is_file():
        raise AssetError(f"toy VLM weights not found at {WEIGHTS}; {_REMAKE}")
    path = Path(path) if path else WEIGHTS
    state = load_checkpoint(path, "toy VLM weights")
    model = ToyVLM(_checked_dim(state, path))
    model.load_state_dict(_checked_state_dict(state["state_dict"], model, path))
    return ToyVLMEncoder(model, name=f"toy-vlm:{path.name}")


_REMAKE = "make one with `python systems/refer/training/train_toy_vlm.py` (in a clone of the repository)"


def _checked_dim(state, path: Path) -> int:
    """The checkpoint's embedding size, after checking its two keys."""
    if not isinstance(state, dict) or "dim" not in state or "state_dict" not in state:
        raise InputError(f"{display(path)}: not a toy VLM checkpoint (expected a dict with 'dim' and 'state_dict'); {_REMAKE}")
    dim = state["dim"]
    if isinstance(dim, torch.Tensor) and dim.numel() == 1 and not dim.is_floating_point():
        dim = int(dim)
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 4096:
        raise InputError(f"{display(path)}: 'dim' must be an integer in 1-4096, got {dim!r}; {_REMAKE}")
    if not isinstance(state["state_dict"], dict):
        raise InputError(f"{display(path)}: 'state_dict' must be a dict of tensors; {_REMAKE}")
    return dim


def _checked_state_dict(weights: dict, model: ToyVLM, path: Path) -> dict:
    """``weights`` if it has exactly the model's tensors, shapes and finite values; else the first problem."""
    expected = model.state_dict()
    for key, ref in expected.items():
        got = weights.get(key)
        if not isinstance(got, torch.Tensor):
            problem = "is missing" if got is None else f"is a {type(got).__name__}, not a tensor"
            raise InputError(f"{display(path)}: weight {key!r} {problem}; {_REMAKE}")
        if got.shape != ref.shape:
            raise InputError(f"{display(path)}: weight {key!r} has shape {tuple(got.shape)}, a dim-{model.words.embedding_dim} "
                             f"toy VLM needs {tuple(ref.shape)}; {_REMAKE}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise InputError(f"{display(path)}: weight {key!r} contains NaN or infinite values; {_REMAKE}")
    extra = [k for k in weights if k not in expected]
    if extra:
        raise InputError(f"{display(path)}: unexpected weight {extra[0]!r} (not a toy VLM checkpoint); {_REMAKE}")
    return weights


def manifest() -> dict:
    p = WEIGHTS.with_suffix(".json")
    return json.loads(p.read_text()) if p.is_file() else {}
