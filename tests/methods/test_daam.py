"""DAAM (arXiv:2503.14640): gradients per block, accumulation, display mapping, the k-NN
weights of the self-supervised variant, batching, localisation on the world ViTs, and the CLI."""

import json
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import visionlens
from visionlens import DAAM
from visionlens.core.memory_bank import MemoryBank, knn_vote
from visionlens.data.bank import build_bank
from visionlens.data.world import World, WorldConfig
from visionlens.errors import ImageLoadError, InputError
from visionlens.methods.daam import dimension_weights, display_maps
from visionlens.models.world_eval import knn_predict

from helpers import save_world_images

timm = pytest.importorskip("timm")


def _timm(num_classes=5, **kw):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=num_classes,
                             qk_norm=True, **kw).eval()


def _proj_input_gradients(model, x, score_fn):
    """Reference ``dy/dU_0`` per block, from the model's own (fused) forward with a hook on
    every ``attn.proj`` input, computed block by block in execution order."""
    inputs = []
    handles = [b.attn.proj.register_forward_pre_hook(lambda m, i: inputs.append(i[0])) for b in model.blocks]
    try:
        with torch.enable_grad():
            score = score_fn(model(x))
            grads = torch.autograd.grad(score.sum(), inputs)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([g[:, 0] for g in grads], dim=1)


