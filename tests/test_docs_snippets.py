"""The Python examples of the docs pages run as written, given the inputs their comments name
(``x``, a reference batch, a bank file): a user copies them first. Examples that need hub weights,
a user's own files or minutes of CPU are left out; the README's quick start is tested in
test_readme.py."""

from __future__ import annotations

import pytest
import torch

from test_readme import ROOT, code_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


def _example(page: str, index: int) -> str:
    return code_blocks((ROOT / "docs" / page).read_text(encoding="utf-8"), "python")[index]


def _run(page: str, index: int, **names) -> dict:
    scope = dict(names)
    exec(compile(_example(page, index), f"docs/{page} (example {index + 1})", "exec"), scope)  # noqa: S102
    return scope


@pytest.fixture
def world_inputs():
    torch.manual_seed(0)
    return {"x": torch.randn(2, 3, 64, 64), "x_ref": torch.randn(2, 3, 64, 64)}


def test_the_world_example(tmp_path):
    scope = _run("guides/world.md", 0)
    assert scope["batch"]["image"].shape == (16, 3, 128, 128)


def test_the_daam_example(tmp_path, monkeypatch, world_inputs):
    from visionlens.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["bank", "--model", "world-dino", "--n", "40", "--out", "bank.pt"]) == 0  # the example's bank.pt
    scope = _run("methods/daam.md", 0, x=world_inputs["x"])
    assert scope["exp"].flow.shape[:2] == (2, 4)


def test_the_sfam_examples(world_inputs):
    import visionlens

    emb = visionlens.embedder("world-metric")
    with torch.no_grad():
        support, gallery, r = (emb(torch.randn(n, 3, 64, 64)) for n in (4, 8, 2))
    x, x_ref = world_inputs["x"], world_inputs["x_ref"]
    scope = _run("methods/sfam.md", 0, x=x, x_ref=x_ref, x_a=x, x_b=x_ref, support_emb=support, gallery_emb=gallery,
                 r=r)
    assert scope["pair"].query.maps.shape == (2, 64, 64)
    _run("methods/sfam.md", 1, emb=emb, x=x, x_ref=x_ref, maps=scope["pair"].query.maps)


def test_the_attnlrp_example(world_inputs):
    import visionlens

    scope = _run("methods/attnlrp.md", 0, vit=visionlens.load_model("world-vit").module, x=world_inputs["x"])
    assert scope["exp"].maps.shape == (2, 64, 64)


def test_the_similarity_naflow_example(world_inputs):
    scope = _run("naflow.md", 1, a=world_inputs["x"][:1], b=world_inputs["x_ref"][:1])
    assert scope["pair"].query.flow.shape[:2] == (1, 6)


# ---- docs/guides/switching.md: each example runs the other library and ours; they must agree ------


def _agree(scope: dict, atol: float) -> None:
    theirs, ours = (torch.as_tensor(scope[name]).detach().float() for name in ("theirs", "ours"))
    assert theirs.shape == ours.shape
    assert float(theirs.abs().max()) > 0  # a degenerate (all-zero) example would agree trivially
    assert torch.allclose(ours, theirs, atol=atol * float(theirs.abs().max()), rtol=0), \
        float((ours - theirs).abs().max())


@pytest.mark.parametrize("index, library", [(0, "pytorch_grad_cam"), (1, "captum"), (2, "captum"), (3, "torchcam"),
                                            (4, "quantus")])
def test_the_switching_examples_agree_with_the_other_library(index, library):
    pytest.importorskip(library)
    _agree(_run("guides/switching.md", index), atol=1e-4)
