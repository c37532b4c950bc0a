"""The TraNCE reducer: a small variational autoencoder over activation vectors (a reconstruction;
the paper gives no architecture, so every choice here is a documented, configurable default).

* encoder ``c -> hidden -> (mu, log sigma^2)`` in ``R^{c'}``; decoder ``c' -> hidden -> c`` with a
  softplus output (post-ReLU activations are non-negative); ``hidden=0`` makes the decoder
  linear (then the CAVs are its weight matrix);
* loss ``MSE(a, a_hat) + beta * KL(q(z|a) || N(0, I))`` on activations divided by their RMS;
* concept scores ``S = mu(a)``, clamped at 0 when ``clamp=True`` (NMF-like reading); the
  reconstruction is ``A' = dec(mu(a))`` (unclamped); with ``orient=True`` each latent's sign is
  chosen after training so that its large excursions are positive (the VAE's latents have no
  preferred sign; without this, clamping drops concepts that live on the negative side);
* CAVs: the decoder Jacobian at the mean code;
* start (``init="random"``, default): PyTorch's default initialisation; ``init="pca"``: the weights
  begin at a rank-``c'`` PCA solution, computed by a randomised truncated SVD of the training rows
  (see :func:`_pca_start`): about 1.5x faster to train, same Faith, but concepts that localise
  object parts about half as well (docs/concepts.md). Either way the same VAE is then trained on
  the same loss;
* training: mini-batches of ``batch_size`` rows for at most ``epochs`` epochs (Adam, the learning
  rate ramped up linearly over the first ``warmup`` epochs), stopped early when the loss on a
  held-out ``val_fraction`` of the rows (deterministic: decoded from ``mu``) has not fallen by a
  relative ``min_delta`` for ``patience`` epochs; the weights of the best validation epoch (the
  last that improved by ``min_delta``) are kept. ``history`` records the losses, ``epochs_run``
  the epochs trained.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..errors import InputError, VisionlensWarning
from .reducers import Reducer, register_reducer


INITS = ("pca", "random")
SOFTPLUS_FLOOR = 0.05  # activations (in RMS units) below this are fitted as this in the PCA start


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _warn_if_negative(rows: torch.Tensor) -> None:
    """A warning when activations are negative: the softplus decoder reconstructs none of them."""
    negative = rows < 0
    if bool(negative.any()):
        warnings.warn(f"{float(negative.float().mean()):.1%} of the activations are negative (down to "
                      f"{float(rows.min()):.3g}); the VAE's softplus decoder reconstructs none of them, so its "
                      "concepts and Faith see only the positive part: choose a layer after a ReLU",
                      VisionlensWarning, stacklevel=3)


class _Softplus(torch.autograd.Function):
    """``softplus(x) = max(x, 0) + log(1 + exp(-|x|))``, equal to ``nn.functional.softplus`` within
    float32 rounding (5e-7 absolute), its gradient ``sigmoid(x)``. ATen's softplus calls ``log1p``,
    whose CPU kernel is slow where ATen does not use its AVX2 kernels (AVX-512 CPUs, or no vector
    unit): 3.3x the time of this form for a (128, 1280) batch on this project's CPU, where a VAE
    epoch takes 27 % less time without it (docs/concepts.md); on AVX2 the two take the same time."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.relu(x).add_(torch.exp(-x.abs()).add_(1).log_())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """The decoder's output non-linearity (see :class:`_Softplus`)."""
    return _Softplus.apply(x)


class _VAE(nn.Module):
    def __init__(self, channels: int, concepts: int, hidden: int, enc_hidden: int):
        super().__init__()
        self.encoder = _mlp([channels, enc_hidden, 2 * concepts])
        self.decoder = _mlp([concepts, hidden, channels] if hidden else [concepts, channels])

    def encode(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z):
        return softplus(self.decoder(z))


class _Adam:
    """Adam (Kingma & Ba) on a parameter list. ``torch.optim`` is avoided on purpose: its first use
    imports the compiler stack, which costs seconds on a small CPU. ``fused=True`` updates every
    parameter in one call of ATen's fused Adam kernel (the one behind ``torch.optim.Adam(fused=True)``;
    about 4x faster per step here), with the plain loop as the fallback where it is missing."""

    def __init__(self, params: list, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, fused: bool = True):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.fused = fused and hasattr(torch, "_fused_adam_")
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in params]

    @torch.no_grad()
    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        grads = list(grads)
        if self.fused:
            for s in self.steps:
                s.fill_(self.t)
            try:  # a private ATen op: another torch version may change it; the plain loop is the same update
                torch._fused_adam_(self.params, grads, self.m, self.v, [], self.steps, lr=self.lr, beta1=b1,
                                   beta2=b2, weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)
                return
            except (TypeError, RuntimeError):
                self.fused = False
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.t))


def _softplus_inverse(x: torch.Tensor) -> torch.Tensor:
    """``log(exp(x) - 1)`` of ``x`` floored at ``SOFTPLUS_FLOOR``; ``x`` itself above 20, where
    softplus is the identity in float32 (and ``exp`` would overflow above 88)."""
    x = x.clamp_min(SOFTPLUS_FLOOR)
    return torch.where(x > 20, x, torch.log(torch.expm1(x.clamp_max(20))))


