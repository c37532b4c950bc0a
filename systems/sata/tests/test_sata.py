"""SATA (visionlens_sata): scores against brute force, split/merge against loops, batch
independence (and the reference coupling that breaks it), FFN accounting, timm parity,
corruptions and the CLI. About 20 s on an idle 2-core machine."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from helpers import one_error_line
from visionlens.cli import main
from visionlens.errors import InputError, LayerError
from visionlens.models.world_models import WorldViT
from visionlens_sata.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from visionlens_sata.sata import (
    SataConfig, SataViT, autocorrelation_scores, bipartite_group, local_morans_i, sata_block_indices, split_mask,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world_vit():
    from visionlens.models.zoo import load_model

    return load_model("world-vit").module


@pytest.fixture(scope="module")
def world_images():
    from visionlens.data.world import World
    from visionlens.models.world_eval import normalise

    batch = World().batch("test", range(6))
    return normalise(batch["image"]), batch["image"]


def _random_vit(seed: int = 0, depth: int = 4) -> WorldViT:
    torch.manual_seed(seed)
    return WorldViT(img_size=32, patch=4, dim=32, depth=depth, heads=4, num_classes=5).eval()


# --- scores, split, grouping ---------------------------------------------------------------------

def test_local_morans_i_matches_double_loop_with_transposed_weights():
    torch.manual_seed(0)
    z, w = torch.randn(3, 7), torch.rand(3, 7, 7)  # asymmetric weights
    got = local_morans_i(z, w)
    for b in range(3):
        for i in range(7):
            ref = sum(z[b, i] * w[b, j, i] * z[b, j] for j in range(7))  # w[j, i]: j attends to i
            assert abs(float(got[b, i]) - float(ref)) < 1e-5
    # the other convention differs on an asymmetric matrix
    assert not torch.allclose(got, z * torch.einsum("bij,bj->bi", w, z))
    # and equals the reference's diag((z z^T) W) form
    diag = torch.diagonal(z[:, :, None] @ z[:, None, :] @ w, dim1=1, dim2=2)
    torch.testing.assert_close(got, diag)


def test_autocorrelation_scores_match_explicit_formula():
    torch.manual_seed(1)
    x, w = torch.randn(2, 9, 5), torch.rand(2, 9, 9)
    got = autocorrelation_scores(x, w)
    for b in range(2):
        a = [float(x[b, i].sum()) / 5 for i in range(9)]
        ma = sum(a) / 9
        sa = math.sqrt(sum((v - ma) ** 2 for v in a) / 8)  # unbiased
        z = [(v - ma) / sa for v in a]
        moran = [z[i] * sum(float(w[b, j, i]) * z[j] for j in range(9)) for i in range(9)]
        mm = sum(moran) / 9
        sm = math.sqrt(sum((v - mm) ** 2 for v in moran) / 8)
        for i in range(9):
            assert abs(float(got[b, i]) - (moran[i] - mm) / sm) < 1e-4


def test_split_hand_checked_and_partitions():
    # sorted: -2, -0.5, 0.4, 0.5, 0.6, 1 -> lower median 0.4, mean 0 -> B = {|s| <= 0.4} = {index 5}
    s = torch.tensor([-2.0, -0.5, 0.5, 1.0, 0.6, 0.4])
    assert split_mask(s, 1.0, exact_mean=True).tolist() == [False, False, False, False, False, True]
    # alpha = 2 widens the bounds to |s| <= 0.8
    assert split_mask(s, 2.0, exact_mean=True).tolist() == [False, True, True, False, True, True]
    scores = torch.randn(4, 64)
    in_b = split_mask(scores)
    assert in_b.shape == scores.shape and in_b.dtype == torch.bool  # B and its complement partition N


def _loop_group(tokens: torch.Tensor, merge: str):
    src, dst = tokens[0::2], tokens[1::2]
    sims = [[float(src[k] @ dst[j]) for j in range(len(dst))] for k in range(len(src))]
    best = [max(range(len(dst)), key=lambda j: row[j]) for row in sims]
    sigma = [max(row) for row in sims]
    order = sorted(range(len(src)), key=lambda k: -sigma[k])
    target = best if merge == "corrected" else [best[order[k]] for k in range(len(src))]
    merged = []
    for j in range(len(dst)):
        members = [dst[j]] + [src[k] for k in range(len(src)) if target[k] == j]
        merged.append(torch.stack(members).mean(0))
    return torch.stack(merged), src[order]


@pytest.mark.parametrize("merge", ["corrected", "reference"])
@pytest.mark.parametrize("n", [5, 8])
def test_bipartite_group_matches_loop(merge, n):
    torch.manual_seed(n)
    tokens = torch.randn(n, 6)
    g = bipartite_group(tokens, merge)
    merged, residual = _loop_group(tokens, merge)
    torch.testing.assert_close(g.merged, merged)
    torch.testing.assert_close(g.residual, residual)
    assert g.merged.shape[0] == n // 2 and g.residual.shape[0] == (n + 1) // 2


def test_merge_modes_differ():
    torch.manual_seed(3)
    tokens = torch.randn(20, 4)
    assert not torch.allclose(bipartite_group(tokens, "corrected").merged, bipartite_group(tokens, "reference").merged)


def test_gamma_schedule():
    assert sata_block_indices(12, 0.7) == [8, 9, 10, 11]
    assert sata_block_indices(4, 0.7) == [2, 3]
    assert sata_block_indices(6, 1.0) == []
    with pytest.raises(InputError):
        SataConfig(gamma=1.5)
    with pytest.raises(InputError):
        SataConfig(merge="nope")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InputError, match="alpha"):
            SataConfig(alpha=bad)
        with pytest.raises(InputError, match="gamma"):
            SataConfig(gamma=bad)


# --- the model ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [SataConfig(), SataConfig(merge="reference", restore_order=False),
                                 SataConfig(grouping="random"), SataConfig(grouping="tome")])
def test_batch_independence_on_the_trained_world_vit(world_vit, world_images, cfg):
    x, _ = world_images
    model = SataViT(world_vit, cfg)
    with torch.no_grad():
        batched = model(x)
        for i in range(len(x)):
            torch.testing.assert_close(model(x[i:i + 1])[0], batched[i], atol=1e-5, rtol=0)
        # any other batch composition: reversed, and image 0 among different neighbours
        torch.testing.assert_close(model(x.flip(0)).flip(0), batched, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(torch.cat([x[:1], x[:1] * 0.3]))[0], batched[0], atol=1e-5, rtol=0)


def test_reference_batch_coupling_is_batch_dependent(world_vit, world_images):
    x, _ = world_images
    coupled = SataViT(world_vit, SataConfig(merge="reference", reference_batch_coupling=True))
    per_image = SataViT(world_vit, SataConfig(merge="reference", exact_mean=False))
    with torch.no_grad():
        batched = coupled(x)
        alone = torch.cat([coupled(x[i:i + 1]) for i in range(len(x))])
        assert (batched - alone).abs().max() > 1e-3
        # changing the other batch members changes image 0's output
        assert (coupled(torch.cat([x[:1], x[1:] * 0.5]))[0] - batched[0]).abs().max() > 1e-4
        # at batch size 1 there is no coupling: same as the per-image reference merge
        torch.testing.assert_close(alone, torch.cat([per_image(x[i:i + 1]) for i in range(len(x))]), atol=1e-4, rtol=0)


def test_no_merging_equals_plain_model(world_vit, world_images):
    x, _ = world_images
    with torch.no_grad():
        plain = world_vit(x)
        for model in (SataViT(world_vit, enabled=False), SataViT(world_vit, SataConfig(gamma=1.0)),
                      SataViT(world_vit, SataConfig(alpha=0.0))):
            assert torch.equal(model(x), plain)
        wide = SataViT(world_vit, SataConfig(alpha=1e9))  # every token in set B: nothing merged
        torch.testing.assert_close(wide(x), plain, atol=1e-6, rtol=0)
        assert all((n == 65).all() for n in wide.last_account.ffn_tokens.values())
        assert int(wide.last_account.saved_flops().sum()) == 0


def test_sata_changes_outputs_and_leaves_model_unchanged(world_vit, world_images):
    x, _ = world_images
    blocks = list(world_vit.blocks)
    state = {k: v.clone() for k, v in world_vit.state_dict().items()}
    with torch.no_grad():
        out = SataViT(world_vit)(x)
        assert (out - world_vit(x)).abs().max() > 1e-4
    assert list(world_vit.blocks) == blocks
    assert all(torch.equal(v, world_vit.state_dict()[k]) for k, v in state.items())


def test_ffn_accounting_and_token_conservation(world_vit, world_images):
    x, _ = world_images
    model = SataViT(world_vit)
    seen, conserved = {}, {}
    inputs = {}
    hooks = []
    for i, block in enumerate(world_vit.blocks):
        hooks.append(block.mlp.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, a[0].reshape(-1, a[0].shape[-1]).shape[0])))
        hooks.append(block.norm2.register_forward_pre_hook(lambda m, a, i=i: inputs.setdefault(i, a[0])))
        hooks.append(block.register_forward_hook(lambda m, a, o, i=i: conserved.__setitem__(i, (a[0].shape, o.shape))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    account = model.last_account
    assert sorted(account.ffn_tokens) == [2, 3]
    for i in range(4):
        expect = int(account.tokens_through()[:, i].sum())
        assert seen[i] == expect  # the rows that really went through the FFN
    # token count conserved in every block (the SATA blocks are swapped in, so hook the first block's input)
    assert conserved[0][0] == conserved[0][1] == (6, 65, 96)
    # FFN token formula 1 + |B| + floor(|A| / 2) from an independent recomputation of the split
    ffn_tokens = account.ffn_tokens[2]
    assert ((ffn_tokens > 1) & (ffn_tokens < 65)).all()
    # hand-checked FLOPs: C = 96, H = 192 -> 4 * 96 * 192 per token
    assert account.flops_per_token == 73728
    expected = sum((65 - account.ffn_tokens[b]) for b in (2, 3)) * 73728
    assert torch.equal(account.saved_flops(), expected)
    assert account.total_flops() == 4 * 65 * 73728


def test_ffn_token_formula_in_one_block():
    model = _random_vit(2, depth=2)
    sata = SataViT(model, SataConfig(gamma=0.5))  # SATA in block 1
    captured = {}
    h = model.blocks[1].attn.attn_drop.register_forward_hook(lambda m, a, o: captured.setdefault("p", o))
    x = torch.randn(3, 3, 32, 32)
    try:
        with torch.no_grad():
            sata(x)
    finally:
        h.remove()
    # recompute the split from the block input: x + attn(norm1(x)) (no LayerScale in WorldViT)
    blk = model.blocks[1]
    with torch.no_grad():
        xin = model.blocks[0](torch.cat([model.cls_token.expand(3, -1, -1), model.patch_embed(x)], 1) + model.pos_embed)
        xa = xin + blk.attn(blk.norm1(xin))
        in_b = split_mask(autocorrelation_scores(xa[:, 1:], captured["p"].mean(1)[:, 1:, 1:]), 1.0, exact_mean=True)
    n_b, n_a = in_b.sum(1), (~in_b).sum(1)
    expected = torch.where(n_a > 2, 1 + n_b + n_a // 2, 1 + n_b)
    assert torch.equal(sata.last_account.ffn_tokens[1], expected)


def test_peers_match_the_sata_budget(world_vit, world_images):
    x, _ = world_images
    counts = {}
    with torch.no_grad():
        for grouping in ("sata", "random", "tome"):
            model = SataViT(world_vit, SataConfig(grouping=grouping))
            model(x)
            counts[grouping] = model.last_account.ffn_tokens[2]  # the first SATA block sees the same input
    assert torch.equal(counts["sata"], counts["random"]) and torch.equal(counts["sata"], counts["tome"])


# --- timm --------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["token", "avg"])
def test_timm_vit_with_layerscale_and_qk_norm(pool):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=4, num_classes=7, init_values=0.5,
        qk_norm=True, global_pool=pool,
    ).eval()
    with torch.no_grad():
        for blk in vit.blocks:
            blk.ls1.gamma.uniform_(0.2, 1.5)
            blk.ls2.gamma.uniform_(0.2, 1.5)
    fused = [b.attn.fused_attn for b in vit.blocks]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain = vit(x)
        wide = SataViT(vit, SataConfig(alpha=1e9))  # no merging: must equal timm's own forward (LayerScale, q/k norm)
        torch.testing.assert_close(wide(x), plain, atol=1e-5, rtol=0)
        sata = SataViT(vit)
        out = sata(x)
        assert (out - plain).abs().max() > 1e-5
        for i in range(4):
            torch.testing.assert_close(sata(x[i:i + 1])[0], out[i], atol=1e-5, rtol=0)
        assert (sata.last_account.ffn_tokens[3] < 65).all()
    assert [b.attn.fused_attn for b in vit.blocks] == fused


def test_unsupported_block_is_refused():
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=3,
        block_fn=timm.models.vision_transformer.ResPostBlock,
    ).eval()
    with pytest.raises(LayerError):
        SataViT(vit)
    with pytest.raises(LayerError):
        SataViT(nn.Sequential(nn.Conv2d(3, 4, 3)))


# --- corruptions -------------------------------------------------------------------------------

def test_corruptions_deterministic_batch_independent_and_severity_monotone(world_images):
    _, images = world_images
    assert len(CORRUPTIONS) >= 8 and SEVERITIES == (1, 2, 3, 4, 5)
    for name in CORRUPTIONS:
        a = corrupt(images, name, 3, seed=7)
        assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, corrupt(images, name, 3, seed=7))
        torch.testing.assert_close(corrupt(images[2:5], name, 3, seed=7, ids=[2, 3, 4]), a[2:5])
        dist = [float((corrupt(images, name, s, seed=7) - images).abs().mean()) for s in SEVERITIES]
        assert all(d0 < d1 for d0, d1 in zip(dist, dist[1:])), (name, dist)
    assert not torch.equal(corrupt(images, "gaussian_noise", 2, seed=1), corrupt(images, "gaussian_noise", 2, seed=2))
    with pytest.raises(InputError):
        corrupt(images, "fog", 1)
    with pytest.raises(InputError):
        corrupt(images, "contrast", 6)


# --- CLI ---------------------------------------------------------------------------------------

def test_cli_writes_the_table(tmp_path, capsys):
    out = tmp_path / "sata.md"
    torch.set_num_threads(2)  # the command runs on --threads 1, then gives the caller's setting back
    rc = main(["sata", "evaluate", "--images", "6", "--seeds", "0", "--batch", "3", "--corruptions", "contrast",
               "--severities", "1", "5", "--latency-images", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    assert torch.get_num_threads() == 2
    text = out.read_text()
    for needle in ("class-sorted, bs 3", "shuffled, bs 3", "batch size 1", "sata-reference-coupled", "random-peer",
                   "tome-peer", "mCE"):
        assert needle in text
    raw = json.loads(out.with_suffix(".json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert raw["n"] == 6
    # per-image SATA is batch independent (to 1e-5, tested above), so every protocol scores within one
    # image of the others: different batch shapes use different kernels, and a near-tie may flip
    rows = [r.split("|") for r in text.splitlines() if "| sata |" in r]
    rows = [r for r in rows if len(r) > 6]  # the accuracy table, not the latency table
    assert len(rows) == 3
    for column in (4, 5):  # clean, corrupted accuracy
        values = [float(r[column].split("±")[0]) for r in rows]
        assert max(values) - min(values) <= 100 / 6 + 0.1, values
    assert main(["sata", "evaluate", "--corruptions", "fog", "--out", str(tmp_path / "x.md")]) != 0
    assert not (tmp_path / "x.md").exists()


@pytest.mark.parametrize("suffix", [".md", ".json", ".jsonl"])
def test_cli_refuses_an_output_that_is_the_weights_file_even_with_force(tmp_path, capsys, suffix):
    """`--weights w.json --out w.md --force` would have replaced the weights with the raw counts."""
    weights = tmp_path / f"w{suffix}"
    weights.write_bytes(b"weights")
    (tmp_path / "data").mkdir()
    assert main(["sata", "evaluate", "--data", str(tmp_path / "data"), "--model", "timm:vit_tiny_patch16_224",
                 "--weights", str(weights), "--out", str(tmp_path / "w.md"), "--force", "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "--out", "is the --weights input too")
    assert weights.read_bytes() == b"weights"


def test_cli_keeps_an_existing_table_or_json_unless_forced(tmp_path, capsys):
    """The table (--out) and the .json next to it used to replace the user's files without a word."""
    tiny = ["sata", "evaluate", "--images", "2", "--seeds", "0", "--batch", "2", "--corruptions", "contrast",
            "--severities", "1", "--latency-images", "1", "--quiet"]
    out = tmp_path / "sata.md"
    for mine in (out, out.with_suffix(".json")):
        mine.write_bytes(b"mine")
        assert main([*tiny, "--out", str(out)]) == 2
        one_error_line(capsys.readouterr().err, str(mine), "--force")
        assert mine.read_bytes() == b"mine" and list(tmp_path.iterdir()) == [mine]
        mine.unlink()
    out.write_bytes(b"mine")
    assert main([*tiny, "--out", str(out), "--force"]) == 0
    assert "| sata |" in out.read_text() and json.loads(out.with_suffix(".json").read_text())["n"] == 2
    assert main([*tiny, "--out", str(tmp_path / "raw.json")]) == 2  # the table and its .json would collide
    one_error_line(capsys.readouterr().err, "raw.json", ".md")
    assert main([*tiny, "--out", str(out / "x.md")]) == 2  # below a file
    one_error_line(capsys.readouterr().err, str(out), "is a file, not a folder")


