"""How a method explains a batch, per kind of model, as an :class:`ExplainedBatch`: classifiers
(the predicted class, softmax confidence), and embedding models (spec 7.6) through a gallery of
training embeddings: similarity methods explain the similarity to each image's nearest gallery
image (:class:`RetrievalExplainer`), class-free flow methods the k-NN-predicted class
(:class:`KNNExplainer`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from .. import metrics as M
from ..errors import InputError
from ..models.zoo import ZOO, ZooModel

if TYPE_CHECKING:
    from ..core.memory_bank import MemoryBank


@dataclass
class ExplainedBatch:
    """One method's explanation of one batch, with what its scoring needs.

    ``maps`` (B, H, W); ``targets``: what was explained (class, or index of the reference in the
    batch); ``predicted``: the model's decision per image (CPU); ``explain_fn(x, target) -> maps``
    explains again (the sanity check); ``confidence``: what the perturbation metrics score (None:
    softmax probability); ``correct``: per image, whether the decision was right (None: target ==
    label); ``extra``: further per-image integers for the records (e.g. ``reference``)."""

    maps: torch.Tensor
    targets: torch.Tensor
    predicted: torch.Tensor
    explain_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    confidence: M.Confidence | None = None
    correct: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class ClassifierExplainer:
    """Classifiers: explain the predicted class; softmax confidence."""

    def __init__(self, method):
        self.method = method

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> ExplainedBatch:
        return self.explained(self.method(x))

    def explained(self, exp) -> ExplainedBatch:
        """The batch as the metrics take it, from the method's explanation of the predicted class."""
        target = exp.logits.argmax(1).detach()
        return ExplainedBatch(exp.maps.detach(), target, target.cpu(), lambda xx, t: self.method(xx, t).maps)


@dataclass
class EmbeddingReference:
    """The gallery for an embedding model: L2-normalised embeddings and labels of the first
    ``size`` training images of the synthetic world (the k-NN bank, and where references come from)."""

    bank: MemoryBank

    @classmethod
    def build(cls, model: ZooModel, spec: dict, size: int) -> "EmbeddingReference":
        from ..data.bank import build_bank

        if spec["kind"] != "world":
            raise InputError("embedding models are evaluated on the synthetic world (--data world[:split])")
        return cls(build_bank(model, world_split="train", n=size).to(model.device))

    def nearest(self, module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index, embedding) of each image's nearest gallery entry (cosine)."""
        from ..core.vit import model_output

        with torch.no_grad():
            e = torch.nn.functional.normalize(model_output(module(x)).float(), dim=1)
        idx = (e @ self.bank.features.T).argmax(1)
        return idx, self.bank.features[idx]


class RetrievalExplainer:
    """Similarity methods: why is the image similar to its nearest gallery image? Confidence: the
    clamped cosine to that (clean) reference; "correct": the neighbour has the image's class."""

    def __init__(self, method, module, reference: EmbeddingReference):
        self.method, self.module, self.reference = method, module, reference

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> ExplainedBatch:
        idx, refs = self.reference.nearest(self.module, x)
        exp = self.method.explain(x, refs)
        predicted = self.reference.bank.labels[idx].cpu()
        return ExplainedBatch(exp.maps.detach(), torch.arange(len(x), device=x.device), predicted,
                              lambda xx, t: self.method.explain(xx, refs).maps, M.SimilarityConfidence(refs),
                              predicted == labels, {"reference": idx.cpu()})


class KNNExplainer:
    """Class-free flow methods on a self-supervised model (DAAM with the bank, rollout): explain
    the k-NN-predicted class; confidence: its k-NN vote mass over the gallery."""

    def __init__(self, method, module, reference: EmbeddingReference):
        self.method, self.module = method, module
        self.confidence = M.KNNConfidence(reference.bank.features, reference.bank.labels)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> ExplainedBatch:
        from ..core.vit import model_output

        with torch.no_grad():
            target = self.confidence.predict(model_output(self.module(x)))
        exp = self.method(x, target)
        return ExplainedBatch(exp.maps.detach(), target, target.cpu(), lambda xx, t: self.method(xx, t).maps,
                              self.confidence)


def make_explainer(name: str, model: ZooModel, reference: EmbeddingReference):
    """The explainer for method ``name`` (``METHOD@LAYER`` allowed) on an embedding model."""
    from ..methods import METHODS, SIMILARITY_METHODS
    from ..pipeline import make_method, parse_method

    base, layer = parse_method(name)
    if base in SIMILARITY_METHODS:
        cls = SIMILARITY_METHODS[base]
        return RetrievalExplainer(cls(model.module, layer if layer is not None else model.layer), model.module, reference)
    if not getattr(METHODS[base], "uses_layer", True):
        return KNNExplainer(make_method(name, model, bank=reference.bank), model.module, reference)
    raise InputError(f"'{base}' needs class logits; on embedding model '{model.name}' use "
                     f"{', '.join(SIMILARITY_METHODS)} (similarity) or daam, rollout (k-NN)")


def build_explainers(model: ZooModel, methods: list[str], spec: dict, gallery_size: int,
                     compile: bool = False, task: str | None = None) -> tuple[dict, dict[str, Exception]]:
    """The explainer of each of ``methods`` on ``model``, and why each of the others cannot be made.
    An embedding model's gallery is built once (from ``spec``'s world; ``gallery_size`` images).
    ``task``: the model's (default: its zoo entry's, else a classifier)."""
    from ..pipeline import make_method

    if task is None:
        task = ZOO[model.name].task if model.name in ZOO else "classifier"
    reference = None
    if task.endswith("embedding") and methods:
        reference = EmbeddingReference.build(model, spec, gallery_size)
    live, failed = {}, {}
    for name in methods:
        try:
            live[name] = (make_explainer(name, model, reference) if reference is not None
                          else ClassifierExplainer(make_method(name, model)))
            if compile and hasattr(getattr(live[name], "method", None), "compile"):
                live[name].method.compile = True
        except Exception as err:  # noqa: BLE001 - reported as skipped, not a crash
            failed[name] = err
    return live, failed


def explain_together(explainers: dict, x: torch.Tensor, labels: torch.Tensor) -> dict[str, ExplainedBatch]:
    """The classifier explainers of ``explainers`` whose methods can share one forward (and one
    backward) pass (:func:`visionlens.methods.base.explain_many`: CAM-family methods), explained in
    that pass: ``{name: ExplainedBatch}`` of those; the others (and all, when fewer than two can
    share or their method names repeat) are left to explain on their own."""
    from ..methods.base import ClassActivationMethod, explain_many

    shared = {name: e for name, e in explainers.items() if type(e) is ClassifierExplainer
              and isinstance(e.method, ClassActivationMethod) and e.method.shares_pass}
    methods = [e.method for e in shared.values()]
    if len(methods) < 2 or len({m.name for m in methods}) < len(methods) or any(m.model is not methods[0].model
                                                                                   for m in methods):
        return {}
    results = explain_many(methods, x)
    return {name: e.explained(results[e.method.name]) for name, e in shared.items()}