def test_gradients_are_aligned_with_their_blocks_and_maps_accumulate():
    model = _timm()
    x = torch.randn(2, 3, 32, 32)
    daam = DAAM(model)
    t = daam.terms(x, target=[1, 3])
    ref = _proj_input_gradients(model, x, lambda out: out[torch.arange(2), torch.tensor([1, 3])])
    torch.testing.assert_close(t.gradients, ref, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(t.gradients[:, 0], t.gradients[:, -1])  # distinct blocks, in order
    torch.testing.assert_close(t.coefficients, ref.clamp_min(0), rtol=1e-4, atol=1e-6)
    manual = torch.einsum("blc,blchw->blhw", ref.clamp_min(0), t.features).clamp_min(0)
    torch.testing.assert_close(t.block_maps, manual, rtol=1e-4, atol=1e-6)
    assert t.accumulated.shape == (2, 3, 4, 4)
    assert bool((t.accumulated[:, 1:] >= t.accumulated[:, :-1]).all())  # S_i non-decreasing
    exp = daam(x, target=[1, 3])
    assert exp.flow.shape == (2, 3, 32, 32) and exp.flow_raw.shape == (2, 3, 4, 4)
    torch.testing.assert_close(exp.maps, exp.flow[:, -1])
    assert float(exp.flow.min()) >= 0 and float(exp.flow.max()) <= 1
    assert exp.targets.tolist() == [1, 3] and exp.layer == "blocks[0:3]"


def test_batched_maps_equal_single_image_maps():
    # the reference implementation sums the maps of a batch into every image; ours does not
    model = _timm()
    x = torch.randn(3, 3, 32, 32)
    batch = DAAM(model)(x)
    for i in range(3):
        single = DAAM(model)(x[i:i + 1])
        torch.testing.assert_close(single.flow[0], batch.flow[i], rtol=1e-4, atol=1e-5)


def test_display_mapping_nonlinear_and_linear():
    acc = torch.rand(2, 4, 3, 5).cumsum(1)
    nl = display_maps(acc)
    z = torch.sigmoid(5 * acc / acc[:, -1].amax((1, 2))[:, None, None, None]) - 0.5
    lo, hi = z.amin((2, 3), keepdim=True), z.amax((2, 3), keepdim=True)
    torch.testing.assert_close(nl, (z - lo) / (hi - lo))
    lin = display_maps(acc, nonlinear=False)
    last = acc[:, -1]
    torch.testing.assert_close(lin[:, -1], (last - last.amin((1, 2), keepdim=True)) /
                               (last.amax((1, 2), keepdim=True) - last.amin((1, 2), keepdim=True)), rtol=1e-5, atol=1e-6)
    assert float(lin.min()) >= 0 and float(lin.max()) <= 1
    zero = display_maps(torch.zeros(1, 2, 3, 3))  # all-zero maps: no division by zero
    assert torch.isfinite(zero).all() and float(zero.abs().max()) == 0


def _toy_bank(n=200, dim=16, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MemoryBank(torch.randn(n, dim, generator=g), torch.randint(0, classes, (n,), generator=g), classes)


def test_knn_vote_equals_brute_force_and_dino_scoring():
    bank = _toy_bank()
    q = torch.randn(5, 16)
    votes, sims, idx = knn_vote(q, bank, k=20, temperature=0.07)
    for i in range(5):
        qn = q[i] / q[i].norm()
        s = [(float(qn @ (f / f.norm())), j) for j, f in enumerate(bank.features)]
        top = sorted(s, reverse=True)[:20]
        brute = torch.zeros(7)
        for sim, j in top:
            brute[bank.labels[j]] += torch.exp(torch.tensor(sim / 0.07))
        torch.testing.assert_close(votes[i], brute, rtol=1e-4, atol=1e-3)
        assert sorted(idx[i].tolist()) == sorted(j for _, j in top)
    bank10 = _toy_bank(classes=10)
    q10 = torch.randn(9, 16)
    assert torch.equal(knn_vote(q10, bank10)[0].argmax(1), knn_predict(q10, bank10.features, bank10.labels))


def test_dimension_weights_follow_the_reference_and_span_zero_to_one():
    bank = _toy_bank()
    q = torch.randn(4, 16)
    w, classes, votes = dimension_weights(q, bank)
    assert torch.equal(classes, votes.argmax(1))
    assert bool((w.amin(1) == 0).all()) and bool((w.amax(1) == 1).all())
    _, _, idx = knn_vote(q, bank)
    for i in range(4):  # DINO_DAAM_Visualization_oneSample.contri_weight_generate, one image at a time
        qn = F.normalize(q[i:i + 1], dim=1)
        keep = idx[i][bank.labels[idx[i]] == classes[i]]
        m = (qn * bank.features[keep]).mean(0)
        m = m / m.sum().abs()
        torch.testing.assert_close(w[i], (m - m.min()) / (m.max() - m.min()), rtol=1e-5, atol=1e-6)
    forced, c, _ = dimension_weights(q, bank, target=2)
    assert c.tolist() == [2] * 4 and bool((forced.amax(1) == 1).all())
    with pytest.raises(InputError, match="one class per image"):  # K classes per image: one line
        dimension_weights(q, bank, target=torch.tensor([[0, 1]] * 4))


def test_self_supervised_backward_uses_the_weights():
    model = _timm(num_classes=0)
    x = torch.randn(2, 3, 32, 32)
    bank = _toy_bank(dim=32)
    t = DAAM(model, bank=bank).terms(x)
    with torch.no_grad():
        w, classes, _ = dimension_weights(model(x), bank)
    torch.testing.assert_close(t.weights, w)
    ref = _proj_input_gradients(model, x, lambda q: (q * w).sum(1))
    torch.testing.assert_close(t.gradients, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(t.coefficients, t.gradients)  # no positive clamp in this variant
    assert torch.equal(t.targets.indices, classes)


def test_self_supervised_model_needs_a_bank(tmp_path):
    with pytest.raises(InputError, match="visionlens bank"):
        DAAM(_timm(num_classes=0))
    with pytest.raises(InputError, match="does not exist"):
        DAAM(_timm(num_classes=0), bank=tmp_path / "missing.pt")
    with pytest.raises(InputError, match="does not match the memory bank"):
        DAAM(_timm(num_classes=0), bank=_toy_bank(dim=8))(torch.randn(1, 3, 32, 32))


def _localisation(exp, mask):
    mass = (exp.maps * mask).sum((1, 2)) / exp.maps.sum((1, 2))
    hits = mask.flatten(1).gather(1, exp.maps.flatten(1).argmax(1)[:, None])[:, 0]
    return mass, hits


@pytest.fixture(scope="module")
def world_batch():
    b = World(WorldConfig(size=64), seed=0).batch("test", range(48))
    return (b["image"] - 0.5) / 0.5, b["label"], b["object_mask"].float()


def test_world_vit_daam_puts_its_mass_on_the_object(world_batch):
    # measured on these 48 images: mean mass inside 0.425 (object share 0.089; 47/48 images above
    # their share), pointing game 0.771;
    # on 500 images (benchmarks/daam_world.py): mass 0.479, pointing game 0.804
    x, labels, mask = world_batch
    exp = DAAM(visionlens.load_model("world-vit").module)(x)
    assert torch.equal(exp.targets, labels)
    mass, hits = _localisation(exp, mask)
    share = mask.mean((1, 2))
    assert float(mass.mean()) >= 0.35 and float((mass > share).float().mean()) >= 0.9
    assert float(hits.mean()) >= 0.65


def test_world_dino_daam_with_a_bank(world_batch, tmp_path):
    # measured on these 48 images with a 1,000-image bank: mass 0.309 (46/48 above the share),
    # pointing game 0.875, k-NN accuracy 1.0
    x, labels, mask = world_batch
    dino = visionlens.load_model("world-dino")
    bank = build_bank(dino, n=1000)
    path = bank.save(tmp_path / "bank.pt")
    exp = DAAM(dino.module, bank=path)(x)
    assert float((exp.targets == labels).float().mean()) >= 0.95  # the k-NN vote
    mass, hits = _localisation(exp, mask)
    assert float(mass.mean()) >= 0.2 and float((mass > mask.mean((1, 2))).float().mean()) >= 0.85
    assert float(hits.mean()) >= 0.7


def _cli(capsys, *args):
    from visionlens.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, err


def test_cli_explains_world_vits_with_daam_strips_and_gifs(tmp_path, world_batch, capsys):
    files = save_world_images(world_batch[0], tmp_path)
    out = tmp_path / "vit"
    code, err = _cli(capsys, "explain", *files, "--model", "world-vit", "--method", "daam,rollout", "--out", str(out),
                     "--device", "cpu", "--quiet")
    assert code == 0, err
    gif = Image.open(out / "img0.daam.gif")
    assert gif.n_frames == 4
    assert (out / "img1.rollout.flow.png").is_file()
    assert "img0.daam.flow.png" in (out / "index.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"]["daam"] == "blocks[0:4]"
    assert np.load(out / "img0.npz")["daam_flow"].shape == (4, 64, 64)
    # the self-supervised model: without a bank a one-line error, with one the same outputs
    code, err = _cli(capsys, "explain", files[0], "--model", "world-dino", "--method", "daam", "--out", str(tmp_path / "x"),
                     "--device", "cpu")
    assert code == 2 and "visionlens bank" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    bank = tmp_path / "bank.pt"
    code, err = _cli(capsys, "bank", "--model", "world-dino", "--n", "300", "--out", str(bank), "--device", "cpu")
    assert code == 0, err
    code, err = _cli(capsys, "explain", *files, "--model", "world-dino", "--method", "daam", "--bank", str(bank),
                     "--out", str(tmp_path / "dino"), "--device", "cpu", "--quiet")
    assert code == 0, err
    assert Image.open(tmp_path / "dino" / "img1.daam.gif").n_frames == 4


def test_bank_from_a_folder_or_a_csv(tmp_path, world_batch):
    x, labels, _ = world_batch
    dino = visionlens.load_model("world-dino")
    names = dino.class_names
    rows = ["file,label"]
    for i in range(4):
        folder = tmp_path / "by-class" / names[int(labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(((x[i] * 0.5 + 0.5).permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        img.save(folder / f"{i}.png")
        img.save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{names[int(labels[i])] if i % 2 else int(labels[i])}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    by_class = build_bank(dino, images=tmp_path / "by-class")
    by_csv = build_bank(dino, images=tmp_path, labels=tmp_path / "labels.csv")
    assert sorted(by_class.labels.tolist()) == sorted(labels[:4].tolist()) and by_class.num_classes == 10
    assert by_csv.labels.tolist() == labels[:4].tolist()
    torch.testing.assert_close(by_csv.features.norm(dim=1), torch.ones(4))
    loaded = MemoryBank.load(by_csv.save(tmp_path / "b.pt"))
    torch.testing.assert_close(loaded.features, by_csv.features)
    assert torch.equal(loaded.labels, by_csv.labels) and loaded.class_names == names

    broken = tmp_path / "by-class" / names[int(labels[0])] / "broken.png"  # an unreadable file among them
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="broken.png"):
        build_bank(dino, images=tmp_path / "by-class")
    unreadable: list[str] = []
    kept = build_bank(dino, images=tmp_path / "by-class", unreadable=unreadable)
    assert len(unreadable) == 1 and "broken.png" in unreadable[0]
    torch.testing.assert_close(kept.features, by_class.features)  # the readable images, in the same order
    assert torch.equal(kept.labels, by_class.labels)
    from visionlens.cli import main

    code = main(["bank", "--model", "world-dino", "--images", str(tmp_path / "by-class"), "--out", str(tmp_path / "c.pt")])
    assert code == 1 and MemoryBank.load(tmp_path / "c.pt").features.shape == (4, by_class.features.shape[1])


def test_a_bank_gives_the_model_back_with_every_module_in_its_mode():
    dino = visionlens.load_model("world-dino")
    dino.module.eval()
    first = next(m for m in dino.module.modules() if m is not dino.module)
    first.train()  # a mixed state: restoring only the top module's flag would put every module in train mode
    before = [m.training for m in dino.module.modules()]
    build_bank(dino, n=8, batch_size=4)
    assert [m.training for m in dino.module.modules()] == before
