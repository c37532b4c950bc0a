"""Training loop: AdamW, prompt mixing (text 1/2, otherwise scribble or point 1/2 each, one kind per
batch as in ``train_trigger``), horizontal flip with left/right swaps, step LR decay, progress,
and resumable checkpoints (model + optimiser + step; batches depend only on (seed, step))."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from visionlens.errors import InputError
from visionlens.io import dumps

from .config import UniPHDConfig
from .data import RefSample, flip_sample
from .inference import fit_sample, images_tensor, make_prompt, make_targets, move, save_weights
from .losses import criterion
from .model import UniPHD
from .text import build_vocab


def batch_at(samples: list[RefSample], step: int, batch_size: int, seed: int, size: int, flip: bool = True,
             kinds: tuple = ("text", "scribble", "point")):
    rng = np.random.default_rng((seed, step))
    idx = rng.integers(len(samples), size=batch_size)
    chosen = [fit_sample(samples[i], size) for i in idx]
    if flip:
        chosen = [flip_sample(s) if f else s for s, f in zip(chosen, rng.random(batch_size) < 0.5)]
    r = rng.random()
    kind = "text" if r < 0.5 else ("scribble" if r < 0.75 else "point")
    if kind not in kinds:
        kind = kinds[int(rng.integers(len(kinds)))]
    return images_tensor(chosen), make_prompt(chosen, kind, rng), make_targets(chosen, size)


def resume_state(out: Path) -> dict:
    """The checkpoint ``out`` as ``{"config", "model", "optimizer", "step", "history"}``, checked."""
    from .inference import read_weights

    blob = read_weights(out, "pose train checkpoint")
    try:
        state = {"config": UniPHDConfig.from_dict(blob["config"]), "model": blob["model"],
                 "optimizer": dict(blob["optimizer"]), "step": int(blob["step"]), "history": json.loads(blob["history"])}
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{out} is not a resumable pose train checkpoint (no {err}): pass --no-resume or "
                         "another --out") from None
    return state


# the flag that sets each model setting; the rest come with --preset (small or paper)
SETTING_FLAGS = {"image_size": "--size", "text_encoder": "--text-encoder"}
NOT_SETTINGS = ("vocab",)  # built from the data (small text encoder): the checkpoint's is kept


def _setting_value(name: str, value):
    if name == "text_encoder" and isinstance(value, str) and value.startswith("hf:"):
        return "hf:" + str(Path(value[3:]).expanduser().resolve())  # hf:DIR and hf:./DIR are one folder
    return list(value) if isinstance(value, tuple) else value


def check_resume_config(saved: UniPHDConfig, wanted: UniPHDConfig, out: Path) -> None:
    """Refuse, in one line naming the setting, a resume whose model settings differ from the
    checkpoint's (it would silently go on training the checkpoint's model)."""
    for name in UniPHDConfig.__dataclass_fields__:
        if name in NOT_SETTINGS:
            continue
        was, now = getattr(saved, name), getattr(wanted, name)
        if _setting_value(name, was) == _setting_value(name, now):
            continue
        flag = SETTING_FLAGS.get(name)
        if flag:
            told = f"{flag} {was}; this run asks for {flag} {now}"
        else:
            told = f"{name} {was!r}; this run asks for {name} {now!r} (--preset)"
        raise InputError(f"{out} was trained with {told}: resume with the checkpoint's settings, or start a new "
                         "model with --no-resume or another --out")


def _check_loss(loss: torch.Tensor, step: int, lr: float, saved: int, out: Path) -> None:
    if not bool(torch.isfinite(loss)):
        where = f"{out} keeps step {saved}" if saved else "nothing was saved"
        raise InputError(f"pose train diverged: the loss became {float(loss.detach())} at step {step} (lr {lr:g}); "
                         f"lower --lr ({where})")


def train(samples: list[RefSample], out: str | os.PathLike, steps: int = 1000, batch_size: int = 8, lr: float = 1e-3,
          seed: int = 0, config: UniPHDConfig | None = None, resume: bool = True, checkpoint_every: int = 100,
          log=None, progress: bool = True, time_limit: float | None = None, flip: bool = True,
          prompt_kinds: tuple = ("text", "scribble", "point"), device: str = "cpu") -> dict:
    """Train (or resume) a UniPHD on ``device``; writes the checkpoint ``out``. Returns a summary. The torch
    RNG is seeded in a fork (the caller's is left as it was, CUDA's included); a non-finite loss stops with
    an :class:`InputError`."""
    from visionlens.models.zoo import resolve_device

    if not samples:
        raise InputError("no training samples")
    if steps < 1 or batch_size < 1:
        raise InputError("steps and batch_size must be >= 1")
    device = resolve_device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _train(samples, Path(out), steps, batch_size, lr, seed, config, resume, checkpoint_every, log,
                      progress, time_limit, flip, tuple(prompt_kinds), device)


def _train(samples, out, steps, batch_size, lr, seed, config, resume, checkpoint_every, log, progress, time_limit,
           flip, prompt_kinds, device) -> dict:
    from visionlens.core.progress import Progress

    state = resume_state(out) if resume and out.is_file() else None
    if state is not None and config is not None:
        check_resume_config(state["config"], config, out)
    config = state["config"] if state else (config or UniPHDConfig())
    if config.text_encoder == "small" and not config.vocab:
        config.vocab = build_vocab(s.caption for s in samples)
    model = UniPHD(config).to(device)
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW([{"params": rest}, {"params": backbone}], lr=lr, weight_decay=1e-4)
    start, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
    bar = Progress(steps - start, "pose train", enabled=progress, unit="step")
    t0 = time.perf_counter()
    model.train()
    step, saved = start, start
    for step in range(start, steps):
        for group in opt.param_groups:  # step decay x0.1 for the last 15 % (official: epoch 18 of 20)
            group["lr"] = lr * (0.1 if step >= int(steps * 0.85) else 1.0)
        images, prompt, target = move(batch_at(samples, step, batch_size, seed, config.image_size, flip, prompt_kinds), device)
        loss, terms = criterion(model(images, prompt), target, config)
        _check_loss(loss, step + 1, lr, saved, out)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append({"step": step + 1, "loss": float(loss.detach()), "prompt": prompt["kind"], **{k: round(v, 4) for k, v in terms.items()}})
        bar.update(1)
        if log is not None and (step + 1) % 25 == 0:
            log(f"step {step + 1}/{steps} loss {float(loss.detach()):.3f} ({prompt['kind']})")
        done = step + 1 == steps or (time_limit is not None and time.perf_counter() - t0 > time_limit)
        if (step + 1) % checkpoint_every == 0 or done:
            save_weights(model, out, extra={"optimizer": opt.state_dict(),
                                            "step": torch.tensor(step + 1), "history": dumps(history, indent=None)})
            saved = step + 1
        if done:
            break
    reached = step + 1 if start < steps else start  # the loop did not run: the checkpoint is already there
    return {"steps": reached, "trained": reached - start, "start": start, "seconds": time.perf_counter() - t0,
            "history": history, "model": model.eval()}
