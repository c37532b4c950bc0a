"""The one method contract and the kinds built on it.

:class:`Method` does the steps every method shares: the model check, the input check (a finite,
non-empty ``(B, C, H, W)`` float tensor), the move to the model's device and the model-state
guard (modes, ``requires_grad`` and hooks restored on exit, also after an error), and one
:class:`~visionlens.errors.FlatMapWarning` per call when a map is all zero or constant (it names
the layer and the usual one); a method supplies only :meth:`Method.explain`, its own step. The kinds:

* :class:`ClassActivationMethod` (CAM family): forward with a captured layer, resolve the target,
  channel weights (the method's step), weighted sum, post-process. Methods at one layer share
  one forward (and backward) pass in :func:`explain_many`;
* :class:`FlowMethod`: one map per layer or block (DAAM, rollout, NAFlow), from ``terms``;
* similarity methods (:mod:`visionlens.methods.similarity`): maps for both images of a pair.
"""

from __future__ import annotations

import contextlib
import math
import re

from typing import Iterator, Sequence

import torch
from torch import nn

from ..core.hooks import ActivationCapture, autograd_ready, preserved_model_state, reused_layer_hint, warn_if_reused
from ..core.layers import check_spatial, eager_module, find_last_spatial_layer, model_device, resolve_layer
from ..core.result import Explanation, constant_maps, normalize_maps
from ..core.targets import ClassTargets, Target, resolve_targets, wants_raw_output
from ..core.vit import (AmbiguousOutputError, check_output_finite, find_swin, find_vit, model_output, recognised_vit,
                        spatial_transform)
from ..errors import FlatMapWarning, InputError, LayerError, VisionlensError, warn_at_caller


def check_input(x: torch.Tensor, defer_finite: bool = False) -> torch.Tensor | None:
    """Raise an :class:`InputError` unless ``x`` is a finite, non-empty ``(B, C, H, W)`` float tensor.

    With ``defer_finite`` (for GPU tensors, where reading the answer would stall the device
    mid-computation) the finiteness test is returned as a tensor for :func:`raise_if_not_finite`."""
    if not torch.is_tensor(x):
        raise InputError(f"input must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}; preprocess the "
                         "images as the model expects (a visionlens model: model.preprocess(image)[None])")
    if x.dim() != 4:
        raise InputError(f"input must have shape (B, C, H, W), got {tuple(x.shape)}; add a batch dimension with x[None]")
    if x.shape[0] == 0:
        raise InputError("input batch is empty")
    if not x.dtype.is_floating_point:
        raise InputError(f"input must be a float tensor (preprocessed image), got {x.dtype}; convert and normalise it "
                         "as the model expects (e.g. x.float() / 255, then the model's mean and std)")
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if defer_finite:
        return finite
    raise_if_not_finite(finite)
    return None


def raise_if_not_finite(finite: torch.Tensor) -> None:
    """The one-line error for NaN or infinite inputs, naming the batch positions."""
    if not bool(finite.all()):
        bad = (~finite).nonzero()[:, 0].tolist()
        raise InputError(f"input contains NaN or infinite values (batch positions {bad[:10]}); check the preprocessing")


def default_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The layer explained when none is given: the last block's pre-attention norm (tokens,
    reshaped to the patch grid) for a recognised ViT, DINOv2 or Swin, the backbone's last block for
    a torchvision detector or segmenter (its last spatial layer is in a head: per-region crops, or
    one level of a shared head), else the last spatial layer."""
    from ..models.hub import dense_default_layer, dense_task

    task = dense_task(model)
    if task is not None:
        return dense_default_layer(model, task)
    swin = find_swin(model)
    if swin is not None:
        return swin.norms[-1]
    try:
        return find_vit(model).blocks[-1].norm1
    except LayerError:
        return find_last_spatial_layer(model, x)


_CHANNELS_ERROR = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels")


@contextlib.contextmanager
def input_mismatch_as_input_error(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Turn PyTorch's error for an input whose dtype is not the model's (a float64 array from
    NumPy, a float16 batch for a float32 model), or whose channels are not what a convolution
    takes (an RGB batch for a grayscale model), into one :class:`InputError` line that says how to
    fix it. Models that convert their input themselves (Hugging Face's) keep working."""
    try:
        yield
    except RuntimeError as err:
        channels = _CHANNELS_ERROR.search(str(err))
        if channels is not None:
            want, got = channels.groups()
            hint = " (a grayscale model: convert the images to 'L')" if want == "1" else ""
            if x.dim() == 4 and x.shape[-1] == int(want) and x.shape[1] != int(want):
                hint = "; the batch looks channels-last (B, H, W, C): give x.permute(0, 3, 1, 2)"
            raise InputError(f"the input has {got} channels but a convolution of the model takes {want}; give "
                             f"the model {want}-channel images{hint}") from err
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        if dtype is None or x.dtype == dtype or "type" not in str(err):
            raise
        raise InputError(f"the input is {x.dtype} but the model's weights are {dtype}; convert the input with "
                         f"x.to({dtype}) (or the model with model.to({x.dtype}))") from err


