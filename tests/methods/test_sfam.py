"""SFAM and the similarity baselines: CIS identities, invariances, coefficients, pair symmetry, a
planted case from the synthetic world, model restoration and bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import visionlens
from visionlens import SFAM, Embedder, SimilarityGradCAM, SimilarityRelevanceCAM, SimilarityTarget
from visionlens.core.similarity import contribution_scores, contributions, normalize_scores, similarity
from visionlens.data.world import World, WorldConfig
from visionlens.errors import InputError, LayerError
from visionlens.models.world_eval import normalise

from helpers import assert_same_state, snapshot


@pytest.fixture(scope="module")
def metric_model():
    return visionlens.embedder("world-metric")


@pytest.fixture(scope="module")
def world_pairs():
    world = World(WorldConfig(size=64), seed=0)
    idx = list(range(16))
    return world.batch("test", idx), world.batch("test", idx, view=1)


class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x * self.c


def test_cosine_cis_sums_to_sign_of_similarity():
    torch.manual_seed(0)
    e, r = torch.randn(32, 20), torch.randn(32, 3, 20)
    s = similarity(e, r, "cosine")
    cis = contribution_scores(contributions(e, r, "cosine"))
    assert (s < 0).any() and (s > 0).any()
    torch.testing.assert_close(cis.sum(1), torch.sign(s))
    torch.testing.assert_close(contributions(e, r, "cosine").sum(1), s)
    d = contributions(e, r, "euclidean")
    assert (d <= 0).all()
    torch.testing.assert_close(d.sum(1), similarity(e, r, "euclidean"))
    w = normalize_scores(cis)
    assert torch.allclose(w.min(1).values, torch.zeros(32)) and torch.allclose(w.max(1).values, torch.ones(32))


def test_map_invariant_to_positive_rescaling_of_both_embeddings(tiny_net):
    x = torch.randn(3, 3, 16, 16)
    ref = torch.randn(3, 3, 16, 16)
    plain = Embedder(tiny_net, "features")
    scaled = Embedder(tiny_net, "features", head=Scale(7.5))
    a = SFAM(plain)(x, plain(ref).detach())
    b = SFAM(scaled)(x, scaled(ref).detach())
    torch.testing.assert_close(a.maps, b.maps)
    torch.testing.assert_close(a.weights, b.weights)


def test_gap_head_coefficients_equal_normalised_cis(tiny_net):
    x, ref = torch.randn(4, 3, 16, 16), torch.randn(1, 3, 16, 16)
    for metric in ("cosine", "euclidean"):
        exp = SFAM(Embedder(tiny_net, "features"), metric=metric)(x, ref)
        torch.testing.assert_close(exp.coefficients, exp.weights)
        assert exp.raw.shape == (4, 8, 8) and exp.maps.shape == (4, 16, 16)


def test_projection_head_coefficients_equal_autograd_vjp(metric_model, world_pairs):
    a, b = world_pairs
    xa, xb = normalise(a["image"][:4]), normalise(b["image"][:4])
    exp = SFAM(metric_model)(xa, xb)
    net = metric_model.backbone
    with torch.no_grad():
        act = net.trunk.features(xa)
    pooled = act.mean((2, 3)).requires_grad_(True)
    e = F.normalize(net.proj(pooled), dim=1)
    (vjp,) = torch.autograd.grad(e, pooled, exp.weights)  # J^T w, J = de/d GAP(A)
    torch.testing.assert_close(exp.coefficients, vjp, rtol=1e-4, atol=1e-6)
    # the embedding used is the model's own output
    torch.testing.assert_close(exp.embeddings, net(xa), rtol=1e-5, atol=1e-6)


def test_swapping_query_and_reference_swaps_maps_and_keeps_weights(metric_model, world_pairs):
    a, b = world_pairs
    xa, xb = normalise(a["image"][:4]), normalise(b["image"][:4])
    for metric in ("cosine", "euclidean"):
        sfam = SFAM(metric_model, metric=metric)
        ab, ba = sfam.pair(xa, xb), sfam.pair(xb, xa)
        torch.testing.assert_close(ab.query.maps, ba.reference.maps, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ab.reference.maps, ba.query.maps, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ab.query.weights, ab.reference.weights)
        torch.testing.assert_close(ab.query.weights, ba.query.weights, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ab.scores, ba.scores, atol=1e-6, rtol=1e-5)
        # a pair equals the one-sided call with the other image as reference
        one = sfam(xa, xb)
        torch.testing.assert_close(one.maps, ab.query.maps, atol=1e-5, rtol=1e-4)


def test_cross_term_equals_cosine_on_unit_embeddings(metric_model, world_pairs):
    a, b = world_pairs
    xa, xb = normalise(a["image"][:4]), normalise(b["image"][:4])
    cos = SFAM(metric_model, metric="cosine")(xa, xb)
    cross = SFAM(metric_model, metric="euclidean", euclid_mode="cross_term")(xa, xb)
    torch.testing.assert_close(cos.maps, cross.maps, atol=1e-5, rtol=1e-4)


def _object_mass(maps, mask):
    return (maps * mask).flatten(1).sum(1) / maps.flatten(1).sum(1)


def test_planted_shared_object_gets_the_mass(metric_model, world_pairs):
    """Same object, different background/position/distractors. The object covers 9.1 % of the
    pixels of these 16 pairs (24 % when grown by 4 px, half a feature cell); SFAM puts 26 % (cosine)
    / 30 % (Euclidean) of the map's mass on its exact pixels and 54 % / 63 % on the grown object
    (measured; benchmarks/sfam_planted.py gives the same on 500 pairs)."""
    a, b = world_pairs
    xa, xb = normalise(a["image"]), normalise(b["image"])
    area = float(a["object_mask"].float().mean())
    grown = F.max_pool2d(a["object_mask"].float()[:, None], 9, 1, 4)[:, 0]
    for metric in ("cosine", "euclidean"):
        pair = SFAM(metric_model, metric=metric).pair(xa, xb)
        on_object = float(_object_mass(pair.query.maps, a["object_mask"]).mean())
        on_other = float(_object_mass(pair.reference.maps, b["object_mask"]).mean())
        assert on_object > 2.5 * area and on_other > 2.5 * area, (metric, on_object, on_other, area)
        assert float(_object_mass(pair.query.maps, grown).mean()) > 0.5
    # the object removed: SFAM's mass on where it was drops
    gone = World(WorldConfig(size=64), seed=0).batch("test", range(16), remove_object=True)
    pair = SFAM(metric_model).pair(normalise(gone["image"]), xb)
    assert float(_object_mass(pair.query.maps, a["object_mask"]).mean()) < on_object


def test_targets_prototype_neighbours_and_embeddings(metric_model, world_pairs):
    a, b = world_pairs
    xa, xb = normalise(a["image"][:6]), normalise(b["image"][:6])
    sfam = SFAM(metric_model)
    gallery = sfam.embed(xb)
    by_image = sfam(xa[:2], xb[:2])
    by_embedding = sfam(xa[:2], SimilarityTarget.embedding(gallery[:2]))
    torch.testing.assert_close(by_image.maps, by_embedding.maps)
    proto = sfam(xa[:2], SimilarityTarget.prototype(gallery[:3]))
    assert proto.references.shape == (2, 1, 64)
    knn = sfam(xa[:2], SimilarityTarget.neighbours(sfam.embed(xa[:2]), gallery, k=3))
    assert knn.references.shape == (2, 3, 64)
    assert torch.equal(knn.references[0, 0], gallery[0])  # the same object is the nearest neighbour
    # a SimilarityTarget is a callable target for Grad-CAM on the embedding output
    exp = visionlens.GradCAM(metric_model, "backbone.trunk.layer3")(xa[:2], SimilarityTarget.embedding(gallery[:2]))
    torch.testing.assert_close(exp.scores, by_image.scores, atol=1e-5, rtol=1e-4)


def test_baselines_on_the_same_targets(metric_model, world_pairs):
    a, b = world_pairs
    xa, xb = normalise(a["image"][:3]), normalise(b["image"][:3])
    for cls in (SimilarityGradCAM, SimilarityRelevanceCAM):
        for metric in ("cosine", "euclidean"):
            pair = cls(metric_model, metric=metric).pair(xa, xb)
            assert pair.query.maps.shape == (3, 64, 64) and pair.query.layer == "trunk.layer3"
            assert torch.isfinite(pair.query.maps).all() and pair.query.maps.amax((1, 2)).gt(0).all()
            torch.testing.assert_close(pair.query.scores, SFAM(metric_model, metric=metric).pair(xa, xb).scores,
                                       atol=1e-5, rtol=1e-4)


def test_grad_cam_baseline_gap_head_weights_match_spec(tiny_net):
    """Spec 2.2: cosine, GAP embedding: dS/dA^k_ij = (r_k/(|e||r|) - s e_k/|e|^2) / (hw)."""
    x, ref = torch.randn(2, 3, 16, 16), torch.randn(2, 8 * 2)
    emb = Embedder(tiny_net, "features")
    exp = SimilarityGradCAM(emb)(x, ref)
    with torch.no_grad():
        act = tiny_net.features(x)
    e = act.mean((2, 3))
    s = F.cosine_similarity(e, ref)
    grad = ref / (e.norm(dim=1, keepdim=True) * ref.norm(dim=1, keepdim=True)) - s[:, None] * e / e.norm(dim=1, keepdim=True) ** 2
    raw = torch.einsum("bk,bkhw->bhw", grad / 64, act)
    torch.testing.assert_close(exp.raw, raw, atol=1e-5, rtol=1e-4)


def test_model_restored(metric_model, world_pairs, tiny_net):
    a, b = world_pairs
    xa, xb = normalise(a["image"][:2]), normalise(b["image"][:2])
    metric_model.train()
    before = snapshot(metric_model)
    for cls in (SFAM, SimilarityGradCAM, SimilarityRelevanceCAM):
        cls(metric_model).pair(xa, xb)
    assert_same_state(before, snapshot(metric_model))
    with pytest.raises(InputError):  # an error inside leaves nothing behind either
        SFAM(metric_model)(xa, torch.randn(2, 10))
    assert_same_state(before, snapshot(metric_model))
    metric_model.eval()


def test_bad_input(metric_model, tiny_net):
    x = torch.randn(2, 3, 64, 64)
    sfam = SFAM(metric_model)
    with pytest.raises(InputError, match="dimensions"):
        sfam(x, torch.randn(2, 10))
    with pytest.raises(InputError, match="NaN"):
        sfam(x, torch.full((64,), float("nan")))
    with pytest.raises(InputError, match="NaN"):
        sfam(torch.full((1, 3, 64, 64), float("nan")), torch.randn(64))
    with pytest.raises(InputError, match="reference images"):
        sfam(x, torch.randn(3, 3, 64, 64))
    with pytest.raises(InputError, match="metric"):
        SFAM(metric_model, metric="manhattan")
    with pytest.raises(InputError, match="metric"):
        SFAM(metric_model, metric="euclidean")(x, SimilarityTarget.embedding(torch.randn(64)))
    with pytest.raises(InputError, match="normalisation"):
        SFAM(metric_model, normalize="softmax")
    with pytest.raises(InputError, match="shapes"):
        sfam.pair(x, torch.randn(2, 3, 32, 32))
    with pytest.raises(LayerError, match="unknown layer"):
        SFAM(metric_model, layer="trunk.layer9")
    with pytest.raises(LayerError, match="not executed"):
        SFAM(Embedder(tiny_net, "features.2"), layer="features.5")(torch.randn(1, 3, 16, 16), torch.randn(8))
    with pytest.raises(InputError, match=r"\(B, D\)"):
        SFAM(tiny_net.features, layer="3")(torch.randn(1, 3, 16, 16), torch.randn(16))


def test_sfam_refuses_a_vit_instead_of_explaining_its_patch_embedding():
    import visionlens

    with pytest.raises(InputError, match="is a Vision Transformer"):
        SFAM(visionlens.embedder("world-dino"))(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64))
