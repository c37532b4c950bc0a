"""Context-managed capture of layer outputs (and gradients), and exact model restoration.

Gradients are taken with ``torch.autograd.grad`` on captured *leaf* tensors, so the user's
``.grad`` fields and ``requires_grad`` flags are never touched. The forward pass runs under
``torch.no_grad()``; the first captured layer switches autograd on, so no graph is built for the
part of the network before it (the cheapest way to get d(score)/d(activation)).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import LayerError, VisionlensWarning, warn_at_caller

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


@contextmanager
def preserved_model_state(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode and autograd available (also when the caller is
    inside ``torch.inference_mode()``); on exit (also on error) restore every module's train/eval
    flag, every parameter's ``requires_grad`` and remove every hook visionlens added inside.

    Cheap enough for every call: hooks added inside are recognised by their handle ids (PyTorch
    numbers handles from one global counter), so nothing is copied on entry. A hook that the
    model's own code installs on its first forward pass (Hugging Face's output-recording hooks,
    with a flag saying they are installed) is part of the model and stays."""
    modules = list(model.modules())
    modes = [m.training for m in modules]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    first_new_hook = RemovableHandle.next_id
    try:
        if eval_mode and any(modes):
            model.eval()
        with outside_inference_mode():
            yield model
    finally:
        for m, mode in zip(modules, modes):
            if m.training != mode:
                m.training = mode
        for p, flag in flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for m in modules:
            for d in _HOOK_DICTS:
                hook_dict = m.__dict__.get(d)
                if hook_dict:
                    for key in [k for k in hook_dict if isinstance(k, int) and k >= first_new_hook
                                and _from_visionlens(hook_dict[k])]:
                        del hook_dict[key]


def _from_visionlens(hook) -> bool:
    """Whether a hook function was defined in visionlens (or its research systems), or cannot say."""
    fn = getattr(hook, "func", hook)  # functools.partial
    where = getattr(fn, "__module__", None) or getattr(type(fn), "__module__", None) or ""
    return not where or where.split(".")[0].startswith("visionlens")


_PLAIN = (int, float, bool, str, tuple, type(None))