class Method:
    """The contract: ``Method(model, layer=None)(x, target=None) -> Explanation``.

    ``x`` is a preprocessed ``(B, C, H, W)`` batch; ``target`` a class index per image (or one
    for all, or ``(B, K)`` for methods with ``multi_target``), ``None`` for the predicted class,
    or a callable on the model's output. Class attributes say what a method can do: ``kind``
    (``cam``, ``flow``), ``uses_layer`` (``False``: it uses every block), ``uses_bank`` (a k-NN
    memory bank), ``multi_target``, ``shares_pass`` (see :func:`explain_many`)."""

    name = "method"
    kind = "cam"
    uses_layer = True
    uses_bank = False
    multi_target = False
    shares_pass = False

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None):
        self.model = eager_module(model)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The checked input on the model's device."""
        check_input(x)
        return autograd_ready(x.to(model_device(self.model)))

    def __call__(self, x: torch.Tensor, target: Target = None) -> Explanation:
        result = self.run(x, target)
        warn_if_flat({self.name: result}, self.model, x)
        return result

    def run(self, x: torch.Tensor, target: Target = None) -> Explanation:
        """The explanation, without the flat-map check of :meth:`__call__`."""
        x = self.prepare(x)
        with preserved_model_state(self.model), input_mismatch_as_input_error(self.model, x):
            return self.explain(x, target)

    def explain(self, x: torch.Tensor, target: Target) -> Explanation:
        """The method's own step, on a checked input, inside the model-state guard."""
        raise NotImplementedError


class FlowMethod(Method):
    """Methods with one map per layer or block: ``terms(x, target)`` computes the per-layer terms
    (public, for analysis); :meth:`flow_explanation` builds the result from them."""

    kind = "flow"
    uses_layer = False

    def terms(self, x: torch.Tensor, target: Target = None):
        """The method's per-layer terms for ``x`` (checked, on the model's device, model guarded)."""
        x = self.prepare(x)
        with preserved_model_state(self.model):
            return self.compute_terms(x, target)

    def compute_terms(self, x: torch.Tensor, target: Target):
        raise NotImplementedError

    def explain(self, x: torch.Tensor, target: Target) -> Explanation:
        return self.flow_explanation(x, self.compute_terms(x, target))

    def flow_explanation(self, x: torch.Tensor, terms) -> Explanation:
        raise NotImplementedError


class ViTFlowMethod(FlowMethod):
    """A flow through every block of a ViT (DAAM, rollout): ``layer`` may only name the blocks.
    ``reads_class_row``: the method follows the [class] token's attention row, so a ViT whose head
    reads no [class] token (it averages the patch tokens) is refused."""

    reads_class_row = False

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None):
        super().__init__(model)
        model = self.model  # a compiled model's eager module
        self.adapter = find_vit(model)
        if self.reads_class_row and not self.adapter.has_class_token:
            raise LayerError(f"{type(model).__name__} does not classify from a [class] token (its head reads the patch "
                             f"tokens' mean), and {self.name} follows the [class] token's attention row; use attnlrp, "
                             "legrad or gradcam")
        if layer is not None:
            name, _ = resolve_layer(model, layer)
            if name != self.adapter.blocks_name:
                raise LayerError(f"{self.name} uses every block of '{self.adapter.blocks_name}', not layer '{name}'; "
                                 "leave the layer out")

    @property
    def layer(self) -> str:
        return f"{self.adapter.blocks_name}[0:{len(self.adapter.blocks)}]"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = super().prepare(x)
        self.adapter.check_input(x)
        return x


