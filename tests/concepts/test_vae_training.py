"""TraNCE's VAE training (concepts/vae.py): early stopping on a held-out validation loss,
reproducibility from the seed, and a reconstruction that still works."""

import pytest
import torch
import torch.nn.functional as F

from visionlens.concepts.factory import load_reducer
from visionlens.concepts.vae import VAEReducer
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
    best = min(range(len(val)), key=val.__getitem__)
    assert vae.epochs_run < cap and len(val) == vae.epochs_run
    # it stopped `patience` epochs after the best one, none of which improved on it
    assert vae.epochs_run == best + 1 + patience
    assert min(val[best + 1:]) >= val[best] * (1 - min_delta)
    # the weights kept are the best epoch's: their validation loss is the minimum, not the last
    held_out = vae._split(rows / vae.scale, torch.Generator().manual_seed(0))[1]
    with torch.no_grad():
        kept = float(vae._loss(held_out, None))
    assert abs(kept - val[best]) <= 1e-4 * val[best], (kept, val[best], val[-1])


def test_the_vae_still_reconstructs():
    rows = _easy_rows()
    vae = VAEReducer(n_concepts=10).fit(rows)
    untrained = VAEReducer(n_concepts=10, epochs=1, patience=1, lr=1e-9).fit(rows)
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
