"""Gallery retrieval: ranking against brute force, batching, the embedding cache, bad galleries, CLI."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import visionlens
from visionlens import SFAM
from visionlens.cli import main
from visionlens.data.world import World, WorldConfig
from visionlens.errors import InputError
from visionlens.models.embedder import embedding_model
from visionlens.retrieval import embed_gallery, retrieve_files
from visionlens.core.similarity import rank


def _save(img, path):
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    gallery, queries = root / "gallery", root / "queries"
    gallery.mkdir()
    queries.mkdir()
    world = World(WorldConfig(size=64), seed=0)
    for i, img in enumerate(world.batch("test", range(24))["image"]):
        _save(img, gallery / f"g{i:02d}.png")
    qs = []
    for i, img in zip((2, 5, 11), world.batch("test", (2, 5, 11), view=1)["image"]):
        _save(img, queries / f"q{i}.png")
        qs.append(queries / f"q{i}.png")
    return gallery, qs


@pytest.fixture(scope="module")
def metric_zoo():
    return embedding_model("world-metric")


def _tensor(model, path):
    return model.preprocess(visionlens.data.load_image(path))


def test_ranking_equals_brute_force(world_files, metric_zoo, tmp_path):
    gallery, queries = world_files
    sfam = SFAM(metric_zoo.module)
    gal = embed_gallery(gallery, metric_zoo, sfam.embed, batch_size=5, cache=tmp_path, progress=False)
    paths = sorted(gallery.glob("*.png"))
    assert gal.paths == paths and gal.cached == 0
    x = torch.stack([_tensor(metric_zoo, p) for p in paths])
    with torch.no_grad():
        brute_g = metric_zoo.module(x)
        brute_q = metric_zoo.module(torch.stack([_tensor(metric_zoo, q) for q in queries]))
    cos = F.normalize(brute_q, dim=1) @ F.normalize(brute_g, dim=1).t()
    order, scores = rank(sfam.embed(torch.stack([_tensor(metric_zoo, q) for q in queries])), gal.embeddings, "cosine")
    assert torch.equal(order, cos.argsort(dim=1, descending=True, stable=True))
    torch.testing.assert_close(scores, cos.sort(dim=1, descending=True).values, atol=1e-5, rtol=1e-5)
    labels = World(WorldConfig(size=64), seed=0).batch("test", range(24))["label"]
    assert labels[order[:, 0]].tolist() == labels[[2, 5, 11]].tolist()  # the top match has the query's class
    order_e, _ = rank(brute_q, brute_g, "euclidean")
    assert torch.equal(order_e, torch.cdist(brute_q, brute_g).argsort(dim=1, stable=True))
    # the cache: a second run embeds nothing; a changed file is embedded again
    again = embed_gallery(gallery, metric_zoo, sfam.embed, cache=tmp_path, progress=False)
    assert again.cached == len(paths)
    torch.testing.assert_close(again.embeddings, gal.embeddings)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic writes leave no temp files
    changed = gallery / "g00.png"
    os.utime(changed, ns=(0, 10**9))
    third = embed_gallery(gallery, metric_zoo, sfam.embed, cache=tmp_path, progress=False)
    assert third.cached == len(paths) - 1


def test_batch_of_queries_gives_the_same_maps_as_single_calls(world_files, metric_zoo, tmp_path):
    gallery, queries = world_files
    together = retrieve_files(queries, gallery, metric_zoo, top=2, out_dir=tmp_path / "all", cache=None,
                              progress=False, batch_size=2)
    for q, rec in zip(queries, together["queries"]):
        single = retrieve_files([q], gallery, metric_zoo, top=2, out_dir=tmp_path / q.stem, cache=None, progress=False)
        assert [m["file"] for m in single["queries"][0]["matches"]] == [m["file"] for m in rec["matches"]]
        for m_all, m_one in zip(rec["matches"], single["queries"][0]["matches"]):
            a, b = np.load(tmp_path / "all" / m_all["maps"]), np.load(tmp_path / q.stem / m_one["maps"])
            for key in ("sfam_query_map", "sfam_match_map", "sfam_weights"):
                np.testing.assert_allclose(a[key], b[key], atol=1e-5)
            assert m_all["score"] == pytest.approx(m_all["explained_score"], abs=1e-5)
    # the SFAM API: a batch of B pairs equals B single calls
    sfam = SFAM(metric_zoo.module)
    xq = torch.stack([_tensor(metric_zoo, q) for q in queries])
    xg = torch.stack([_tensor(metric_zoo, gallery / f"g{i:02d}.png") for i in (2, 5, 11)])
    batch = sfam.pair(xq, xg)
    for i in range(3):
        one = sfam.pair(xq[i:i + 1], xg[i:i + 1])
        torch.testing.assert_close(batch.query.maps[i], one.query.maps[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.reference.maps[i], one.reference.maps[0], atol=1e-5, rtol=1e-4)


def test_bad_galleries(tmp_path, metric_zoo, world_files):
    _, queries = world_files
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image files"):
        retrieve_files(queries, empty, metric_zoo, out_dir=tmp_path / "o", cache=None, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        retrieve_files(queries, tmp_path / "missing", metric_zoo, out_dir=tmp_path / "o", cache=None, progress=False)
    (empty / "broken.png").write_text("not an image")
    with pytest.raises(InputError, match="no readable image"):
        retrieve_files(queries, empty, metric_zoo, out_dir=tmp_path / "o", cache=None, progress=False)
    with pytest.raises(InputError, match="dimensions"):
        rank(torch.randn(2, 8), torch.randn(5, 9))


def test_cli_retrieve_and_explain_pair(world_files, tmp_path, capsys):
    gallery, queries = world_files
    (gallery / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    try:
        out = tmp_path / "ret"
        code = main(["retrieve", str(queries[0]), "--gallery", str(gallery), "--model", "world-metric", "--top", "3",
                     "--out", str(out), "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--quiet",
                     "--method", "sfam,gradcam"])
        assert code == 1  # one gallery image was skipped
        summary = json.loads((out / "summary.json").read_text())
        assert summary["gallery"]["images"] == 24 and len(summary["failures"]) == 1
        assert "zz-broken.jpg" in summary["failures"][0]["error"]
        match = summary["queries"][0]["matches"][0]
        assert match["rank"] == 1 and match["file"].endswith("g02.png") and match["score"] > 0.9
        for f in [match["query_view"], match["match_view"], *match["query_overlays"].values(), *match["match_overlays"].values()]:
            assert (out / f).is_file()
        html = (out / "index.html").read_text()
        assert "zz-broken.jpg" in html and match["match_overlays"]["sfam"] in html
    finally:
        (gallery / "zz-broken.jpg").unlink()
    for metric in ("cosine", "euclidean"):
        pair_out = tmp_path / f"pair-{metric}"
        code = main(["explain-pair", str(queries[0]), str(gallery / "g02.png"), "--model", "world-metric",
                     "--metric", metric, "--out", str(pair_out), "--device", "cpu"])
        assert code == 0
        summary = json.loads((pair_out / "summary.json").read_text())
        assert summary["layer"]["sfam"] == "trunk.layer3" and summary["metric"] == metric
        maps = np.load(pair_out / "pair.npz")
        assert maps["sfam_query_map"].shape == (64, 64) and maps["sfam_match_map"].shape == (64, 64)
    capsys.readouterr()
    assert main(["explain-pair", str(queries[0]), str(tmp_path / "nope.png"), "--model", "world-metric",
                 "--out", str(tmp_path / "bad"), "--device", "cpu"]) == 2
    assert "nope.png" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_imagenet_model_as_embedder(mobilenet, imagenet_photos, tmp_path):
    emb = visionlens.embedder(mobilenet)
    assert emb.layer == "features"
    x = torch.stack([mobilenet.preprocess(visionlens.data.load_image(p)) for p in imagenet_photos[:2]])
    with torch.no_grad():
        feats = mobilenet.module.pool(mobilenet.module.features(x)).flatten(1)
    torch.testing.assert_close(emb(x), feats)  # the penultimate pooled features
    exp = SFAM(emb)(x[:1], x[1:])
    torch.testing.assert_close(exp.coefficients, exp.weights)
    code = main(["explain-pair", str(imagenet_photos[0]), str(imagenet_photos[1]), "--model", "mobilenet_v2",
                 "--out", str(tmp_path / "p"), "--device", "cpu"])
    assert code == 0 and (tmp_path / "p" / "pair.query.sfam.png").is_file()


def test_a_query_in_the_gallery_is_left_out_of_its_own_ranking(world_files, tmp_path, capsys):
    gallery, _ = world_files
    query = gallery / "g03.png"
    base = ["retrieve", str(query), "--gallery", str(gallery), "--model", "world-metric", "--top", "3",
            "--device", "cpu", "--quiet", "--no-cache"]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    assert "(itself left out of the gallery)" in capsys.readouterr().out
    record = json.loads((tmp_path / "default" / "summary.json").read_text())["queries"][0]
    assert record["excluded_from_gallery"] is True
    assert all(os.path.realpath(m["file"]) != os.path.realpath(query) for m in record["matches"])
    assert len(record["matches"]) == 3
    assert main([*base, "--out", str(tmp_path / "kept"), "--no-exclude-query"]) == 0
    kept = json.loads((tmp_path / "kept" / "summary.json").read_text())["queries"][0]
    assert kept["excluded_from_gallery"] is False
    assert os.path.realpath(kept["matches"][0]["file"]) == os.path.realpath(query)  # itself, ranked first
    assert kept["matches"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_rank_leaves_out_the_given_gallery_items():
    gallery = torch.eye(4)
    order, scores = rank(torch.eye(4)[:2], gallery, exclude=[0, None])
    assert order[0, 0] != 0 and order[1, 0] == 1 and torch.isfinite(scores[:, :3]).all()


def test_a_narrower_rerun_leaves_one_run_and_a_wider_one_is_taken(world_files, tmp_path, capsys):
    """Into their own folder, retrieve and explain-pair can run again with fewer matches or methods and
    then more: the folder holds the last run's files only, all listed in its summary."""
    gallery, queries = world_files
    common = ["--model", "world-metric", "--device", "cpu"]
    ret = ["retrieve", str(queries[0]), "--gallery", str(gallery), "--cache-dir", str(tmp_path / "cache"), "--quiet", *common]
    pair = ["explain-pair", str(queries[0]), str(gallery / "g02.png"), *common]
    for argv, out, narrow in ((ret, tmp_path / "ret", ["--top", "1"]), (pair, tmp_path / "pair", ["--method", "sfam"])):
        wide = ["--top", "2"] if argv is ret else ["--method", "sfam,gradcam"]
        for flags in (wide, narrow, wide):
            assert main([*argv, *flags, "--out", str(out)]) == 0, capsys.readouterr().err
            summary = json.loads((out / "summary.json").read_text())
            rows = summary["queries"][0]["matches"] if argv is ret else [summary["files"]]
            listed = {v for row in rows for key, value in row.items() if key.endswith(("view", "overlays", "maps"))
                      for v in (value.values() if isinstance(value, dict) else [value])}
            assert {p.name for p in out.iterdir()} == listed | {"summary.json", "index.html"}