@pytest.mark.parametrize("flag,value", [
    ("--alpha", "nan"), ("--alpha", "inf"), ("--alpha", "-inf"), ("--gamma", "nan"), ("--gamma", "1.5"),
    ("--gamma", "-0.1"), ("--images", "1"), ("--images", "2.5"), ("--batch", "0"), ("--severities", "6"),
    ("--severities", "0"), ("--latency-images", "0"), ("--threads", "0"), ("--threads", "nan"),
    ("--seeds", "-1"), ("--seeds", "x"), ("--bs1-seeds", "1e3"),
])
def test_cli_refuses_every_bad_number_before_work(tmp_path, capsys, flag, value):
    """``--alpha nan`` used to run (0 % saved, mCE "nan", exit 0): every numeric flag is checked."""
    out = tmp_path / "sata.md"
    rc = main(["sata", "evaluate", "--images", "6", "--out", str(out), "--quiet", f"{flag}={value}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
    assert flag in err and not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("argv", [["--seeds", "0", "0"], ["--seeds", "0,1,0"], ["--seeds", "1", "0,1"],
                                  ["--bs1-seeds", "2,2"]])
def test_cli_refuses_a_seed_listed_twice(tmp_path, capsys, argv):
    """`--seeds 0 0` used to run seed 0 twice and count it twice in the mean: one line, exit 2."""
    out = tmp_path / "sata.md"
    assert main(["sata", "evaluate", "--images", "6", "--out", str(out), "--quiet", *argv]) == 2
    one_error_line(capsys.readouterr().err, argv[0], "lists a seed twice")
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_raw_json_is_strict():
    from visionlens_sata.evaluate import raw_to_json

    raw = {"correct": {("sorted", 0, "sata", ("clean", 0)): 3}, "savings": {("sorted", 0, "sata"): float("nan")},
           "latency_ms": {"sata": {"bs1": float("inf")}}}
    text = raw_to_json(raw)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON")) == {
        "correct": {"sorted|0|sata|clean:0": 3}, "savings": {"sorted|0|sata": None}, "latency_ms": {"sata": {"bs1": None}}}


def test_restoring_the_token_order_does_not_change_outputs(world_vit, world_images):
    x, _ = world_images
    with torch.no_grad():
        kept = SataViT(world_vit, SataConfig(restore_order=True))(x)
        moved = SataViT(world_vit, SataConfig(restore_order=False))(x)
    torch.testing.assert_close(kept, moved, atol=1e-5, rtol=0)


def test_daam_runs_through_sata_blocks(world_vit, world_images):
    from visionlens import DAAM

    x, _ = world_images
    daam = DAAM(world_vit)
    plain = daam(x[:3])
    sata = SataViT(world_vit)
    with sata.patched(3, 65) as account:
        with_sata = daam(x[:3])
    assert with_sata.maps.shape == plain.maps.shape and torch.isfinite(with_sata.maps).all()
    assert (with_sata.maps - plain.maps).abs().max() > 1e-4  # the SATA blocks were in the graph
    assert sorted(account.ffn_tokens) == [2, 3]
    assert list(world_vit.blocks)[2].__class__.__name__ == "Block"  # restored afterwards


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_infinite_input_is_one_input_error(world_vit, value):
    """SataViT used to return NaN logits for a NaN batch without a word (LGD.segment refuses it)."""
    x = torch.rand(2, 3, 64, 64)
    x[1, 0, 3, 4] = value
    with pytest.raises(InputError, match="NaN or infinite"):
        SataViT(world_vit)(x)
    assert SataViT(world_vit)(torch.rand(1, 3, 64, 64)).isfinite().all()


@pytest.mark.parametrize("flag", [["--workers", "2"], ["--workers", "0"], ["--subset-classes", "off"]])
def test_cli_refuses_data_only_flags_without_data(tmp_path, capsys, flag):
    out = tmp_path / "x.md"
    assert main(["sata", "evaluate", "--images", "2", "--out", str(out), *flag]) == 2
    one_error_line(capsys.readouterr().err, flag[0], "--data")
    assert not out.exists()
