"""NAFlow beyond plain classifiers (spec §5.4 and issue 7): the similarity variant (top map equals the
gradient of ``w . e`` times the activation, with SFAM's weights ``w``), the metric CNN, ResNet-18,
EfficientNet-Lite0, `explain-pair --method naflow` and one-line errors. About 25 s on 2 CPU cores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import visionlens
from visionlens.cli import main
from visionlens.errors import InputError, LayerError
from visionlens.methods.naflow import NAFlow, SimilarityNAFlow
from visionlens.methods.sfam import SFAM
from visionlens.models.embedder import embedding_model

from helpers import assert_same_state, snapshot


def _similarity_gradient_x_activation(model, layer_module, x, w, finish=lambda e: e):
    """``sum_c ReLU(A * d(w . e)/dA)`` at ``layer_module`` by plain autograd (the oracle)."""
    store = {}

    def hook(mod, inputs, output):
        output.retain_grad()
        store["a"] = output

    handle = layer_module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            e = finish(model(x))
            (e * w).sum().backward()
    finally:
        handle.remove()
    a = store["a"]
    model.zero_grad(set_to_none=True)
    return (a * a.grad).clamp_min(0).sum(1).detach()


def test_similarity_naflow_on_a_tiny_embedding_net(tiny_net):
    x, ref = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    before = snapshot(tiny_net)
    exp = SimilarityNAFlow(tiny_net, max_iter=10)(x, ref)
    assert_same_state(before, snapshot(tiny_net))
    # conv2 (stride 2) has fewer outputs than inputs: merged back to conv1 as in the reference (spec §5.2)
    assert exp.flow_layers == ("features.0+features.3", "features.4", "features.5")
    assert exp.flow.shape == (2, 3, 16, 16)
    assert bool(torch.isfinite(exp.flow).all()) and torch.equal(exp.maps, exp.flow[:, -1])
    # the weights are SFAM's (independent implementation), and the top map is their VJP x activation
    sfam = SFAM(tiny_net)(x, ref)
    torch.testing.assert_close(exp.weights, sfam.weights)
    torch.testing.assert_close(exp.scores, sfam.scores)
    top = _similarity_gradient_x_activation(tiny_net, tiny_net.features, x, sfam.weights)
    torch.testing.assert_close(exp.raw, top, rtol=1e-5, atol=1e-6)


def test_similarity_naflow_pair_on_the_world_metric_cnn():
    zoo = embedding_model("world-metric")
    torch.manual_seed(0)
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    pair = SimilarityNAFlow(zoo.module, max_iter=2).pair(a, b)
    names = ("trunk.stem.0", "trunk.stem.1", "trunk.stem.2", "trunk.layer1", "trunk.layer2", "trunk.layer3")
    layer = zoo.module.backbone.trunk.layer3
    for exp, x, other in ((pair.query, a, b), (pair.reference, b, a)):
        assert exp.flow.shape == (1, 6, 32, 32) and exp.flow_layers == names
        assert bool(torch.isfinite(exp.flow).all())
        w = SFAM(zoo.module)(x, other).weights  # same weights both ways (symmetric contributions)
        torch.testing.assert_close(exp.weights, w)
        torch.testing.assert_close(exp.raw, _similarity_gradient_x_activation(zoo.module, layer, x, w), rtol=1e-4, atol=1e-6)
    # the plain WorldMetricNet (trunk is not an nn.Sequential, opened in call order) gives the same flow
    plain = SimilarityNAFlow(visionlens.load_model("world-metric").module, max_iter=2).pair(a, b)
    torch.testing.assert_close(plain.query.flow, pair.query.flow, rtol=1e-4, atol=1e-5)


def test_resnet18_random_init_gives_one_map_per_stage_and_block():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    t = NAFlow(model, max_iter=2).terms(torch.randn(1, 3, 64, 64))
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert t.names == ["conv1", "bn1", "relu", "maxpool"] + blocks
    assert [tuple(m.shape[-2:]) for m in t.maps] == [(32, 32)] * 3 + [(16, 16)] * 3 + [(8, 8)] * 2 + [(4, 4)] * 2 + [(2, 2)] * 2
    assert all(bool(torch.isfinite(m).all()) for m in t.maps)


def test_efficientnet_lite0_blocks_in_a_module_list_are_followed(efficientnet):
    exp = NAFlow(efficientnet.module, efficientnet.layer, max_iter=1)(torch.randn(1, 3, 32, 32))
    assert exp.flow_layers == ("_conv_stem", "_bn0", "_stem_act", *[f"_blocks.{i}" for i in range(16)],
                               "_conv_head", "_bn1", "_head_act")
    assert exp.flow.shape == (1, 22, 32, 32) and bool(torch.isfinite(exp.flow).all())


def test_a_module_without_an_inverse_is_named_in_one_line(tiny_net):
    class Mystery(nn.Module):
        def forward(self, x):
            return x.flip(-1)

    tiny_net.features[2] = Mystery()
    with pytest.raises(LayerError, match="Mystery") as err:
        SimilarityNAFlow(tiny_net)(torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16))
    assert "\n" not in str(err.value)


def _random_pair(folder, seed: int, size: int) -> list[str]:
    """Two random RGB images ``a.png`` and ``b.png`` in ``folder``."""
    rng = np.random.default_rng(seed)
    files = [str(folder / name) for name in ("a.png", "b.png")]
    for path in files:
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return files


def test_cli_explain_pair_naflow_writes_both_flows(tmp_path, capsys):
    files = _random_pair(tmp_path, seed=0, size=80)
    out = tmp_path / "out"
    rc = main(["explain-pair", *files, "--model", "world-metric", "--method", "naflow", "--max-iter", "2",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    # 2 iterations per layer: the pair is written, with one line saying the solves did not converge
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: naflow:")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"][-1] == "trunk.layer3" and len(summary["layers"]) == 6
    assert summary["converged"] is False
    for role in ("query", "match"):
        for key in ("view", "overlay", "flow", "gif"):
            assert (out / summary["files"][role][key]).is_file()
    with np.load(out / "pair.npz") as npz:
        assert npz["naflow_query_flow"].shape == npz["naflow_match_flow"].shape == (6, 64, 64)
    page = (out / "index.html").read_text()
    assert all(summary["files"][role]["gif"] in page for role in ("query", "match"))
    # naflow writes its own page: combined with other methods it is refused, nothing written
    rc = main(["explain-pair", *files, "--model", "world-metric", "--method", "naflow,sfam", "--out", str(tmp_path / "o2")])
    assert rc == 2 and not (tmp_path / "o2").exists()
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_retrieve_with_naflow_writes_the_last_layer_maps(tmp_path):
    """`retrieve --method naflow` explains each top match with the flow's last-layer map (the npz
    holds what SimilarityNAFlow.pair gives for that query/match pair)."""
    from visionlens.data.world import World, WorldConfig

    b = World(WorldConfig(size=64)).batch("test", range(4))
    gallery = tmp_path / "g"
    gallery.mkdir()
    for i in range(4):
        Image.fromarray((b["image"][i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(gallery / f"{i}.png")
    out = tmp_path / "out"
    rc = main(["retrieve", str(gallery / "1.png"), "--gallery", str(gallery), "--model", "world-metric", "--method",
               "naflow", "--top", "2", "--no-cache", "--quiet", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    match = summary["queries"][0]["matches"][1]
    with np.load(out / "1.top02.npz") as npz:
        saved = npz["naflow_query_map"]
    model = visionlens.load_model("world-metric", device="cpu")
    views = [model.preprocess.normalize(model.preprocess.view(Image.open(p).convert("RGB")))[None]
             for p in (gallery / "1.png", match["file"])]
    pair = SimilarityNAFlow(model.module).pair(*views)
    assert np.allclose(saved, pair.query.maps[0].numpy(), atol=1e-4)


def test_cli_naflow_default_is_the_damped_solve_and_bad_damp_is_one_line(tmp_path, capsys):
    files = _random_pair(tmp_path, seed=1, size=72)
    out = tmp_path / "out"
    rc = main(["explain-pair", *files, "--model", "world-metric", "--method", "naflow", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["damp"] == 0.1 and summary["max_iter"] == 1000 and summary["converged"] is True
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: naflow:")]
    for bad in ("1.5", "-0.1", "nan"):
        rc = main(["explain-pair", *files, "--model", "world-metric", "--method", "naflow", "--damp", bad,
                   "--out", str(tmp_path / "bad")])
        assert rc == 2 and not (tmp_path / "bad").exists()
        err = capsys.readouterr().err.strip()
        assert "--damp" in err and err.count("\n") == 0


@pytest.mark.parametrize("damp", [-0.1, 1.5, True, "0.1"])
def test_bad_damp_is_a_one_line_input_error(tiny_net, damp):
    with pytest.raises(InputError, match="damp") as err:
        NAFlow(tiny_net, damp=damp)
    assert "\n" not in str(err.value)