class ClassActivationMethod(Method):
    """The CAM family: ``layer`` is a module, a dotted name, or ``None`` for the last spatial
    layer. Subclasses set ``name`` and ``needs_gradients`` and implement :meth:`channel_weights`
    (or, with ``shares_pass = False``, their own :meth:`explain`)."""

    name = "base"
    needs_gradients = False
    relu = True
    multi_target = True  # accepts (B, K) targets: maps (B, K, H, W)
    shares_pass = True  # computes its weights from the shared forward (and backward) pass of explain_many
    replaces_layer_output = False  # re-runs the model with the layer's output replaced (Ablation-CAM)

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None):
        super().__init__(model)
        self.layer = layer
        self._resolved: tuple[str, nn.Module] | None = None
        if layer is not None:
            self._resolved = resolve_layer(self.model, layer)

    def resolve(self, x: torch.Tensor) -> tuple[str, nn.Module]:
        """The ``(name, module)`` explained; found automatically (once) when ``layer`` is None."""
        if self._resolved is None:
            self._resolved = resolve_layer(self.model, default_layer(self.model, x))
        return self._resolved

    def channel_weights(
        self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor, capture: ActivationCapture
    ) -> torch.Tensor:
        """``(B, K)`` weights of the ``K`` channels of ``activation`` (``(B, K, h, w)``), or
        ``(B, K, h, w)`` weights per position for pixel-wise methods (LayerCAM, HiResCAM)."""
        raise NotImplementedError

    @staticmethod
    def combine(weights: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        """The raw map ``sum_k w_k A^k`` (``w`` per channel, or per channel and position)."""
        if weights.dim() == 4:
            return (weights * activation).sum(dim=1)
        return torch.einsum("bk,bkhw->bhw", weights, activation)

    def __call__(self, x: torch.Tensor, target: Target = None) -> Explanation:
        if not self.shares_pass:
            return super().__call__(x, target)
        return explain_many([self], x, target)[self.name]

    def run(self, x: torch.Tensor, target: Target = None) -> Explanation:
        if not self.shares_pass:
            return super().run(x, target)
        return _explain_shared([self], self.model, x, target)[self.name]


class PerturbationMethod(ClassActivationMethod):
    """Base of methods that score extra forward passes (Score-CAM, Ablation-CAM): no gradients,
    one class per image, and ``batch_size`` perturbed inputs per pass (the memory bound)."""

    needs_gradients = False
    multi_target = False

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, batch_size: int = 64):
        super().__init__(model, layer)
        if batch_size < 1:
            raise InputError("batch_size must be at least 1")
        self.batch_size = batch_size

    @staticmethod
    def target_scores(out, image: torch.Tensor, targets: ClassTargets, target) -> torch.Tensor:
        """Scores of perturbed copies of images ``image`` from the model's raw output ``out``:
        their class logit (of the output unwrapped by :func:`unwrap_output`, e.g. ``.logits`` of a
        Hugging Face output), or a callable target (called on the raw output where
        :func:`resolve_targets` would)."""
        logits = unwrap_output(out, fallback=out)
        if targets.indices is None:
            if hasattr(target, "select"):  # a target with per-image data (BoxTarget, SegmentationTarget)
                target = target.select(image)
            return target(out if wants_raw_output(target) else logits)
        if not torch.is_tensor(logits):
            raise InputError(f"class targets need logits, and the model's output is {type(out).__name__}; "
                             "pass a callable target")
        return logits.gather(1, targets.indices[image][:, None])[:, 0]


def explain_many(methods: Sequence, x: torch.Tensor, target: Target = None) -> dict[str, Explanation]:
    """Several methods on the same model: ``{method.name: Explanation}``. The CAM-family methods
    at one layer share one forward pass and (for the gradient methods) one backward pass; a
    method that needs its own pass (``shares_pass = False``, e.g. Relevance-CAM's LRP pass, or a
    flow method) runs on its own."""
    if not methods:
        raise InputError("no methods given")
    model = methods[0].model
    if any(m.model is not model for m in methods):
        raise InputError("explain_many needs methods built on the same model")
    names = [m.name for m in methods]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:  # the result is one Explanation per name
        raise InputError(f"explain_many got two methods named '{twice}'; call it once per {twice} setting")
    shared = [m for m in methods if isinstance(m, ClassActivationMethod) and m.shares_pass]
    results = {m.name: m.run(x, target) for m in methods if m not in shared}
    if shared:
        results |= _explain_shared(shared, model, x, target)
    results = {m.name: results[m.name] for m in methods}
    warn_if_flat(results, model, x)
    return results


