"""A faster copy of a model for forward-only scoring (deletion, insertion, Average Drop, Score-CAM).

Perturbation metrics call the model hundreds of times per image and need no gradients, so they
can run on a copy with each ``Conv2d -> BatchNorm2d`` pair folded into one convolution and with
channels-last memory (oneDNN's fast path on CPU). Pairs are found from the data flow: a
``torch.fx`` trace (convolutions and batch norms kept as leaves) shows which batch norm reads
which convolution's output, and a pair is folded only when that output goes nowhere else. A model
that cannot be traced falls back to adjacent pairs inside ``nn.Sequential`` (where registration
order is the data flow). The copy is checked against the model on real inputs before use; the
user's model is never touched.

Optionally (``compile_batch``) the copy is also compiled with ``torch.compile`` (inductor, weights
frozen into the graph) for one fixed batch size: inputs are cut into batches of that size and a
short last batch is zero-padded, so exactly one graph is built per image size. Compiling takes
seconds to a minute, so compiled copies are kept per model and reused while the model's
parameters and buffers are unchanged (same tensors, no in-place update since).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import time
import weakref

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .hooks import preserved_model_state


class _LeafTracer(fx.Tracer):
    """Keeps every convolution and batch norm (subclasses too) as one call in the graph."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Qualified names ``(conv, bn)`` of the batch norms that read only a convolution's output."""
    names: dict[int, list[str]] = {}
    for name, m in module.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
    shared = {n for ns in names.values() if len(ns) > 1 for n in ns}  # one module under two names
    subs = dict(module.named_modules())
    try:
        graph = _LeafTracer().trace(module)
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: use nn.Sequential order
        pairs = []
        for seq_name, seq in module.named_modules():
            if isinstance(seq, nn.Sequential):
                keys = list(seq._modules)
                pairs += [(f"{seq_name}.{a}".lstrip("."), f"{seq_name}.{b}".lstrip("."))
                          for a, b in zip(keys, keys[1:]) if _foldable(seq._modules[a], seq._modules[b])]
        return [p for p in pairs if not set(p) & shared]
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        prev = node.args[0]
        if (prev.op == "call_module" and len(prev.users) == 1 and len(node.args) == 1 and not node.kwargs
                and calls[prev.target] == calls[node.target] == 1 and not {prev.target, node.target} & shared
                and _foldable(subs[prev.target], subs[node.target])):
            pairs.append((prev.target, node.target))
    return pairs


def fold_batchnorm(module: nn.Module, keep: tuple[str, ...] = ()) -> int:
    """Fold, in place, each eval-mode batch norm that reads only a convolution's output into that
    convolution (the batch norm becomes ``Identity``); returns the count. Pairs with a module named
    in ``keep`` stay as they are (e.g. a layer whose own output is hooked)."""
    pairs = [p for p in conv_bn_pairs(module) if not set(p) & set(keep)]
    for conv_name, bn_name in pairs:
        conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
        for name, new in ((conv_name, fuse_conv_bn_eval(conv, bn)), (bn_name, nn.Identity())):
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, leaf, new)
    return len(pairs)


def _without_hooks(module: nn.Module) -> dict:
    """A ``deepcopy`` memo that gives the copy empty hook dicts: the user's hooks (and whatever
    their closures hold, e.g. captured activations) are neither copied nor run by the copy."""
    memo: dict = {}
    for m in module.modules():
        for name, value in vars(m).items():
            if "hooks" in name and isinstance(value, dict):
                memo[id(value)] = type(value)()
    return memo