@torch.no_grad()
def _pca_start(net: _VAE, x: torch.Tensor, beta: float) -> None:
    """Put ``net`` at a rank-``c'`` PCA solution of the rows ``x`` (RMS units), from which training
    goes on. The decoder's target is PCA in the softplus-inverse domain (so that its softplus output
    reproduces the rows), with whitened codes ``z_j`` (unit variance, as the prior); ``c'`` pairs of
    hidden units ``relu(z_j)``, ``relu(-z_j)`` carry ``z_j`` through the ReLU exactly, and the other
    hidden units keep their random weights in and zero weights out. The encoder's first layer gets
    ``+-`` the top principal directions of ``x`` on half its units (the rest stay random), its ``mu``
    rows the least-squares map from those projections to the codes, and its ``log sigma^2`` the
    variance that balances ``beta KL`` against the reconstruction along each code."""
    n, k = len(x), net.encoder[-1].out_features // 2
    t = _softplus_inverse(x)
    t_mean, x_mean = t.mean(0), x.mean(0)
    _, sv, dirs = torch.svd_lowrank(t - t_mean, q=min(k + 10, *x.shape), niter=4)
    k = min(k, len(sv))
    spread = (sv[:k] / math.sqrt(n)).clamp_min(1e-6)
    codes = (t - t_mean) @ dirs[:, :k] / spread
    enc_in, enc_out = net.encoder[0], net.encoder[-1]
    m = max(1, min(enc_in.out_features // 4, *x.shape))
    u = torch.svd_lowrank(x - x_mean, q=min(m + 10, *x.shape), niter=4)[2][:, :m].T
    enc_in.weight[:2 * m] = torch.cat([u, -u])
    enc_in.bias[:2 * m] = -(enc_in.weight[:2 * m] @ x_mean)
    to_codes = torch.linalg.lstsq((x - x_mean) @ u.T, codes).solution.T  # (k, m)
    enc_out.weight.zero_()
    enc_out.bias.zero_()
    enc_out.weight[:k, :m], enc_out.weight[:k, m:2 * m] = to_codes, -to_codes
    half = enc_out.out_features // 2
    enc_out.bias[half:half + k] = (0.5 * beta / (spread.pow(2) + 0.5 * beta)).log().clamp(-10, 10)
    _decoder_start(net.decoder, dirs[:, :k] * spread, t_mean)


def _decoder_start(decoder: nn.Sequential, columns: torch.Tensor, bias: torch.Tensor) -> None:
    """Make ``decoder(z)`` compute ``softplus(columns @ z + bias)`` for the first ``k`` codes."""
    out, k = decoder[-1], columns.shape[1]
    out.weight.zero_()
    out.bias.copy_(bias)
    if len(decoder) == 1:  # linear decoder
        out.weight[:, :k] = columns
        return
    hidden = decoder[0]
    k = min(k, hidden.out_features // 2)
    hidden.weight[:2 * k] = 0
    hidden.bias[:2 * k] = 0
    eye = torch.eye(k)
    hidden.weight[:k, :k], hidden.weight[k:2 * k, :k] = eye, -eye
    out.weight[:, :k], out.weight[:, k:2 * k] = columns[:, :k], -columns[:, :k]


@register_reducer
class VAEReducer(Reducer):
    kind = "vae"

    def __init__(self, n_concepts: int = 10, hidden: int = 64, enc_hidden: int = 128, beta: float = 1e-3,
                 epochs: int = 100, lr: float = 1e-2, batch_size: int = 128, clamp: bool = True, orient: bool = True,
                 seed: int = 0, patience: int = 5, val_fraction: float = 0.1, min_delta: float = 1e-3,
                 init: str = "random", warmup: int = 3):
        if int(patience) < 1 or not 0 <= float(val_fraction) < 1 or float(min_delta) < 0:
            raise InputError(f"VAE early stopping needs patience >= 1, 0 <= val_fraction < 1 and min_delta >= 0; "
                             f"got {patience}, {val_fraction}, {min_delta}")
        if init not in INITS or int(warmup) < 0:
            raise InputError(f"VAE init must be one of {', '.join(INITS)} and warmup >= 0 epochs; got {init!r}, {warmup}")
        super().__init__(n_concepts=n_concepts, hidden=hidden, enc_hidden=enc_hidden, beta=beta, epochs=epochs,
                         lr=lr, batch_size=batch_size, clamp=clamp, orient=orient, seed=seed, patience=patience,
                         val_fraction=val_fraction, min_delta=min_delta, init=init, warmup=warmup)
        self.net: _VAE | None = None
        self.scale = torch.tensor(1.0)
        self.mean_code: torch.Tensor | None = None
        self.history: dict[str, list[float]] = {"train": [], "val": []}
        self.epochs_run = 0

    def _build(self, channels: int) -> _VAE:
        c = self.config
        return _VAE(channels, int(c["n_concepts"]), int(c["hidden"]), int(c["enc_hidden"]))

    def _loss(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """``MSE + beta KL`` per channel; ``gen=None`` decodes ``mu`` (the validation loss)."""
        mu, logvar = self.net.encode(x)
        z = mu if gen is None else mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1).mean()
        sse = nn.functional.mse_loss(self.net.decode(z), x, reduction="sum") / len(x)  # one fused kernel
        return (sse + float(self.config["beta"]) * kl) / x.shape[1]

    def _split(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and held-out validation rows (no hold-out below 20 rows or with ``val_fraction=0``)."""
        n_val = int(len(x) * float(self.config["val_fraction"]))
        if len(x) < 20 or n_val < 1:
            return x, x[:0]
        order = torch.randperm(len(x), generator=gen)
        return x[order[n_val:]], x[order[:n_val]]

    def _learning_rate(self, step: int, steps_per_epoch: int) -> float:
        """``lr``, ramped up linearly over the first ``warmup`` epochs (``step`` counts from 1)."""
        lr, ramp = float(self.config["lr"]), int(self.config.get("warmup", 0)) * steps_per_epoch
        return lr * min(1.0, step / ramp) if ramp else lr

    def _epoch(self, x: torch.Tensor, opt: "_Adam", gen: torch.Generator, epoch: int) -> float:
        bs, total = int(self.config["batch_size"]), 0.0
        per_epoch = -(-len(x) // bs)
        shuffled = x[torch.randperm(len(x), generator=gen)]
        for i, start in enumerate(range(0, len(x), bs)):
            opt.lr = self._learning_rate(epoch * per_epoch + i + 1, per_epoch)
            batch = shuffled[start:start + bs]
            loss = self._loss(batch, gen)
            opt.step(torch.autograd.grad(loss, opt.params))
            total += float(loss.detach()) * len(batch)
        return total / len(x)

    def fit(self, rows, progress=False):
        from ..core.progress import Progress

        rows = self._check_rows(rows).float()
        _warn_if_negative(rows)
        self.n_channels = rows.shape[1]
        c = self.config
        gen = torch.Generator().manual_seed(int(c["seed"]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(c["seed"]))
            self.net = self._build(rows.shape[1])
        self.scale = rows.pow(2).mean().sqrt().clamp_min(1e-8)
        x_all = rows / self.scale
        train, val = self._split(x_all, gen)
        if c.get("init", "random") == "pca":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(c["seed"]))
                _pca_start(self.net, train, float(c["beta"]))
        opt = _Adam(list(self.net.parameters()), float(c["lr"]))
        epochs, patience, min_delta = int(c["epochs"]), int(c["patience"]), float(c["min_delta"])
        bar = Progress(epochs, "vae training", enabled=progress, unit="epoch")
        self.history, best, best_state, waited = {"train": [], "val": []}, float("inf"), None, 0
        self.net.train()
        for epoch in range(epochs):
            self.history["train"].append(self._epoch(train, opt, gen, epoch))
            bar.update(1)
            if not len(val):
                continue
            with torch.no_grad():
                loss = float(self._loss(val, None))
            self.history["val"].append(loss)
            if loss < best * (1 - min_delta):
                best, waited = loss, 0
                best_state = {k: v.clone() for k, v in self.net.state_dict().items()}
            else:
                waited += 1
                if waited >= patience:
                    bar.update(epochs - len(self.history["train"]))
                    break
        self.epochs_run = len(self.history["train"])
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            if c.get("orient", True):
                self._orient(self.net.encode(x_all)[0])
            self.mean_code = self.net.encode(x_all)[0].mean(0)
        return self

    def _orient(self, mu: torch.Tensor) -> None:
        """Flip the sign of each latent whose large excursions are negative (mean below median),
        so that clamping at 0 keeps them. An exact reparametrisation: the encoder's mean row and
        the decoder's input column are negated, ``A'`` is unchanged."""
        flip = mu.mean(0) < mu.median(0).values
        sign = torch.where(flip, -1.0, 1.0)
        enc_out, dec_in = self.net.encoder[-1], self.net.decoder[0]
        k = len(sign)
        enc_out.weight[:k] *= sign[:, None]
        enc_out.bias[:k] *= sign
        dec_in.weight *= sign[None, :]

    def codes(self, rows: torch.Tensor) -> torch.Tensor:
        """Unclamped means ``mu(a)``: the code that ``decode`` inverts."""
        rows = self._check_rows(rows)
        return self.net.encode(rows.float() / self.scale)[0].to(rows.dtype)

    def transform(self, rows):
        mu = self.codes(rows)
        return mu.clamp_min(0) if self.config["clamp"] else mu

    def decode(self, scores):
        net_dtype = next(self.net.parameters()).dtype
        return (self.net.decode(scores.to(net_dtype)) * self.scale).to(scores.dtype)

    def concept_vectors(self):
        z = self.mean_code.clone()
        return torch.autograd.functional.jacobian(self.decode, z).T.contiguous()  # (c', c)

    def _state(self):
        state = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        state["scale"] = self.scale.reshape(())
        state["mean_code"] = self.mean_code
        return state

    def _load_state(self, state):
        self.net = self._build(self.n_channels)
        self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.scale = state["scale"]
        self.mean_code = state["mean_code"]
