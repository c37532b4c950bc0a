"""Per-image proposals and region features, computed once and cached.

``RegionCache(proposer, encoder, folder=None).regions(image, sample)`` returns the image's mask
proposals and their (global, local) features. Every sentence about an image reuses them, so SAM
and the CLIP image side run once per image, not once per sentence:

* in memory: the last ``memory_images`` images of the run;
* on disk (``folder``, the CLI's ``--cache DIR``): one ``regions-<key>.pt`` per image, written
  atomically; the key hashes the image's pixels, the encoder's identity and the proposer's
  identity (weights and filter settings). A proposer whose masks depend on the sample (ground
  truth, files) has no identity: its masks are recomputed and hashed into the key instead. A
  corrupt cache file is reported in one line and recomputed.

Region features are encoded ``batch`` masks at a time (:func:`encode_regions_batched`), so the
encoder's memory does not grow with the number of proposals beyond one batch.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visionlens.checks import check_number
from visionlens.errors import VisionlensError, one_line

CACHE_VERSION = 1


@dataclass
class Regions:
    """One image's proposals ``masks`` (N, H, W) bool and their unit features (N, D) each."""

    masks: torch.Tensor
    f_global: torch.Tensor
    f_local: torch.Tensor


def encode_regions_batched(encoder, image: torch.Tensor, masks: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder.encode_regions`` on at most ``batch`` masks at a time, concatenated."""
    check_number("the region batch size", batch, minimum=1, integer=True)
    parts = [encoder.encode_regions(image, masks[s:s + batch]) for s in range(0, len(masks), batch)]
    return torch.cat([g for g, _ in parts]), torch.cat([loc for _, loc in parts])


def content_hash(*parts) -> str:
    """SHA-256 (32 hex digits) of tensors, arrays and strings, with their shapes and dtypes."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            digest.update(b"s" + part.encode())
            continue
        arr = np.ascontiguousarray(part.detach().cpu().numpy() if isinstance(part, torch.Tensor) else np.asarray(part))
        digest.update(f"a{arr.shape}{arr.dtype}".encode() + arr.tobytes())
    return digest.hexdigest()[:32]


class RegionCache:
    """Proposals + region features per image; ``stats`` counts memory hits, disk hits and
    computations; ``on_warning(message)`` receives the one-line note on a corrupt cache file."""

    def __init__(self, proposer, encoder, folder: str | Path | None = None, batch: int = 32,
                 memory_images: int = 2, on_warning=None):
        check_number("the region batch size", batch, minimum=1, integer=True)
        self.proposer, self.encoder, self.batch = proposer, encoder, int(batch)
        self.folder = Path(folder) if folder is not None else None
        self.memory: OrderedDict[str, Regions] = OrderedDict()
        self.memory_images, self.on_warning = memory_images, on_warning
        self.stats = {"memory": 0, "disk": 0, "computed": 0}

    def regions(self, image: torch.Tensor, sample=None) -> Regions:
        proposer_id = getattr(self.proposer, "identity", None)
        masks = None if proposer_id else self.proposer.propose(image, sample)
        key = content_hash(f"v{CACHE_VERSION}", image.float(), getattr(self.encoder, "identity", self.encoder.name),
                           proposer_id or "masks", *(() if masks is None else (masks.bool(),)))
        found = self._lookup(key)
        if found is None:
            found = self._compute(image, sample, masks)
            self._store(key, found)
        self.memory[key] = found
        self.memory.move_to_end(key)
        while len(self.memory) > self.memory_images:
            self.memory.popitem(last=False)
        return found

    def _compute(self, image, sample, masks) -> Regions:
        self.stats["computed"] += 1
        masks = (self.proposer.propose(image, sample) if masks is None else masks).bool()
        f_global, f_local = encode_regions_batched(self.encoder, image, masks, self.batch)
        return Regions(masks, f_global, f_local)

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"regions-{key}.pt"

    def _lookup(self, key: str) -> Regions | None:
        if key in self.memory:
            self.stats["memory"] += 1
            return self.memory[key]
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            found = _read(path)
        except (VisionlensError, KeyError, TypeError, ValueError, RuntimeError) as err:
            if self.on_warning is not None:
                self.on_warning(f"region cache {path} is unreadable ({one_line(err)[:120]}); recomputing it")
            return None
        self.stats["disk"] += 1
        return found

    def _store(self, key: str, regions: Regions) -> None:
        path = self._path(key)
        if path is None:
            return
        from visionlens.io import save_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        m = regions.masks.numpy()
        state = {"version": CACHE_VERSION, "shape": torch.tensor(m.shape),
                 "masks": torch.from_numpy(np.packbits(m.reshape(len(m), -1), axis=1)),
                 "f_global": regions.f_global.contiguous(), "f_local": regions.f_local.contiguous()}
        save_atomic(lambda tmp: torch.save(state, tmp), path)


def _read(path: Path) -> Regions:
    """A cache file back into :class:`Regions`; any damage raises (the caller recomputes)."""
    from visionlens.io import load_checkpoint

    state = load_checkpoint(path, "region cache")
    if state["version"] != CACHE_VERSION:
        raise ValueError(f"cache version {state['version']}, expected {CACHE_VERSION}")
    n, h, w = (int(v) for v in state["shape"])
    bits = state["masks"].numpy()
    masks = torch.from_numpy(np.unpackbits(bits, axis=1, count=h * w).reshape(n, h, w).astype(bool))
    f_global, f_local = state["f_global"], state["f_local"]
    if len(f_global) != n or f_local.shape != f_global.shape or not torch.isfinite(f_global).all():
        raise ValueError("features do not match the masks")
    return Regions(masks, f_global.float(), f_local.float())