class InferenceCopy(nn.Module):
    """An eval-mode, gradient-free copy of ``module`` with BatchNorm folded and channels-last
    weights; inputs are made channels-last on the way in. With ``compile_batch`` the copy also
    runs through ``torch.compile`` in batches of exactly that many images (see the module doc)."""

    def __init__(self, module: nn.Module, compile_batch: int | None = None, channels_last: bool = True,
                 keep: tuple[str, ...] = ()):
        super().__init__()
        inner = copy.deepcopy(module, _without_hooks(module)).eval()
        for p in inner.parameters():
            p.requires_grad_(False)
        self.folded = fold_batchnorm(inner, keep)
        self.channels_last = channels_last
        self.inner = inner.to(memory_format=torch.channels_last) if channels_last else inner
        if compile_batch is not None and compile_batch < 1:
            raise ValueError("compile_batch must be at least 1")
        self.compile_batch = compile_batch
        self._compiled = (torch.compile(self.inner, dynamic=False, options={"freezing": True})
                          if compile_batch else None)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled is None or x.ndim != 4:
            return self.inner(x)
        return self.run_compiled(x, pad_all=False)

    def run_compiled(self, x: torch.Tensor, pad_all: bool = True) -> torch.Tensor:
        """The compiled graph on ``x`` cut into batches of ``compile_batch``. A short last batch is
        zero-padded when it fills at least half a batch (or always, with ``pad_all``); a smaller one
        runs uncompiled, where padding would cost more than it saves."""
        step = self.compile_batch
        if not len(x):
            return self.inner(x)
        outs = []
        with torch.no_grad():
            for start in range(0, len(x), step):
                part = x[start:start + step].contiguous(memory_format=torch.channels_last)
                k = len(part)
                if k < step and not (pad_all or 2 * k >= step):
                    outs.append(self.inner(part))
                    continue
                if k < step:
                    pad = part.new_zeros((step - k, *part.shape[1:]))
                    part = torch.cat([part, pad]).contiguous(memory_format=torch.channels_last)
                with _quiet_cuda_home_warning():
                    out = self._compiled(part)
                if not isinstance(out, torch.Tensor):
                    raise TypeError("the compiled copy needs a model that returns one tensor")
                outs.append(out[:k])
        return torch.cat(outs)


