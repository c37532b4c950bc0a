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
* training: mini-batches of ``batch_size`` rows for at most ``epochs`` epochs, stopped early when
  the loss on a held-out ``val_fraction`` of the rows (deterministic: decoded from ``mu``) has not
  fallen by a relative ``min_delta`` for ``patience`` epochs; the weights of the best validation
  epoch are kept. ``history`` records the losses, ``epochs_run`` the epochs trained.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .reducers import Reducer, register_reducer


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _VAE(nn.Module):
    def __init__(self, channels: int, concepts: int, hidden: int, enc_hidden: int):
        super().__init__()
        self.encoder = _mlp([channels, enc_hidden, 2 * concepts])
        self.decoder = _mlp([concepts, hidden, channels] if hidden else [concepts, channels])

    def encode(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z):
        return nn.functional.softplus(self.decoder(z))


class _Adam:
    """Plain Adam (Kingma & Ba) on a parameter list. ``torch.optim`` is avoided on purpose: its
    first use imports the compiler stack, which costs seconds on a small CPU."""

    def __init__(self, params: list, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.t))


@register_reducer
class VAEReducer(Reducer):
    kind = "vae"

    def __init__(self, n_concepts: int = 10, hidden: int = 64, enc_hidden: int = 128, beta: float = 1e-3,
                 epochs: int = 100, lr: float = 1e-2, batch_size: int = 128, clamp: bool = True, orient: bool = True,
                 seed: int = 0, patience: int = 5, val_fraction: float = 0.1, min_delta: float = 1e-3):
        if int(patience) < 1 or not 0 <= float(val_fraction) < 1 or float(min_delta) < 0:
            raise InputError(f"VAE early stopping needs patience >= 1, 0 <= val_fraction < 1 and min_delta >= 0; "
                             f"got {patience}, {val_fraction}, {min_delta}")
        super().__init__(n_concepts=n_concepts, hidden=hidden, enc_hidden=enc_hidden, beta=beta, epochs=epochs,
                         lr=lr, batch_size=batch_size, clamp=clamp, orient=orient, seed=seed, patience=patience,
                         val_fraction=val_fraction, min_delta=min_delta)
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
        return ((self.net.decode(z) - x).pow(2).sum(-1).mean() + float(self.config["beta"]) * kl) / x.shape[1]

    def _split(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and held-out validation rows (no hold-out below 20 rows or with ``val_fraction=0``)."""
        n_val = int(len(x) * float(self.config["val_fraction"]))
        if len(x) < 20 or n_val < 1:
            return x, x[:0]
        order = torch.randperm(len(x), generator=gen)
        return x[order[n_val:]], x[order[:n_val]]

    def _epoch(self, x: torch.Tensor, opt: "_Adam", gen: torch.Generator) -> float:
        bs, total = int(self.config["batch_size"]), 0.0
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), bs):
            batch = x[order[start:start + bs]]
            loss = self._loss(batch, gen)
            opt.step(torch.autograd.grad(loss, opt.params))
            total += float(loss.detach()) * len(batch)
        return total / len(x)

    def fit(self, rows, progress=False):
        from ..core.progress import Progress

        rows = self._check_rows(rows).float()
        self.n_channels = rows.shape[1]
        c = self.config
        gen = torch.Generator().manual_seed(int(c["seed"]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(c["seed"]))
            self.net = self._build(rows.shape[1])
        self.scale = rows.pow(2).mean().sqrt().clamp_min(1e-8)
        x_all = rows / self.scale
        train, val = self._split(x_all, gen)
        opt = _Adam(list(self.net.parameters()), float(c["lr"]))
        epochs, patience, min_delta = int(c["epochs"]), int(c["patience"]), float(c["min_delta"])
        bar = Progress(epochs, "vae training", enabled=progress, unit="epoch")
        self.history, best, best_state, waited = {"train": [], "val": []}, float("inf"), None, 0
        self.net.train()
        for _ in range(epochs):
            self.history["train"].append(self._epoch(train, opt, gen))
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
