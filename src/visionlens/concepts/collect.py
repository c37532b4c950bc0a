"""Activations at one layer, streamed over batches, and the model's output from that layer on.

* :func:`collect_rows` streams images through the model and keeps every spatial position's channel
  vector as one row of ``G`` ((n h w) x c); above ``max_numel`` values it keeps a uniform random
  subset of rows (reservoir sampling), so memory stays bounded whatever the data size.
* :func:`head_output` runs the model with the layer's output replaced by a given tensor: the
  classifier ``C(.)`` "from layer l onwards", exact for any architecture (the images are run again
  up to the layer and its real output is discarded).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.hooks import ActivationCapture, preserved_model_state, warn_if_reused
from ..core.progress import Progress
from ..errors import LayerError

CALC_LIMIT = 10**8  # ICE's bound on the number of activation values used to fit a reducer


def layer_activations(model: nn.Module, name: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ``(B, c, h, w)`` output of ``module`` for the batch ``x`` (model state preserved)."""
    return layer_and_output(model, name, module, x)[0]


def layer_and_output(model: nn.Module, name: str, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, object]:
    """:func:`layer_activations` and the model's own output, from one forward pass."""
    with preserved_model_state(model), torch.no_grad(), ActivationCapture({name: module}) as cap:
        output = model(x)
        act = cap.get(name)
        warn_if_reused(name, cap.calls.get(name, 1))
    if act.dim() != 4:
        raise LayerError(f"layer '{name}' outputs shape {tuple(act.shape)}; concept discovery needs a (B, C, H, W) "
                         "convolutional feature map")
    return act, output


def to_rows(act: torch.Tensor) -> torch.Tensor:
    """``(B, c, h, w)`` -> ``(B h w, c)``."""
    return act.permute(0, 2, 3, 1).reshape(-1, act.shape[1])


def from_rows(rows: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`to_rows` for a batch of ``shape`` ``(B, ., h, w)``; keeps the row width."""
    b, _, h, w = shape
    return rows.reshape(b, h, w, rows.shape[1]).permute(0, 3, 1, 2).contiguous()


class RowReservoir:
    """Uniform sample of at most ``capacity`` rows from a stream (Algorithm R, seeded)."""

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity, self.seen = max(1, capacity), 0
        self.rows: torch.Tensor | None = None
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.detach().float().cpu()
        if self.rows is None:
            self.rows = rows.new_empty(0, rows.shape[1])
        free = self.capacity - len(self.rows)
        if free > 0:
            self.rows = torch.cat([self.rows, rows[:free]])
            self.seen += min(free, len(rows))
            rows = rows[free:]
        if len(rows) == 0:
            return
        # each later row i (1-based overall index t) replaces a random slot with probability capacity / t
        t = self.seen + torch.arange(1, len(rows) + 1, dtype=torch.float64)
        slots = (torch.rand(len(rows), generator=self.gen, dtype=torch.float64) * t).long()
        keep = slots < self.capacity
        for row, slot in zip(rows[keep], slots[keep]):  # in order, so later rows win ties
            self.rows[slot] = row
        self.seen += len(rows)


def collect_rows(model, name: str, module: nn.Module, source, items: list, batch_size: int = 32,
                 max_numel: int = CALC_LIMIT, seed: int = 0, progress: bool = True, label: str = "activations"):
    """Rows of ``G`` for ``items`` of ``source``; returns ``(rows, total_rows_seen)``."""
    bar = Progress(len(items), label, enabled=progress)
    reservoir: RowReservoir | None = None
    device = next(iter(model.parameters()), torch.empty(0)).device
    for start in range(0, len(items), batch_size):
        batch = source.load(items[start:start + batch_size])
        act = layer_activations(model, name, module, batch["x"].to(device))
        if reservoir is None:
            reservoir = RowReservoir(max(1, max_numel // act.shape[1]), seed)
        reservoir.add(to_rows(act))
        bar.update(len(batch["views"]))
    return reservoir.rows, reservoir.seen


def head_output(model: nn.Module, module: nn.Module, x: torch.Tensor, replacement: torch.Tensor,
                grad: bool = False) -> torch.Tensor:
    """Model output for ``x`` with ``module``'s output replaced by ``replacement``. With ``grad``
    the graph from ``replacement`` to the output is kept (nothing before the layer is recorded)."""

    def hook(mod, inputs, output):
        if output.shape != replacement.shape:
            raise LayerError(f"replacement shape {tuple(replacement.shape)} does not match the layer output "
                             f"{tuple(output.shape)}")
        torch.set_grad_enabled(grad)  # restored when the caller's no_grad block exits
        return replacement.to(output.dtype)

    with preserved_model_state(model), torch.no_grad():
        handle = module.register_forward_hook(hook)
        try:
            out = model(x)
        finally:
            handle.remove()
    return out