@contextlib.contextmanager
def _quiet_cuda_home_warning():
    """Compiling on a CPU-only machine makes torch warn that it found no CUDA runtime: true, and
    irrelevant to a CPU graph, so that one message is dropped while compiling."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")

    logger = logging.getLogger("torch.utils.cpp_extension")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _fingerprint(module: nn.Module) -> tuple:
    """Changes when a parameter or buffer is replaced or updated in place."""
    return tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device)
                 for t in itertools.chain(module.parameters(), module.buffers()))


_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def checked_inference_copy(module: nn.Module, x: torch.Tensor, rtol: float = 1e-4,
                           compile_batch: int | None = None) -> tuple[nn.Module, str]:
    """``(InferenceCopy, description)`` if the copy's outputs on ``x`` match ``module``'s within
    ``rtol`` of their largest magnitude; otherwise ``(module, reason)``. Never raises for a model
    the copy cannot handle: scoring then simply runs on the model itself.

    With ``compile_batch`` the copy is compiled (a copy compiled earlier for the same, unchanged
    model and batch size is reused). A new compiled copy is checked through the compiled graph (``x``
    padded to a full batch), a reused one as a plain call would run ``x``. If compiling fails or
    the compiled graph disagrees, the uncompiled copy is checked and used instead."""
    if compile_batch:
        key = (_fingerprint(module), compile_batch)
        cached = _COMPILED.get(module)
        fast = cached["copy"] if cached is not None and cached["key"] == key else None
        try:
            fast_out = fast(x) if fast is not None else None
            if fast is None:
                fast = InferenceCopy(module, compile_batch)
                fast_out = fast.run_compiled(x)
            ref = _reference(module, x)
        except Exception as err:  # noqa: BLE001 - no compiler, unsupported op, ...: run uncompiled
            fast, why = checked_inference_copy(module, x, rtol)
            first_line = (str(err).splitlines() or [""])[0][:120]
            return fast, f"{why}; not compiled ({type(err).__name__}: {first_line})"
        err, verdict = _compare(ref, fast_out, rtol)
        if verdict is None:
            _COMPILED[module] = {"key": key, "copy": fast}
            return fast, (f"compiled inference copy ({fast.folded} BatchNorm folded, channels-last, torch.compile "
                          f"in batches of {compile_batch}; max |diff| {err:.1e} on the first batch)")
        fast, why = checked_inference_copy(module, x, rtol)
        return fast, f"{why}; not compiled (compiled copy {verdict})"
    try:
        fast = InferenceCopy(module)
        ref = _reference(module, x)
        got = fast(x)
    except Exception as err:  # noqa: BLE001 - any failure means "use the model as it is"
        return module, f"model itself (inference copy failed: {type(err).__name__})"
    err, verdict = _compare(ref, got, rtol)
    if verdict is not None:
        return module, f"model itself (inference copy {verdict})"
    return fast, f"inference copy ({fast.folded} BatchNorm folded, channels-last; max |diff| {err:.1e} on the first batch)"


def _reference(module: nn.Module, x: torch.Tensor):
    with preserved_model_state(module):  # eval mode; every module's own mode back afterwards
        return module(x)


def _compare(ref, got, rtol: float) -> tuple[float, str | None]:
    """``(max |ref - got|, None)`` when ``got`` matches ``ref`` within ``rtol`` of its largest
    magnitude, else ``(..., why not)``. Outputs are compared as the tensor a method explains
    (``model_output``: a Hugging Face output's logits, a segmenter's ``out``)."""
    from .vit import model_output

    try:
        ref, got = model_output(ref), model_output(got)
    except Exception:  # noqa: BLE001 - an output with no tensor to compare
        return float("nan"), "gave other outputs"
    if not (isinstance(ref, torch.Tensor) and isinstance(got, torch.Tensor)) or ref.shape != got.shape:
        return float("nan"), "gave other outputs"
    err = float((ref - got).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    if not err <= rtol * scale:  # also catches NaN
        return err, f"differs by {err:.2e}"
    return err, None


# --- the fastest checked copy, kept per model ---------------------------------------------------

_FASTEST: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def fastest_checked_copy(module: nn.Module, x: torch.Tensor, batch: int, keep: tuple[str, ...] = (),
                         rtol: float = 1e-4) -> tuple[nn.Module, str]:
    """The fastest of ``module`` itself and its folded copies (channels-last, and in the default
    memory format) that match it on ``x[:4]`` (as :func:`checked_inference_copy`), timed by one
    forward of ``batch`` images like ``x``. Kept per model, and reused while the model's parameters,
    ``keep``, the image size and the device are unchanged and the kept copy still matches the model
    on ``x[:4]`` (a hook added since, an attribute or a ``.data`` update changes the model without
    changing its parameters' identity), so a method called on many batches pays the choice once.
    ``keep``: modules not folded (see :func:`fold_batchnorm`)."""
    key = (_fingerprint(module), tuple(keep), tuple(x.shape[1:]), x.dtype, str(x.device))
    probe = x[:4]
    cached = _FASTEST.get(module)
    if cached is not None and cached["key"] == key and cached["copy"] is module:
        return module, cached["how"]
    ref = _reference(module, probe)
    if cached is not None and cached["key"] == key and _compare(ref, cached["copy"](probe), rtol)[1] is None:
        return cached["copy"], cached["how"]
    candidates = {"model itself": module}
    for channels_last in (True, False):
        try:
            fast = InferenceCopy(module, channels_last=channels_last, keep=keep)
            if _compare(ref, fast(probe), rtol)[1] is None:
                fmt = "channels-last" if channels_last else "default memory format"
                candidates[f"inference copy ({fast.folded} BatchNorm folded, {fmt})"] = fast
        except Exception:  # noqa: BLE001 - a copy that cannot run is no candidate
            continue
    full = x[:1].expand(max(2, min(batch, 16)), *x.shape[1:]).contiguous()  # enough to rank, cheap to time
    times = {how: _seconds(m, full) for how, m in candidates.items()}
    how = min(times, key=times.get)
    _FASTEST[module] = {"key": key, "copy": candidates[how], "how": how}
    return candidates[how], how


def _seconds(module: nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward of ``x`` (in the module's mode as it is) after a warm-up pass of two images."""
    module(x[:2])
    return _timed(module, x)


# --- how many images one forward pass may take ------------------------------------------------

MEMORY_FRACTION = 0.25
"""The share of the device's free memory that one forward batch may fill (activations, inputs and
the perturbed images being built): the rest stays for the model, other work and other processes."""

CPU_CEILING = 256
"""The most images per forward pass on a CPU, whatever memory allows: beyond a few dozen images
a CPU forward is no faster per image (``benchmarks/evaluate_floor.py`` sweeps the batch size), so
a larger batch only takes memory."""

GPU_CEILING = 4096


def available_bytes(device) -> int:
    """Free memory of ``device``: ``torch.cuda.mem_get_info`` on CUDA; on a CPU the available RAM
    (psutil when installed, else ``/proc/meminfo``'s MemAvailable; 4 GiB when neither says)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


_PER_IMAGE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """:func:`measured_activation_bytes`, measured once per module, image size, dtype and device."""
    key = (tuple(x.shape[1:]), x.dtype, str(x.device))
    known = _PER_IMAGE.setdefault(module, {})
    if key not in known:
        known[key] = measured_activation_bytes(module, x)
    return known[key]


@torch.no_grad()
def measured_activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes one image takes while ``module`` runs forward on it, measured by one probe forward of
    ``x[:1]``: the CUDA allocator's peak on a GPU; on a CPU four times the largest output of any
    layer (the tensors alive at once: a layer's input, output and skip connections) plus the
    image itself twice (the batch being built and the one being scored)."""
    x = x[:1]
    image = x.numel() * x.element_size()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        before = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        module(x)
        torch.cuda.synchronize(x.device)
        return max(image, torch.cuda.max_memory_allocated(x.device) - before) + 2 * image
    largest = [0]

    def record(_m, _i, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(record) for m in module.modules() if not list(m.children())]
    try:
        module(x)
    finally:
        for h in handles:
            h.remove()
    return 4 * largest[0] + 2 * image


def batch_bound(module: nn.Module, x: torch.Tensor, cap: int | None = None, ceiling: int | None = None) -> int:
    """How many images of ``x``'s size one forward pass of ``module`` may take on ``x``'s device:
    :data:`MEMORY_FRACTION` of the free memory over :func:`activation_bytes`, at most ``ceiling``
    (default :data:`CPU_CEILING` or :data:`GPU_CEILING`) and at most ``cap`` (a user's limit)."""
    if cap is not None and cap < 1:
        raise ValueError("cap must be at least 1")
    if ceiling is None:
        ceiling = GPU_CEILING if x.device.type == "cuda" else CPU_CEILING
    per_image = max(1, activation_bytes(module, x))
    bound = int(MEMORY_FRACTION * available_bytes(x.device)) // per_image
    return max(1, min(bound, ceiling, cap if cap is not None else ceiling))


@torch.no_grad()
def fastest_batch(module: nn.Module, x: torch.Tensor, bound: int, repeats: int = 2) -> int:
    """The batch size, a power of two up to ``bound`` (or ``bound`` itself), at which ``module`` runs
    forward on images like ``x`` fastest, timed (best of ``repeats`` after a warm-up) on ``x``'s
    device. A CPU's throughput often falls beyond a few images, once activations leave its caches;
    the sweep stops once the rate drops below 70 % of the best seen."""
    candidates = sorted({1 << k for k in range(bound.bit_length()) if 1 << k <= bound} | {bound})
    one, best, best_rate = x[:1], 1, 0.0
    for size in candidates:
        batch = one.expand(size, *one.shape[1:]).contiguous()
        module(batch)
        seconds = min(_timed(module, batch) for _ in range(repeats))
        rate = size / max(seconds, 1e-9)
        if rate > best_rate:
            best, best_rate = size, rate
        elif rate < 0.7 * best_rate:
            break
    return best


def _timed(module: nn.Module, batch: torch.Tensor) -> float:
    """Seconds of one forward of ``batch`` (waiting for CUDA before and after)."""
    if batch.device.type == "cuda":
        torch.cuda.synchronize(batch.device)
    start = time.perf_counter()
    module(batch)
    if batch.device.type == "cuda":
        torch.cuda.synchronize(batch.device)
    return time.perf_counter() - start


SLOWER = 0.9  # a CPU batch size whose rate falls below this share of the best seen ends the search


class BatchSizer:
    """How many perturbed inputs (ablated copies, masked images) one pass takes. On a CPU it is
    chosen by timing the real passes: from ``first`` the size doubles up to ``bound`` while its rate (copies per second,
    the best of two passes, so that one slow pass on a busy machine does not decide) stays within
    :data:`SLOWER` of the best seen; then the best size is kept. The search goes on in later calls
    if a call runs out of copies first. A CPU's throughput often falls once a batch's activations
    leave its caches. Untimed (a GPU, a given ``batch_size``): ``bound``."""

    def __init__(self, bound: int, timed: bool, first: int = 32):
        self.bound, self.first = bound, first
        self.rates: dict[int, list[float]] = {}  # size -> copies per second of its passes
        self.best = None if timed else bound

    def next(self) -> int:
        """The size of the next pass."""
        if self.best is not None:
            return self.best
        if not self.rates:
            return min(self.first, self.bound)
        last = max(self.rates)
        if len(self.rates[last]) < 2:
            return last
        rate = {size: max(seen) for size, seen in self.rates.items()}
        top = max(rate, key=rate.get)
        if last >= self.bound or rate[last] < SLOWER * rate[top]:
            self.best = top
            return top
        return min(2 * last, self.bound)

    def record(self, size: int, copies: int, seconds: float) -> None:
        """One pass of ``copies`` copies took ``seconds`` (a short last pass is not counted)."""
        if self.best is None and copies == size:
            self.rates.setdefault(size, []).append(copies / max(seconds, 1e-9))