def _only_negative(result: Explanation, flat: torch.Tensor) -> bool:
    """Whether every flat map of ``result`` comes from a raw map that varies, but is negative
    everywhere (so the ReLU left nothing)."""
    raw = result.raw
    if not torch.is_tensor(raw) or raw.dim() < 3 or raw.shape[:-2].numel() != flat.numel():
        return False
    varies = ~constant_maps(raw)
    negative = raw.detach().flatten(-2).flatten(0, -2).amax(dim=1) <= 0
    return bool((varies & negative)[flat].all())


def warn_if_flat(results: dict[str, Explanation], model: nn.Module, x: torch.Tensor, advice=None) -> None:
    """One :class:`FlatMapWarning` for the call when any map is all zero or constant: it names
    the methods and layer, why (negative everywhere, or constant) and what to try (the usual
    layer, another class, or checking the model and target). ``advice(negative) -> str`` replaces
    the class-score advice (the similarity methods give their own)."""
    flat = {name: constant_maps(e.maps) for name, e in results.items() if torch.is_tensor(e.maps) and e.maps.dim() >= 3}
    flat = {name: f for name, f in flat.items() if bool(f.any())}
    if not flat:
        return
    first = results[next(iter(flat))]
    layers = {results[name].layer for name in flat}
    where = f" at layer '{first.layer}'" if len(layers) == 1 else ""
    counts = ", ".join(f"{name}{'' if where else f' at layer {results[name].layer!r}'} {int(f.sum())} of {f.numel()}"
                       for name, f in flat.items())
    negative = all(_only_negative(results[name], f) for name, f in flat.items())
    why = advice(negative) if advice is not None else _flat_advice(model, x, first, negative)
    warning = FlatMapWarning(f"all-zero (constant) maps{where} ({counts} maps): {why}")
    per_image = torch.stack([f.reshape(len(results[name].maps), -1).any(1) for name, f in flat.items()]).any(0)
    warning.images = per_image.nonzero().flatten().tolist()  # which images of the batch (a command names them)
    warn_at_caller(warning)


def _check_layer_calls(methods, name: str, calls: int) -> None:
    """A layer the forward pass runs several times: a :class:`LayerError` for a method that replaces
    its output (which call?), else a warning that the maps are of its last call."""
    if calls > 1:
        for m in methods:
            if m.replaces_layer_output:
                raise LayerError(f"{m.name} replaces the output of layer '{name}', which runs {calls} times in one "
                                 f"forward pass (a module the model reuses); choose a module that runs once"
                                 f"{reused_layer_hint(name)}")
        warn_if_reused(name, calls)


def _flat_advice(model: nn.Module, x: torch.Tensor, result: Explanation, negative: bool) -> str:
    """What to try after a flat map: the usual layer, another class, or checking the model and target."""
    usual = None
    if result.flow is None:
        try:
            usual = resolve_layer(model, default_layer(model, x))[0]
        except VisionlensError:
            pass
    other = f"; try the usual layer '{usual}'" if usual is not None and usual != result.layer else ""
    if negative:
        return f"the map is negative everywhere (this layer shows only evidence against the target){other}"
    if other:
        return f"the target score does not vary over this layer's positions{other}"
    return ("the target score does not vary with the input's regions here (e.g. an all-zero classifier head); "
            "check the model's weights and the target")


def _explain_shared(methods, model, x, target) -> dict[str, Explanation]:
    finite = check_input(x, defer_finite=torch.is_tensor(x) and x.is_cuda)  # on a GPU, read it once at the end
    vit = recognised_vit(model)
    if vit is not None:
        vit.check_input(x)  # a fixed patch grid: one line, not the backbone's own assertion
    x = autograd_ready(x.to(model_device(model)))
    try:
        with input_mismatch_as_input_error(model, x):
            results = _explain_many(methods, model, x, target)
    except VisionlensError:
        if finite is not None:
            raise_if_not_finite(finite)  # a NaN input explains the failure better
        raise
    if finite is not None:
        raise_if_not_finite(finite)
    return results


