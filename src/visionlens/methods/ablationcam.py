"""Ablation-CAM (Desai & Ramaswamy, WACV 2020): ``w_k = (y^c - y^c_k) / y^c`` where ``y^c_k`` is
the target score with channel ``k`` of the layer set to zero. No gradients.

The layer's activations are computed once (the shared forward pass); each ablated copy runs only
through the rest of the network. Three ways of running that rest are tried, in this order, each
checked on a copy of the un-ablated activations (they must reproduce the logits; a copy, since
an in-place operation after the layer would otherwise overwrite the activations of the map):

1. the **traced tail**: :func:`layer_tail` (``torch.fx``) cuts the modules after the layer out
   of the inference copy as a module of one input, so nothing before the layer runs again;
2. a **stand-in input**: the model is fed a small input whose layer output is replaced by the
   ablated activations, so the part before the layer costs almost nothing. The stand-in is one
   image (8 px, else 32 px), or one per ablated copy where the model needs the batch sizes to agree;
3. the **full input**, where every stand-in fails (a skip connection that jumps over the layer, a
   model that needs the full input size, or any other failure of the small input).

With ``inference_copy`` (the default) the ablated copies run on the fastest checked copy of the
model (:func:`visionlens.core.inference.fastest_checked_copy`, BatchNorm folded except at the
layer itself); the check above is also the check of that copy (else the model itself runs, by a
stand-in or the full input, never traced). The way found is kept for later calls with the same
copy, layer and input size. The ablated batches are written into one reused buffer
(:class:`AblatedBatches`), kept between calls on a CPU. ``batch_size`` None (the default) takes
the device's memory bound for the full model (:func:`visionlens.core.inference.batch_bound`); on
a CPU the size within it is found by timing the real passes (:class:`BatchSizer`).
Formula choice: ablation sets the channel to zero, as the paper (pytorch-grad-cam uses a very
negative value when the layer's minimum is not zero). On a ViT token layer, channel ``k`` is
zeroed in every token, the class and other prefix tokens included (as pytorch-grad-cam's ViT
ablation layer does); the map is over the patch tokens. On timm Swin's channels-last tokens
``(B, h, w, C)`` the last dimension is the channel.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import torch
from torch import fx, nn

from ..core.hooks import ActivationCapture, restored_attributes
from ..core.inference import BatchSizer, InferenceCopy, batch_bound, fastest_checked_copy
from ..core.targets import ClassTargets
from .base import PerturbationMethod, unwrap_output

STAND_INS = (8, 32)  # sides tried for the stand-in input that feeds the layer before its output is replaced
FIRST_BATCH = 32  # ablated copies in the first timed pass on a CPU (a tail pass costs little per copy)

Runner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]
"""``(ablated activations, their image indices, the input batch) -> the model's raw output``."""


def _batched(small: torch.Tensor, expand: bool, n: int) -> torch.Tensor:
    """The stand-in as fed with ``n`` ablated copies: one image, or (``expand``) one per copy."""
    return small.expand(n, -1, -1, -1) if expand else small


class _CutTracer(fx.Tracer):
    """Keeps the module named ``cut`` as one call in the graph."""

    def __init__(self, cut: str):
        super().__init__()
        self.cut = cut

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.cut or super().is_leaf_module(m, qualname)