def test_retrieve_checks_its_folder_before_embedding_the_gallery(world_files, tmp_path, capsys, monkeypatch):
    import visionlens.retrieval as retrieval

    gallery, queries = world_files
    out = tmp_path / "mine"
    out.mkdir()
    (out / "index.html").write_text("the user's page")
    monkeypatch.setattr(retrieval, "embed_gallery", lambda *a, **k: pytest.fail("the gallery was embedded"))
    assert main(["retrieve", str(queries[0]), "--gallery", str(gallery), "--model", "world-metric", "--device", "cpu",
                 "--out", str(out), "--quiet", "--no-cache"]) == 2
    assert "index.html exists" in capsys.readouterr().err and (out / "index.html").read_text() == "the user's page"


def test_an_embedder_of_a_grayscale_model_probes_it_with_one_channel():
    torch.manual_seed(0)
    gray = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    emb = visionlens.embedder(gray)  # the probe used to be an RGB image: PyTorch's channel error
    assert emb(torch.randn(2, 1, 40, 40)).shape == (2, 8)


def test_an_embedder_of_a_fixed_size_model_is_one_line_that_names_input_size():
    class FixedSize(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4 * 30 * 30, 5)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(InputError, match=r"^cannot find the layer to pool: a blank 3x224x224 image does not run .* "
                                         r"give input_size= or the layer$"):
        visionlens.embedder(FixedSize())
    assert visionlens.embedder(FixedSize(), input_size=32)(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_a_timm_classifiers_embedding_is_its_pooled_features_not_its_logits(tmp_path):
    """The docs promise a classifier's pooled penultimate features; a spec model (no zoo layer)
    was embedded by its logits (3-d for a 3-class head), so every similarity was of class scores."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=3).state_dict(), tmp_path / "r.pt")
    embedder = embedding_model("timm:resnet18", weights=str(tmp_path / "r.pt")).module
    assert embedder.layer == "layer4" and embedder(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_similarity_methods_on_a_hugging_face_vit_are_one_line_that_says_what_to_use(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=3)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "v")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "v")
    embedder = embedding_model(f"hf:{tmp_path / 'v'}").module
    assert embedder(torch.randn(2, 3, 32, 32)).shape == (2, 3)  # a Hugging Face output is unwrapped
    with pytest.raises(InputError, match=r"sfam explains CNN feature maps and ViTForImageClassification is a Vision "
                                         r"Transformer: the similarity methods \(explain-pair, retrieve\) take CNN"):
        SFAM(embedder)(torch.randn(1, 3, 32, 32), torch.randn(1, 3))


class _ValidConv(torch.nn.Module):
    """A conv without padding, ReLU, global pooling: a uniform image gives spatially constant features."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


def test_sfam_warns_once_on_a_flat_map_with_similarity_advice():
    gen = torch.Generator().manual_seed(0)
    model = _ValidConv()
    with torch.no_grad():
        model.features[0].weight.copy_(torch.rand(8, 3, 3, 3, generator=gen))
        model.features[0].bias.fill_(0.1)
    uniform = torch.full((1, 3, 16, 16), 0.5)
    textured = torch.rand(1, 3, 16, 16, generator=gen)
    with pytest.warns(visionlens.errors.FlatMapWarning, match="similarity does not vary over this layer") as caught:
        SFAM(model, layer="features")(uniform, textured)
    assert len([w for w in caught if issubclass(w.category, visionlens.errors.FlatMapWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", visionlens.errors.FlatMapWarning)
        SFAM(model, layer="features")(textured, uniform)  # a textured query's map varies: no warning


def test_flat_sfam_maps_are_named_by_file_in_explain_pair_and_retrieve(world_files, tmp_path, capsys, monkeypatch):
    gallery, queries = world_files
    zero = lambda self, e, refs: (torch.zeros_like(refs[:, 0]), torch.zeros_like(refs[:, 0]))  # noqa: E731
    monkeypatch.setattr(SFAM, "weights", zero)
    common = ["--model", "world-metric", "--device", "cpu", "--method", "sfam"]
    assert main(["explain-pair", str(queries[0]), str(gallery / "g02.png"), *common, "--out", str(tmp_path / "p")]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "all-zero" in line]
    q, g = str(queries[0]), str(gallery / "g02.png")
    assert len(warning) == 1 and f"{q} (against {g}), {g} (against {q})" in warning[0], warning
    assert main(["retrieve", str(queries[0]), "--gallery", str(gallery), "--top", "2", "--no-cache", "--quiet",
                 *common, "--out", str(tmp_path / "r")]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "all-zero" in line]
    assert len(warning) == 1 and warning[0].count("(against") == 4 and f"{q} (against {gallery}" in warning[0], warning