def _explain_many(methods, model, x, target) -> dict[str, Explanation]:
    first = methods[0]
    with preserved_model_state(model):
        name, module = first.resolve(x)
        for m in methods[1:]:
            if m.resolve(x)[1] is not module:
                raise InputError(f"explain_many needs one layer; got '{name}' and '{m.resolve(x)[0]}'")
        grad = any(m.needs_gradients for m in methods)
        with ActivationCapture({name: module}, grad=grad) as capture, torch.no_grad():
            capture.inputs, capture.target = x, target  # for methods that re-run the model (Score-CAM, Ablation-CAM)
            raw_out = model(x)  # what a callable target with raw_output = True receives (dicts, lists, ModelOutputs)
            output = unwrap_output(raw_out, ambiguous_ok=callable(target) and not torch.is_tensor(target))
            check_output_finite(output)  # a tensor, .logits of a Hugging Face output, ...; None if none
            activation = capture.get(name)
            _check_layer_calls(methods, name, capture.calls.get(name, 1))
            transform = spatial_transform(model, x, name, module, activation)
            if transform is not None:  # tokens (B, N, C) or channels-last (B, h, w, C) -> (B, C, h, w)
                capture.transforms[name] = transform
                activation = transform(activation)
            check_spatial(name, activation)
            targets = resolve_targets(target, output, x.shape[0], raw=raw_out)
            if targets.indices is None and hasattr(target, "select") and any(
                    isinstance(m, PerturbationMethod) for m in methods):
                target.select(torch.arange(x.shape[0], device=x.device))  # refuses early (a mask it needs)
            if output is None:  # no logits in the output (a detector's list of dicts): the explained scores
                output = targets.scores.detach()[:, None]
            several = targets.indices is not None and targets.indices.dim() == 2  # (B, K), K = 1 too
            per_image = targets.indices.shape[1] if several else 1
            if several:  # K classes per image: one forward, one batched backward
                for m in methods:
                    if not m.multi_target:
                        raise InputError(f"{m.name} explains one class per image: give a 1-D target, not a "
                                         f"{tuple(targets.indices.shape)} one (call it once per class)")
                activation = activation.repeat_interleave(per_image, dim=0)
                flat = ClassTargets(targets.indices.flatten(), targets.scores)
                repeated = output.repeat_interleave(per_image, dim=0)
                weights = [m.channel_weights(activation, flat, repeated, capture) for m in methods]
            else:
                weights = [m.channel_weights(activation, targets, output, capture) for m in methods]
        activation = activation.detach()
        dtype = torch.promote_types(activation.dtype, torch.float32)  # float16 weights of 1e-8 would underflow
        raws = [m.combine(w.detach().to(dtype), activation.to(dtype)) for m, w in zip(methods, weights)]
    indices = None if targets.indices is None else targets.indices.detach()
    results = {}
    vit = recognised_vit(model) if name in capture.transforms else None  # a padded ViT grid is cropped
    normalize = vit.normalize if vit is not None else normalize_maps
    for m, raw in zip(methods, raws):
        maps = normalize(raw, x.shape[-2:], relu=m.relu)
        if several:
            raw = raw.view(x.shape[0], per_image, *raw.shape[1:])
            maps = maps.view(x.shape[0], per_image, *maps.shape[1:])
        results[m.name] = Explanation(maps=maps, raw=raw, targets=indices, scores=targets.scores.detach(),
                                      logits=output.detach(), method=m.name, layer=name)
    return results


def unwrap_output(raw, fallback=None, ambiguous_ok: bool = True):
    """The logits tensor in a model's raw output (:func:`model_output`), or ``fallback`` when it
    holds none (a detector's list of dicts) or, with ``ambiguous_ok``, several (a callable target
    picks from the raw output)."""
    try:
        return model_output(raw)
    except AmbiguousOutputError:
        if not ambiguous_ok:
            raise
        return fallback
    except InputError:
        return fallback


def spatial_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over the two spatial dimensions of a ``(B, K, h, w)`` tensor."""
    return t.sum(dim=(2, 3)) / math.prod(t.shape[2:])