def layer_tail(model: nn.Module, name: str) -> fx.GraphModule | None:
    """The part of ``model`` after its submodule ``name``, as a module whose one input is that
    layer's output and whose output is the model's; ``None`` when ``torch.fx`` cannot trace the
    model, the layer is called more than once, or the rest reads the model's input other than
    through the layer (a skip connection over it, the input's size)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _CutTracer(name).trace(model)
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: no traced tail
        return None
    cuts = [n for n in graph.nodes if n.op == "call_module" and n.target == name]
    if len(cuts) != 1:
        return None
    cut = cuts[0]
    from_input = set()  # nodes that read the input other than through the layer
    for node in graph.nodes:
        if node.op == "placeholder" or (node is not cut and any(a in from_input for a in node.all_input_nodes)):
            from_input.add(node)
    output = next(n for n in graph.nodes if n.op == "output")
    needed, todo = set(), [output]
    while todo:
        node = todo.pop()
        if node not in needed and node is not cut:
            needed.add(node)
            todo.extend(node.all_input_nodes)
    if needed & from_input:
        return None
    tail = fx.Graph()
    env = {cut: tail.placeholder("activations")}
    for node in graph.nodes:  # topological order
        if node in needed:
            env[node] = tail.node_copy(node, lambda n: env[n])
    return fx.GraphModule(model, tail)


def _reproduces(out, output: torch.Tensor) -> bool:
    """Whether a tail's raw output gives the model's logits ``output`` (within float rounding)."""
    out = unwrap_output(out)
    scale = float(output.abs().max())
    return (isinstance(out, torch.Tensor) and out.shape == output.shape and math.isfinite(scale)
            and torch.allclose(out, output, rtol=1e-4, atol=1e-4 * (1 + scale)))


class AblatedBatches:
    """Batches of ablated copies of ``source`` (``(B, K, ...)``, or tokens with the channel last),
    written into one reused buffer of ``rows`` copies. When every row holds the same image as in
    the previous batch, a row only gets its previous channel restored and its new one zeroed, so
    the batch costs a few values per copy instead of a whole copy of the activations; otherwise,
    or when the model wrote into the buffer (an in-place operation after the layer), the batch
    is copied in full."""

    def __init__(self, source: torch.Tensor, rows: int, tokens: bool = False):
        self.source, self.tokens = source, tokens
        self.buffer = source.new_empty((rows, *source.shape[1:]))
        self.image = torch.full((rows,), -1)  # on the host: which image each row holds (-1: none yet)
        self.channel = torch.zeros(rows, dtype=torch.long)  # and which of its channels is zero
        self.version = None

    def fits(self, source: torch.Tensor, rows: int, tokens: bool) -> bool:
        """Whether this buffer can serve ``rows`` copies of ``source`` (same shape, dtype, device)."""
        b = self.buffer
        return (tokens == self.tokens and len(b) >= rows and b.shape[1:] == source.shape[1:]
                and b.dtype == source.dtype and b.device == source.device)

    def refill(self, source: torch.Tensor) -> "AblatedBatches":
        """Serve copies of a new ``source``: every row is marked unknown, so its first batch is copied in full."""
        self.source = source
        self.image.fill_(-1)
        return self

    def _at(self, rows: torch.Tensor, channel: torch.Tensor) -> tuple:
        """The index of channel ``channel[i]`` of row ``rows[i]`` (the channel is last for tokens)."""
        return (rows, ..., channel) if self.tokens else (rows, channel)

    def __call__(self, image: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        """The ablated batch: row ``i`` is image ``image[i]`` with channel ``channel[i]`` zeroed
        (host index tensors)."""
        n, device = len(image), self.source.device
        acts = self.buffer[:n]
        if self.version != self.buffer._version:  # written since we wrote it: nothing in it is known
            self.image.fill_(-1)
        rows, on_device = torch.arange(n, device=device), image.to(device)
        if bool((self.image[:n] == image).all()):  # the same images: restore the channels zeroed last time
            previous = self.channel[:n].to(device)
            acts[self._at(rows, previous)] = self.source[self._at(on_device, previous)]
        else:
            torch.index_select(self.source, 0, on_device, out=acts)
        acts[self._at(rows, channel.to(device))] = 0
        self.image[:n], self.channel[:n] = image, channel
        self.version = self.buffer._version
        return acts


class AblationCAM(PerturbationMethod):
    name = "ablationcam"
    replaces_layer_output = True

    def __init__(self, model, layer=None, batch_size: int | None = None, inference_copy: bool = True):
        super().__init__(model, layer, 64 if batch_size is None else batch_size)
        self.batch_size = batch_size  # None: the memory bound
        self.inference_copy = inference_copy
        self._checked: dict = {}  # (copy, layer, input shape) -> (its checked runner, the module it runs)
        self._kept_batches: AblatedBatches | None = None  # on a CPU, the buffer of ablated copies between calls

    def _tail(self, module, feed: torch.Tensor, acts: torch.Tensor, model=None) -> torch.Tensor:
        """Output of ``model`` (default the model) when its layer ``module`` outputs ``acts`` (the
        input ``feed`` only drives the rest); attributes the small stand-in changes (a Swin window)
        are restored."""
        model = self.model if model is None else model
        handle = module.register_forward_hook(lambda m, i, o: acts, prepend=True)
        try:
            with restored_attributes(model):
                return model(feed)
        finally:
            handle.remove()

    def _feed(self, module, x: torch.Tensor, activation: torch.Tensor, output: torch.Tensor,
              model=None) -> tuple[torch.Tensor, bool] | None:
        """``(stand-in, expand)``: the first small input that reproduces the logits from the cached
        activations through ``model`` (default the model), fed as one image or (``expand``) repeated
        to the batch; ``None`` if none does."""
        output = output.detach()
        for side in STAND_INS:
            small = x.new_zeros((1, x.shape[1], min(side, x.shape[2]), min(side, x.shape[3])))
            for expand in (False, True):
                try:
                    out = self._tail(module, _batched(small, expand, activation.shape[0]), activation.clone(), model)
                except Exception:  # noqa: BLE001 - any failure of the stand-in (shape, size check): full input
                    continue
                if _reproduces(out, output):
                    return small, expand
        return None

    def _traced(self, fast: nn.Module, name: str, source: torch.Tensor, output: torch.Tensor) -> Runner | None:
        """The traced tail of the inference copy ``fast`` as a runner, if it reproduces the logits.
        Where the model itself is the fastest, the tail of its copy in the default memory format
        (the same operations) is traced instead: the user's model is never traced, since tracing
        would run its hooks."""
        try:
            if not isinstance(fast, InferenceCopy):
                fast = InferenceCopy(self.model, channels_last=False, keep=(name,))
            tail = layer_tail(fast.inner, name)
            if tail is None or not _reproduces(tail(source.clone()), output.detach()):
                return None
        except Exception:  # noqa: BLE001 - a tail that cannot run: the next way
            return None
        return lambda acts, image, x: tail(acts)

    def _hooked(self, model: nn.Module, layer, x: torch.Tensor, source: torch.Tensor,
                output: torch.Tensor) -> Runner | None:
        """``model`` with its layer's output replaced: fed a stand-in, else (if that reproduces the
        logits) the full input; ``None`` if neither does."""
        stand_in = self._feed(layer, x, source, output, model)
        if stand_in is not None:
            return lambda acts, image, x: self._tail(layer, _batched(*stand_in, len(acts)), acts, model)
        if model is not self.model and not _reproduces(self._tail(layer, x, source.clone(), model), output.detach()):
            return None
        return lambda acts, image, x: self._tail(layer, x[image], acts, model)

    def _runner(self, name: str, module, x: torch.Tensor, source: torch.Tensor,
                output: torch.Tensor, copies: int) -> tuple[Runner, BatchSizer]:
        """``(runner, its batch sizer)`` for ``copies`` ablated copies: on the fastest checked copy
        the traced tail, else a stand-in or the full input, where one reproduces the logits from
        the cached activations; else the model itself (stand-in or full input), at the memory bound."""
        if self.inference_copy and name:
            try:
                fast = fastest_checked_copy(self.model, x, self.batch_size or 64, keep=(name,))[0]
                key = (id(fast), name, tuple(x.shape), tuple(source.shape))
                if key in self._checked and self._still_reproduces(self._checked[key][0], x, source, output):
                    return self._checked[key]  # this copy, layer and size were checked on an earlier call
                layer = fast.inner.get_submodule(name) if isinstance(fast, InferenceCopy) else module
                run = self._traced(fast, name, source, output) or self._hooked(fast, layer, x, source, output)
                if run is not None:
                    bound = min(self.batch_size or batch_bound(fast, x), copies)
                    self._checked = {key: (run, BatchSizer(bound, self.batch_size is None and x.device.type == "cpu",
                                                                         first=FIRST_BATCH))}
                    return self._checked[key]
            except Exception:  # noqa: BLE001 - any failure of the copy: the model itself
                pass
        bound = min(self.batch_size or batch_bound(self.model, x), copies)
        return self._hooked(self.model, module, x, source, output), BatchSizer(bound, timed=False)

    @staticmethod
    def _still_reproduces(run: Runner, x: torch.Tensor, source: torch.Tensor, output: torch.Tensor) -> bool:
        """Whether a runner checked on an earlier call still gives the model's logits from the
        unablated activations: the model may have changed since (a hook, an attribute, a ``.data``
        update) where its copy, or the traced tail, did not."""
        try:
            return _reproduces(run(source.clone(), torch.arange(len(source), device=x.device), x), output.detach())
        except Exception:  # noqa: BLE001 - a runner that no longer runs: check again from the start
            return False

    def _ablated_batches(self, source: torch.Tensor, rows: int, tokens: bool) -> AblatedBatches:
        """The buffer of ablated copies. On a CPU it is kept for later calls: a fresh buffer of
        many copies is new memory whose pages the system maps in on first write, which cost as much
        as the ablated passes on a small tail (36 ms a call for EfficientNet-B0's 256 copies at
        224 px). A GPU's caching allocator already reuses freed memory, so there it is not kept."""
        kept = self._kept_batches
        if kept is not None and kept.fits(source, rows, tokens):
            return kept.refill(source)
        batches = AblatedBatches(source, rows, tokens)
        self._kept_batches = batches if source.device.type == "cpu" else None
        return batches

    def channel_weights(self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor,
                        capture: ActivationCapture) -> torch.Tensor:
        x, target = capture.inputs, capture.target
        x = x.to(activation.device)
        name, module = self._resolved
        # the layer's own output is what an ablated copy feeds on: (B, K, h, w), or ViT tokens (B, N, K)
        tokens = name in capture.transforms
        source = (capture.get(name) if tokens else activation).detach()
        b, k = activation.shape[:2]
        with capture.paused():
            run, sizer = self._runner(name, module, x, source, output, b * k)
        base = targets.scores.float()
        scores = torch.empty(b * k, device=activation.device)
        ablated = self._ablated_batches(source, sizer.bound, tokens)
        start = 0
        while start < b * k:
            size = sizer.next()
            pairs = torch.arange(start, min(start + size, b * k))
            clock = time.perf_counter()
            acts = ablated(pairs // k, pairs % k)
            image = (pairs // k).to(activation.device)
            with capture.paused():
                out = run(acts, image, x)
            score = self.target_scores(out, image, targets, target)
            scores[start:start + len(pairs)] = score.float()
            sizer.record(size, len(pairs), time.perf_counter() - clock)
            start += len(pairs)
        return (base[:, None] - scores.view(b, k)) / base[:, None]
