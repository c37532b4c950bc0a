"""Faithfulness on the similarity score (metrics/similarity_faithfulness.py): the scorer equals a
direct similarity computation, the curves end where the RISE protocol says, a similarity map
beats its own reverse, and SFAM's weights and map follow the authors' definitions."""

import pytest
import torch
import torch.nn.functional as F

import visionlens
from visionlens import SFAM, Embedder
from visionlens.data.world import World, WorldConfig
from visionlens.errors import InputError
from visionlens.metrics.faithfulness import gaussian_blur
from visionlens.metrics.similarity_faithfulness import (
    ReferenceSimilarity, similarity_curve_ends, similarity_curves, similarity_deletion, similarity_insertion,
)
from visionlens.models.world_eval import normalise

from helpers import assert_same_state, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def metric_model():
    return visionlens.embedder("world-metric")


@pytest.fixture(scope="module")
def world_pairs():
    world = World(WorldConfig(size=64), seed=0)
    idx = list(range(8))
    a, b = world.batch("test", idx), world.batch("test", idx, view=1)
    return normalise(a["image"]), normalise(b["image"])


def _gap_embedding(net, x):
    with torch.no_grad():
        return net.features(x).mean((2, 3))


def test_scorer_equals_direct_cosine_and_euclidean(tiny_net):
    torch.manual_seed(0)
    x, ref_images = torch.randn(4, 3, 16, 16), torch.randn(3, 3, 16, 16)
    emb = Embedder(tiny_net, "features")
    e, r = _gap_embedding(tiny_net, x), _gap_embedding(tiny_net, ref_images)
    with torch.no_grad():
        cos = ReferenceSimilarity(emb, r, "cosine")(x)
        euc = ReferenceSimilarity(emb, r, "euclidean")(x)
    direct = F.cosine_similarity(e[:, None], r[None], dim=-1)
    assert cos.shape == (4, 3) and direct.abs().min() > 1e-3
    torch.testing.assert_close(cos, direct, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(euc, -((e[:, None] - r[None]) ** 2).sum(-1), atol=1e-5, rtol=1e-4)


def test_curves_start_at_the_pair_and_end_at_the_baseline_images(tiny_net):
    """Deletion goes from the query's similarity to the substrate's (zeros: the dataset mean),
    insertion from the blurred query's to the query's; each image is scored against its own reference."""
    torch.manual_seed(1)
    x, refs = torch.randn(3, 3, 16, 16), torch.randn(3, 16)
    maps = torch.rand(3, 16, 16)
    emb = Embedder(tiny_net, "features")

    def cos(images):
        return F.cosine_similarity(_gap_embedding(tiny_net, images), refs)

    deletion = similarity_curves(emb, x, maps, refs, "deletion", step=32)
    insertion = similarity_curves(emb, x, maps, refs, "insertion", step=32)
    assert deletion.shape == (3, 9)
    torch.testing.assert_close(deletion[:, 0], cos(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(deletion[:, -1], cos(torch.zeros_like(x)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(insertion[:, 0], cos(gaussian_blur(x)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(insertion[:, -1], cos(x), atol=1e-5, rtol=1e-4)
    # the clean and the baseline scores are apart, so the checks above can tell them apart
    assert (cos(x) - cos(torch.zeros_like(x))).abs().max() > 1e-2
    # shared ends give the same curves
    ends = similarity_curve_ends(emb, x, refs, "deletion")
    torch.testing.assert_close(similarity_curves(emb, x, maps, refs, "deletion", step=32, ends=ends), deletion)
    # one reference for all queries
    one = similarity_curves(emb, x, maps, refs[0], "deletion", step=32)
    torch.testing.assert_close(one[:, 0], F.cosine_similarity(_gap_embedding(tiny_net, x), refs[:1]), atol=1e-5, rtol=1e-4)


def test_sfam_map_deletes_similarity_faster_than_its_reverse(metric_model, world_pairs):
    """On world pairs (same object, two contexts) removing SFAM's most salient pixels first lowers
    the similarity faster than removing its least salient first, and restoring them first raises
    it faster."""
    xa, xb = world_pairs
    pair = SFAM(metric_model).pair(xa, xb)
    refs = metric_model(xb).detach()
    kw = dict(step=256)
    best = similarity_deletion(metric_model, xa, pair.query.maps, refs, **kw)
    worst = similarity_deletion(metric_model, xa, -pair.query.maps, refs, **kw)
    assert float((worst - best).mean()) > 0.05, (best, worst)
    best_in = similarity_insertion(metric_model, xa, pair.query.maps, refs, **kw)
    worst_in = similarity_insertion(metric_model, xa, -pair.query.maps, refs, **kw)
    assert float((best_in - worst_in).mean()) > 0.05, (best_in, worst_in)


def test_model_restored_and_bad_input(metric_model, world_pairs):
    xa, xb = world_pairs
    refs = metric_model(xb).detach()
    maps = torch.rand(8, 64, 64)
    metric_model.train()
    before = snapshot(metric_model)
    similarity_deletion(metric_model, xa[:2], maps[:2], refs[:2], step=1024)
    assert_same_state(before, snapshot(metric_model))
    metric_model.eval()
    with pytest.raises(InputError, match="one per query"):
        similarity_deletion(metric_model, xa, maps, refs[:3])
    with pytest.raises(InputError, match="maps must be"):
        similarity_deletion(metric_model, xa, maps[:, :32], refs)
    with pytest.raises(InputError, match="metric"):
        similarity_insertion(metric_model, xa, maps, refs, metric="manhattan")
    with pytest.raises(InputError, match=r"\(B, 5\)"):
        similarity_deletion(metric_model, xa, maps, torch.randn(8, 5))


def test_sfam_follows_the_authors_definitions_with_several_references(tiny_net):
    """A direct transcription of the authors' weighting (``contri_weight_generate``: mean over the
    references of ``ê_d r̂_d``, divided by the absolute value of its sum, min-max normalised) and
    combination (``Σ_k w_k A^k``) on a GAP embedder: SFAM's weights and raw map equal it."""
    torch.manual_seed(2)
    x, refs = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16)
    exp = SFAM(Embedder(tiny_net, "features"))(x, refs)
    with torch.no_grad():
        act = tiny_net.features(x)
    product = (F.normalize(act.mean((2, 3)), dim=1)[:, None] * F.normalize(refs, dim=-1)).mean(1)
    weight = product / product.sum(1, keepdim=True).abs()
    low, high = weight.min(1, keepdim=True).values, weight.max(1, keepdim=True).values
    weight = (weight - low) / (high - low)
    torch.testing.assert_close(exp.weights, weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(exp.raw, torch.einsum("bk,bkhw->bhw", weight, act), atol=1e-5, rtol=1e-4)
