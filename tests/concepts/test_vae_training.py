"""TraNCE's VAE training (concepts/vae.py): early stopping on a held-out validation loss,
reproducibility from the seed, a reconstruction that still works, the PCA start, the learning-rate
warm-up and the fused Adam step."""

import pytest
import torch
import torch.nn.functional as F

from visionlens.concepts.factory import load_reducer
from visionlens.concepts.vae import VAEReducer, _Adam
from visionlens.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def _easy_rows(n: int = 600, channels: int = 16, rank: int = 3, seed: int = 0) -> torch.Tensor:
    """Non-negative rows on a rank-3 manifold: what 10 concepts reconstruct easily."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=gen)
    w = 2 * torch.randn(rank, channels, generator=gen)
    return F.softplus(z @ w)


def _relative_error(reducer: VAEReducer, rows: torch.Tensor) -> float:
    return float((reducer.reconstruct(rows) - rows).pow(2).mean() / (rows - rows.mean(0)).pow(2).mean())


def test_early_stopping_stops_before_the_cap_and_keeps_the_best_weights():
    rows = _easy_rows()
    cap, patience, min_delta = 400, 5, 1e-3
    vae = VAEReducer(n_concepts=10, epochs=cap, patience=patience, min_delta=min_delta).fit(rows)
    val = vae.history["val"]
    # the best epoch: the last one whose loss fell by more than min_delta below every earlier one
    best = max(i for i in range(len(val)) if val[i] < min(val[:i], default=float("inf")) * (1 - min_delta))
    assert vae.epochs_run < cap and len(val) == vae.epochs_run
    # it stopped `patience` epochs after the best one, none of which improved on it by min_delta
    assert vae.epochs_run == best + 1 + patience
    assert min(val[best + 1:]) >= val[best] * (1 - min_delta)
    # the weights kept are the best epoch's (within min_delta of the minimum), not the last epoch's
    held_out = vae._split(rows / vae.scale, torch.Generator().manual_seed(0))[1]
    with torch.no_grad():
        kept = float(vae._loss(held_out, None))
    assert abs(kept - val[best]) <= 1e-4 * val[best], (kept, val[best], val[-1])


def test_the_vae_still_reconstructs():
    rows = _easy_rows()
    vae = VAEReducer(n_concepts=10).fit(rows)
    untrained = VAEReducer(n_concepts=10, epochs=1, patience=1, lr=1e-9, init="random").fit(rows)
    assert vae.history["val"][-1] < 0.3 * vae.history["val"][0]
    assert _relative_error(vae, rows) < 0.1 < _relative_error(untrained, rows), (
        _relative_error(vae, rows), _relative_error(untrained, rows))


def test_seeded_fits_are_reproducible_and_leave_the_global_generator_alone(tmp_path):
    rows = _easy_rows(n=300, seed=1)
    before = torch.random.get_rng_state()
    a = VAEReducer(n_concepts=4, seed=3, epochs=20).fit(rows)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = VAEReducer(n_concepts=4, seed=3, epochs=20).fit(rows)
    c = VAEReducer(n_concepts=4, seed=4, epochs=20).fit(rows)
    assert a.epochs_run == b.epochs_run and a.history == b.history
    assert torch.equal(a.transform(rows), b.transform(rows))
    assert not torch.equal(a.transform(rows), c.transform(rows))
    # the new options survive a save / load round trip
    loaded = load_reducer(a.save(tmp_path / "vae.pt"))
    assert loaded.config["patience"] == 5 and torch.equal(loaded.transform(rows), a.transform(rows))


def test_without_a_hold_out_it_trains_every_epoch():
    rows = _easy_rows(n=200)
    vae = VAEReducer(n_concepts=4, epochs=7, val_fraction=0.0).fit(rows)
    assert vae.epochs_run == 7 and vae.history["val"] == [] and len(vae.history["train"]) == 7
    tiny = VAEReducer(n_concepts=2, epochs=3).fit(rows[:10])  # too few rows to hold any out
    assert tiny.epochs_run == 3


@pytest.mark.parametrize("option", [{"patience": 0}, {"val_fraction": 1.0}, {"min_delta": -1.0}])
def test_bad_early_stopping_options_are_one_line(option):
    with pytest.raises(InputError, match="early stopping"):
        VAEReducer(**option)


def _rank_k_error(rows: torch.Tensor, k: int) -> float:
    """Relative error of the best rank-k linear reconstruction (truncated SVD of the centred rows)."""
    centred = rows - rows.mean(0)
    right = torch.linalg.svd(centred, full_matrices=False)[2][:k]
    return float((centred - centred @ right.T @ right).pow(2).mean() / centred.pow(2).mean())


@pytest.mark.parametrize("hidden", [64, 0])
def test_the_pca_start_reconstructs_before_training_with_whitened_codes(hidden):
    rows, k = _easy_rows(rank=6), 4
    frozen = dict(n_concepts=k, hidden=hidden, epochs=1, lr=1e-12, warmup=0)  # the start, all but untrained
    start = VAEReducer(init="pca", **frozen).fit(rows)
    random_start = VAEReducer(init="random", **frozen).fit(rows)
    best_linear = _rank_k_error(rows, k)
    assert _relative_error(start, rows) < 1.1 * best_linear < 3 * best_linear < _relative_error(random_start, rows), (
        _relative_error(start, rows), best_linear, _relative_error(random_start, rows))
    codes = start.codes(rows)  # unit-variance codes, as the N(0, I) prior expects
    assert codes.mean(0).abs().max() < 0.1 and ((codes.std(0) - 1).abs() < 0.2).all(), codes.std(0)


def test_the_pca_start_copes_with_narrow_layers_and_few_channels():
    rows = _easy_rows(n=120, channels=5, rank=2)
    vae = VAEReducer(n_concepts=8, hidden=4, enc_hidden=6, epochs=3, init="pca").fit(rows)  # fewer units than codes
    assert torch.isfinite(vae.transform(rows)).all() and vae.epochs_run == 3
    assert _relative_error(vae, rows) < 1.0
    spiky = _easy_rows()
    spiky[0, 0] = 1e4 * spiky.pow(2).mean().sqrt()  # far beyond exp's float32 range after scaling
    assert torch.isfinite(VAEReducer(n_concepts=4, epochs=2, init="pca").fit(spiky).transform(spiky)).all()


def test_the_learning_rate_ramps_up_over_the_warmup_epochs():
    vae = VAEReducer(lr=0.01, warmup=3)
    rates = [vae._learning_rate(step, steps_per_epoch=4) for step in range(1, 20)]
    assert rates[0] == pytest.approx(0.01 / 12) and rates[5] == pytest.approx(0.005)
    assert all(a < b for a, b in zip(rates[:11], rates[1:12])) and set(rates[11:]) == {0.01}
    assert VAEReducer(lr=0.01, warmup=0)._learning_rate(1, 4) == 0.01


@pytest.mark.skipif(not hasattr(torch, "_fused_adam_"), reason="this torch has no fused Adam kernel")
def test_the_fused_adam_step_equals_the_plain_one():
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 7)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    fused, plain = [p.clone() for p in start], [p.clone() for p in start]
    opt_fused, opt_plain = _Adam(fused, 0.01, fused=True), _Adam(plain, 0.01, fused=False)
    assert opt_fused.fused and not opt_plain.fused
    for _ in range(6):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        opt_fused.step(grads)
        opt_plain.step(grads)
    for a, b, s in zip(fused, plain, start):
        assert (a - s).abs().max() > 0.01  # they moved
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("option", [{"init": "svd"}, {"warmup": -1}])
def test_bad_start_options_are_one_line(option):
    with pytest.raises(InputError, match="VAE init") as err:
        VAEReducer(**option)
    assert "\n" not in str(err.value)


def test_the_decoders_softplus_is_atens_within_rounding_and_its_gradient_is_the_sigmoid():
    """The log1p-free form (ATen's log1p is slow on AVX-512 CPUs) computes the same function."""
    from visionlens.concepts.vae import softplus

    x = torch.linspace(-60, 60, 4801).repeat(2, 1).requires_grad_()
    ours, atens = softplus(x), torch.nn.functional.softplus(x)
    assert (ours - atens).abs().max() < 2e-6 and bool((ours >= 0).all())
    g = torch.randn_like(ours)
    (a,), (b,) = torch.autograd.grad(ours, x, g), torch.autograd.grad(atens, x, g)
    assert (a - b).abs().max() < 1e-6
    x64 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(softplus, (x64,))
