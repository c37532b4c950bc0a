"""The metrics of the methods on one batch: one loop over the registry (:data:`visionlens.metrics.METRICS`),
each metric's ``compute`` given the same :class:`~visionlens.metrics.MetricContext`; deletion and
insertion of every method are scored together first (:func:`joint_curves`), in full forward passes
across images, steps, modes and methods."""

from __future__ import annotations

import math

import torch

from .. import metrics as M
from ..metrics import faithfulness as F
from ..models.zoo import ZooModel
from . import data as _data
from .data import Batch
from .explainers import ExplainedBatch

CURVES = ("deletion", "insertion")


def metric_context(model: ZooModel, b: Batch, res: ExplainedBatch, step: int | None, batch_size: int,
                   scorer: torch.nn.Module | None = None, ends_cache: dict | None = None,
                   scoring_batch: int | None = None, seed: int = 0) -> M.MetricContext:
    """What the metrics of ``res`` on batch ``b`` are given. ``scoring_batch``: images per forward
    pass of the scoring (default :func:`~.data.scoring_batch` of ``batch_size``, the images of the
    batch); ``scorer``: the module the perturbation metrics' forward passes use (default the model);
    ``ends_cache``: a dict shared by the methods of one batch (the map-independent ends of the
    softmax curves are scored once); ``seed``: the randomisation metric's random weights."""
    x, maps = b.x.to(model.device), res.maps
    pre = model.preprocess
    if scoring_batch is None:
        scoring_batch = _data.scoring_batch(batch_size, x[0].numel() * x.element_size())
    return M.MetricContext(
        module=model.module, scorer=model.module if scorer is None else scorer, x=x, maps=maps, target=res.targets,
        labels=b.labels, mean=pre.mean, std=pre.std, explain_fn=res.explain_fn,
        masks=None if b.masks is None else b.masks.to(maps.device),
        boxes=None if b.boxes is None else b.boxes.to(maps.device),
        step=step, batch_size=scoring_batch, confidence=res.confidence, correct=res.correct, ends_cache=ends_cache,
        seed=seed)


def _num(v) -> float | None:
    """A metric value for a record: NaN or infinity (undefined) becomes None."""
    v = float(v)
    return v if math.isfinite(v) else None


def joint_names(names: list[str], context: M.MetricContext) -> list[str]:
    """The deletion/insertion metrics of ``names`` that :func:`joint_curves` can score for
    ``context``: a softmax confidence, and the registry's own compute functions."""
    if not (context.confidence is None or type(context.confidence) is M.Confidence):
        return []
    return [n for n in CURVES if n in names and M.METRICS.get(n) is not None
            and getattr(M.METRICS[n].compute, "__module__", None) == M.__name__]


def joint_curves(contexts: list[M.MetricContext], names: list[str], on_chunk=None) -> list[dict[str, torch.Tensor]]:
    """Deletion and insertion of every context (one per method, same images) scored together:
    per context, ``{metric: (B,) AUC}`` of :func:`joint_names` (empty for a context it cannot
    score), with its curves kept in ``shared["curves"]`` as the registry's compute keeps them.
    ``on_chunk(images)`` after each forward pass."""
    given: list[dict[str, torch.Tensor]] = [{} for _ in contexts]
    able = [i for i, c in enumerate(contexts) if joint_names(names, c)]
    if not able:
        return given
    first = contexts[able[0]]
    curves = F.joint_causal_curves(first.scorer, first.x, [contexts[i].maps for i in able],
                                   [contexts[i].target for i in able], step=first.step,
                                   batch_size=first.batch_size, on_chunk=on_chunk,
                                   modes=tuple(joint_names(names, first)))
    for i, both in zip(able, curves):
        wanted = joint_names(names, contexts[i])
        for mode in wanted:
            contexts[i].shared.setdefault("curves", {})[mode] = both[mode].detach().cpu()
        given[i] = {mode: M.trapezoid_auc(both[mode]) for mode in wanted}
    return given


def batch_metrics(context: M.MetricContext, names: list[str], on_metric=None,
                  given: dict[str, torch.Tensor] | None = None) -> dict[str, list]:
    """Per-image values of every metric of ``names`` that the context can give (a metric summarised
    from another one's values records those), in registry order; undefined values are None.
    ``given``: values computed already (:func:`joint_curves`). ``on_metric(name)`` is called after
    each metric computed here (for progress inside a batch)."""
    wanted = {M.METRICS[n].recorded_as for n in names if n in M.METRICS}
    given = given or {}
    out: dict[str, list] = {}
    for name, info in list(M.METRICS.items()):
        if name in wanted and info.compute is not None and all(context.has(need) for need in info.needs):
            values = given[name] if name in given else info.compute(context)
            out[name] = [_num(v) for v in values.tolist()]
            if on_metric is not None and name not in given:
                on_metric(name)
    return out
