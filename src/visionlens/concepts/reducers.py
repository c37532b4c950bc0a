"""Reducers: map each activation vector ``a`` (c channels) to ``c'`` concept scores and back.

One interface for every reducer: ``fit(G)`` on rows ``G`` (samples x channels), ``transform(G)``
-> concept scores ``S``, ``decode(S)`` -> reconstruction ``A'``, ``concept_vectors()`` -> the
CAV matrix ``(c', c)``, and ``save(path)`` / :func:`~visionlens.concepts.factory.load_reducer` (plain tensors, loaded with
``weights_only=True``). ``IdentityReducer`` (``S = A``) is the exact-reconstruction reference;
``NMFReducer`` is the ICE baseline (torch multiplicative updates); the TraNCE VAE lives in
``vae.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError

REDUCERS: dict[str, type] = {}


def register_reducer(cls):
    REDUCERS[cls.kind] = cls
    return cls


class Reducer:
    """Base class. Subclasses set ``kind`` and implement ``fit``, ``transform``, ``decode`` and
    ``_state`` / ``_load_state``; ``config`` holds the constructor arguments (ints/floats/str)."""

    kind = "base"

    def __init__(self, **config):
        self.config = config
        self.n_channels: int | None = None

    @property
    def n_concepts(self) -> int:
        return int(self.config["n_concepts"])

    def fit(self, rows: torch.Tensor, progress: bool = False) -> "Reducer":
        raise NotImplementedError

    def transform(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def codes(self, rows: torch.Tensor) -> torch.Tensor:
        """The code that :meth:`decode` inverts (the concept scores unless a reducer clamps them)."""
        return self.transform(rows)

    def decode(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reconstruct(self, rows: torch.Tensor) -> torch.Tensor:
        """``A' = decode(codes(A))``."""
        return self.decode(self.codes(rows))

    def concept_vectors(self) -> torch.Tensor:
        """CAV matrix ``(c', c)``: the change of ``A'`` per unit of each concept score."""
        raise NotImplementedError

    def _state(self) -> dict:
        raise NotImplementedError

    def _load_state(self, state: dict) -> None:
        raise NotImplementedError

    def _check_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(rows) or rows.dim() != 2:
            raise InputError("reducer input must be a 2-D tensor (samples x channels)")
        if self.n_channels is not None and rows.shape[1] != self.n_channels:
            raise InputError(f"reducer was fitted on {self.n_channels} channels, got {rows.shape[1]}")
        if not torch.isfinite(rows).all():
            raise InputError("activations contain NaN or infinite values")
        return rows

    def save(self, path: str | Path) -> Path:
        if self.n_channels is None:
            raise InputError("fit the reducer before saving it")
        path = Path(path)
        blob = {"kind": self.kind, "config": dict(self.config), "n_channels": int(self.n_channels),
                "state": {k: v.detach().cpu().clone() for k, v in self._state().items()}}
        torch.save(blob, path)
        return path


@register_reducer
class IdentityReducer(Reducer):
    """``S = A``, ``A' = S``: every channel is a concept (``n_concepts`` is the channel count)."""

    kind = "identity"

    def __init__(self, n_concepts: int = 0, **config):
        super().__init__(n_concepts=n_concepts, **config)

    def fit(self, rows, progress=False):
        rows = self._check_rows(rows)
        self.n_channels = rows.shape[1]
        self.config["n_concepts"] = self.n_channels
        return self

    def transform(self, rows):
        return self._check_rows(rows).clone()

    def decode(self, scores):
        return scores

    def concept_vectors(self):
        return torch.eye(self.n_channels)

    def _state(self):
        return {}

    def _load_state(self, state):
        pass