@contextmanager
def restored_attributes(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block and restore every module's plain attributes (numbers, flags, strings, tuples)
    on exit: a forward pass on a stand-in input may change them (Hugging Face Swin shrinks its
    attention window to fit a small input, for good)."""
    saved = [(m, {k: v for k, v in vars(m).items() if isinstance(v, _PLAIN)}) for m in model.modules()]
    try:
        yield model
    finally:
        for m, attrs in saved:
            state = vars(m)
            for key, value in attrs.items():
                if state.get(key, value) is not value or key not in state:
                    state[key] = value


@contextmanager
def outside_inference_mode() -> Iterator[None]:
    """Leave ``torch.inference_mode()`` for the block (autograd needs normal tensors), keeping the
    caller's grad mode (``inference_mode(False)`` alone would switch gradients on); a no-op
    outside inference mode."""
    if not torch.is_inference_mode_enabled():
        yield
        return
    grad = torch.is_grad_enabled()
    with torch.inference_mode(False), torch.set_grad_enabled(grad):
        yield


def autograd_ready(x: torch.Tensor) -> torch.Tensor:
    """``x``, or a normal copy of it when it was made under ``torch.inference_mode()`` (such a
    tensor cannot take part in a backward pass)."""
    if not x.is_inference():
        return x
    with outside_inference_mode():
        return x.clone()


def gradient_cut_message(names) -> str:
    """The error for a target score that no gradient links to the layers ``names``."""
    return (f"the target score does not depend on layer(s) {list(names)}: choose a layer on the path to the output "
            "(if it is on that path, the model's forward cuts the gradient after it, e.g. with torch.no_grad() or "
            ".detach(), as a linear probe on a frozen backbone does)")


class ActivationCapture:
    """Record the outputs of named modules during one forward pass.

    With ``grad=True`` each captured output becomes an autograd leaf (or stays the graph tensor it
    already is), so ``torch.autograd.grad(score, capture.activations[name])`` gives exact
    gradients. Each hook hands a *copy* downstream, so in-place ops after the layer (e.g.
    ``ReLU(inplace=True)``) cannot overwrite what was captured.
    """

    def __init__(self, modules: dict[str, nn.Module], grad: bool = False):
        self.modules = modules
        self.grad = grad
        self.activations: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}  # per layer, the calls captured (a reused module: several; the last is kept)
        # per-layer reshape applied to the gradients (e.g. ViT tokens -> patch grid)
        self.transforms: dict = {}
        self._grad_cache: dict = {}
        self._paused = False
        self.inputs: torch.Tensor | None = None  # the model input and target of the call in progress
        self.target = None
        self._handles: list = []

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            if self._paused:
                return None
            if not torch.is_tensor(output):
                raise LayerError(
                    f"layer '{name}' returns {type(output).__name__}, not a tensor; "
                    "choose a layer whose output is a single tensor"
                )
            if self.grad:
                if output.requires_grad:
                    act = output
                else:
                    torch.set_grad_enabled(True)  # restored by the caller's no_grad() exit
                    act = output.detach().requires_grad_(True)
            else:
                act = output.detach()
            self.activations[name] = act
            self.calls[name] = self.calls.get(name, 0) + 1
            return act.clone()

        return hook

    def __enter__(self) -> "ActivationCapture":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._grad_cache.clear()
        self.inputs = self.target = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Extra forward passes inside this block (Score-CAM, Ablation-CAM) are not captured and
        build no autograd graph."""
        self._paused = True
        try:
            with torch.no_grad():
                yield
        finally:
            self._paused = False

    def get(self, name: str) -> torch.Tensor:
        if name not in self.activations:
            raise LayerError(f"layer '{name}' was not executed in the forward pass; choose a layer the model uses")
        return self.activations[name]

    def gradients(self, score: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        """d(sum of score)/d(activation) for each named layer, without touching ``.grad``."""
        key = (id(score), tuple(names))
        if key in self._grad_cache:  # several methods in one pass share one backward
            return self._grad_cache[key][1]
        acts = [self.get(n) for n in names]
        if not score.requires_grad:
            raise LayerError(gradient_cut_message(names))
        if score.dim() == 2:  # (B, K) scores: K gradients per image from one batched backward
            grads = self._batched_gradients(score, acts)
        else:
            grads = torch.autograd.grad(score.sum(), acts, allow_unused=True)
        for n, g in zip(names, grads):
            if g is None:
                raise LayerError(f"the target score does not depend on layer '{n}'; choose a layer on the path to the output")
        result = [self.transforms[n](g) if n in self.transforms else g for n, g in zip(names, grads)]
        self._grad_cache[key] = (score, result)  # keeps score alive so its id stays unique
        return result

    @staticmethod
    def _batched_gradients(score: torch.Tensor, acts: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Gradients of each column of ``score`` (B, K), stacked image-major as (B * K, ...)."""
        k = score.shape[1]
        eye = torch.eye(k, dtype=score.dtype, device=score.device)[:, None, :].expand(k, score.shape[0], k)
        try:
            grads = torch.autograd.grad(score, acts, grad_outputs=eye, is_grads_batched=True,
                                        allow_unused=True, retain_graph=True)
        except RuntimeError:  # an op without a batching rule: one backward per column
            cols = [torch.autograd.grad(score[:, j].sum(), acts, allow_unused=True, retain_graph=True) for j in range(k)]
            grads = tuple(None if cols[0][i] is None else torch.stack([c[i] for c in cols]) for i in range(len(acts)))
        return [None if g is None else g.transpose(0, 1).flatten(0, 1) for g in grads]


def reused_layer_hint(name: str) -> str:
    """``", such as its block 'a.b'"`` for a dotted layer name, else nothing."""
    parent = name.rpartition(".")[0]
    return f", such as its block '{parent}'" if parent else ""


def warn_if_reused(name: str, calls: int) -> None:
    """A :class:`~visionlens.errors.VisionlensWarning` when layer ``name`` ran ``calls > 1`` times in
    one forward pass (a module the model reuses, as a ResNet block's one ReLU): which call is
    meant is ambiguous, and visionlens explains the last."""
    if calls > 1:
        warn_at_caller(VisionlensWarning(
            f"layer '{name}' runs {calls} times in one forward pass (a module the model reuses): the maps are of "
            f"its last call (pytorch-grad-cam's of its first); name a module that runs once{reused_layer_hint(name)}"))
