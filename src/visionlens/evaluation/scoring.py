"""The metrics of one method on one batch: one loop over the registry (:data:`visionlens.metrics.METRICS`),
each metric's ``compute`` given the same :class:`~visionlens.metrics.MetricContext`."""

from __future__ import annotations

import math

import torch

from .. import metrics as M
from ..models.zoo import ZooModel
from . import data as _data
from .data import Batch
from .explainers import ExplainedBatch


def metric_context(model: ZooModel, b: Batch, res: ExplainedBatch, step: int | None, batch_size: int,
                   scorer: torch.nn.Module | None = None, ends_cache: dict | None = None) -> M.MetricContext:
    """What the metrics of ``res`` on batch ``b`` are given. ``batch_size``: images of the batch
    (the scoring forward passes take :func:`~.data.scoring_batch` of it); ``scorer``: the module the
    perturbation metrics' forward passes use (default the model); ``ends_cache``: a dict shared by
    the methods of one batch (the map-independent ends of the softmax curves are scored once)."""
    x, maps = b.x.to(model.device), res.maps
    pre = model.preprocess
    return M.MetricContext(
        module=model.module, scorer=model.module if scorer is None else scorer, x=x, maps=maps, target=res.targets,
        labels=b.labels, mean=pre.mean, std=pre.std, explain_fn=res.explain_fn,
        masks=None if b.masks is None else b.masks.to(maps.device),
        boxes=None if b.boxes is None else b.boxes.to(maps.device),
        step=step, batch_size=_data.scoring_batch(batch_size, x[0].numel() * x.element_size()),
        confidence=res.confidence, correct=res.correct, ends_cache=ends_cache)


def _num(v) -> float | None:
    """A metric value for a record: NaN or infinity (undefined) becomes None."""
    v = float(v)
    return v if math.isfinite(v) else None


def batch_metrics(context: M.MetricContext, names: list[str], on_metric=None) -> dict[str, list]:
    """Per-image values of every metric of ``names`` that the context can give (a metric summarised
    from another one's values records those), in registry order; undefined values are None.
    ``on_metric(name)`` is called after each metric (for progress inside a batch)."""
    wanted = {M.METRICS[n].recorded_as for n in names if n in M.METRICS}
    out: dict[str, list] = {}
    for name, info in list(M.METRICS.items()):
        if name in wanted and info.compute is not None and all(context.has(need) for need in info.needs):
            out[name] = [_num(v) for v in info.compute(context).tolist()]
            if on_metric is not None:
                on_metric(name)
    return out