@register_reducer
class NMFReducer(Reducer):
    """Non-negative matrix factorisation ``G ~ S P`` on the Frobenius loss, solved by HALS
    (hierarchical alternating least squares, the coordinate-descent family of sklearn's default
    ``solver='cd'``). ``components`` ``P`` is ``(c', c)``; new rows are transformed by the same
    updates with ``P`` fixed."""

    kind = "nmf"

    def __init__(self, n_concepts: int = 10, max_iter: int = 200, tol: float = 1e-5, seed: int = 0):
        super().__init__(n_concepts=n_concepts, max_iter=max_iter, tol=tol, seed=seed)
        self.components: torch.Tensor | None = None

    def _init(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """NNDSVDa (Boutsidis & Gallopoulos 2008, sklearn's default for ``cd``): the positive or
        negative parts of the leading singular vectors; zeros filled with the data mean."""
        k = self.n_concepts
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.config["seed"]))
            u, sv, v = torch.svd_lowrank(rows, q=min(k + 10, *rows.shape), niter=6)
        scores, comps = rows.new_zeros(rows.shape[0], k), rows.new_zeros(k, rows.shape[1])
        for j in range(min(k, len(sv))):
            x, y = u[:, j], v[:, j]
            if j == 0:
                scores[:, 0], comps[0] = sv[0].sqrt() * x.abs(), sv[0].sqrt() * y.abs()
                continue
            (xp, xn), (yp, yn) = (x.clamp_min(0), (-x).clamp_min(0)), (y.clamp_min(0), (-y).clamp_min(0))
            mp, mn = xp.norm() * yp.norm(), xn.norm() * yn.norm()
            a, b, m = (xp, yp, mp) if mp > mn else (xn, yn, mn)
            scale = (sv[j] * m).sqrt()
            scores[:, j] = scale * a / a.norm().clamp_min(1e-12)
            comps[j] = scale * b / b.norm().clamp_min(1e-12)
        fill = rows.mean()
        return torch.where(scores > 0, scores, fill), torch.where(comps > 0, comps, fill)

    @staticmethod
    def _hals_scores(rows: torch.Tensor, scores: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """One HALS sweep over the columns of ``scores`` for ``rows ~ scores @ p``."""
        ppt, num = p @ p.T, rows @ p.T
        for j in range(p.shape[0]):
            step = (num[:, j] - scores @ ppt[:, j]) / ppt[j, j].clamp_min(1e-12)
            scores[:, j] = (scores[:, j] + step).clamp_min(0)
        return scores

    def fit(self, rows, progress=False):
        from ..core.progress import Progress

        rows = self._check_rows(rows).float()
        if (rows < 0).any():
            raise InputError("NMF needs non-negative activations; choose a layer after a ReLU")
        self.n_channels = rows.shape[1]
        scores, p = self._init(rows)
        total = int(self.config["max_iter"])
        bar = Progress(total, "nmf iterations", enabled=progress, unit="it")
        prev = None
        for it in range(total):
            p = self._hals_scores(rows.T, p.T.contiguous(), scores.T).T.contiguous()
            scores = self._hals_scores(rows, scores, p)
            bar.update(1)
            if it % 5 == 4:
                err = float(torch.linalg.norm(rows - scores @ p))
                if prev is not None and (prev - err) / max(prev, 1e-12) < float(self.config["tol"]):
                    bar.update(total - it - 1)
                    break
                prev = err
        self.components = p
        return self

    def transform(self, rows):
        rows = self._check_rows(rows)
        rows = rows if rows.dtype in (torch.float32, torch.float64) else rows.float()
        p = self.components.to(rows.dtype)
        # least-squares start projected to >= 0, then HALS sweeps with the components fixed
        scores = torch.linalg.lstsq(p.T, rows.T).solution.T.clamp_min(0).contiguous()
        for _ in range(100):
            before = scores.clone()
            scores = self._hals_scores(rows, scores, p)
            if float((scores - before).abs().max()) <= 1e-7 * float(scores.abs().max().clamp_min(1e-12)):
                break
        return scores

    def decode(self, scores):
        return scores @ self.components.to(scores.dtype)

    def concept_vectors(self):
        return self.components.clone()

    def _state(self):
        return {"components": self.components}

    def _load_state(self, state):
        self.components = state["components"]
