"""ViT baselines beside DAAM (issue 29, item 5): gradient-weighted attention rollout (Chefer et
al., ICCV 2021) against a direct implementation of the authors' rules on timm and Hugging Face
ViTs, LeGrad against TorchCAM 0.5.0 (torchvision ViT) and against direct implementations (timm,
Hugging Face), batching, the model state, refusals, and both on the world ViT (API and CLI).
Every model is a tiny random-init one built here, or the offline world zoo model."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

import visionlens
from visionlens import CheferRollout, LeGrad
from visionlens.data.world import World, WorldConfig
from visionlens.errors import InputError, LayerError

from helpers import assert_same_state, one_error_line, save_world_images, snapshot

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")


def timm_vit(num_classes=5):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=num_classes).eval()


def hf_vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8, num_labels=5)
    return transformers.ViTForImageClassification(cfg).eval()  # SDPA attention, as by default


def torchvision_vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32,
                                                 mlp_dim=64, num_classes=5)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts its head at zero
    return model.eval()


MODELS = {"timm": timm_vit, "huggingface": hf_vit, "torchvision": torchvision_vit}


def _inputs(n=3):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32)


def _minmax(t):
    flat = t.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    return (t - low[:, None, None]) / (high - low)[:, None, None]


# -- direct implementations (eager attention probabilities from the models themselves) ----------

def _timm_eager(model, x):
    """``(output, [A_b], [z_b])`` of a timm ViT run with its non-fused attention, the attention
    probabilities and block outputs kept in the graph."""
    attns, outs = [], []
    hooks = []
    for block in model.blocks:
        block.attn.fused_attn = False
        hooks.append(block.attn.attn_drop.register_forward_hook(lambda m, i, o: attns.append(o)))
        hooks.append(block.register_forward_hook(lambda m, i, o: outs.append(o)))
    try:
        with torch.enable_grad():
            output = model(x)
    finally:
        for h in hooks:
            h.remove()
        for block in model.blocks:
            block.attn.fused_attn = True
    return output, attns, outs


def _hf_eager(model, x):
    """The same, from an eager-attention copy of a Hugging Face model (its attentions output)."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.enable_grad():
        out = eager(pixel_values=x, output_attentions=True, output_hidden_states=True)
    return out.logits, list(out.attentions), list(out.hidden_states[1:])


def _chefer_reference(output, attns, classes, grid, prefix=1):
    """Rules 5 and 6 of the paper as in the authors' ViT notebook, one image at a time."""
    maps = []
    for i, c in enumerate(classes.tolist()):
        grads = torch.autograd.grad(output[i, c], attns, retain_graph=True)
        n = attns[0].shape[-1]
        relevance = torch.eye(n)
        for a, g in zip(attns, grads):
            cam = (g[i] * a[i]).clamp(min=0).mean(dim=0)
            relevance = relevance + cam @ relevance
        maps.append(relevance[0, prefix:].reshape(grid))
    return torch.stack(maps).detach()


def _legrad_reference(attns, outs, tail, classes, grid):
    """Per block: the block's class score from the token mean, ReLU of its attention gradient,
    mean over heads and queries, patch keys; then the mean over blocks."""
    maps = []
    for a, z in zip(attns, outs):
        score = tail(z.mean(dim=1)).gather(1, classes[:, None]).sum()
        (g,) = torch.autograd.grad(score, a, retain_graph=True)
        maps.append(g.clamp(min=0).mean(dim=(1, 2))[:, 1:].reshape(-1, *grid))
    return torch.stack(maps).mean(0).detach()


def _assert_maps_equal(ours, reference, tol=1e-5):
    """Equal after min-max (both maps at the patch grid), to ``tol``."""
    diff = float((_minmax(ours) - _minmax(reference)).abs().max())
    assert diff <= tol, diff


# -- Chefer ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["timm", "huggingface"])
def test_chefer_equals_the_authors_rules_computed_directly(family):
    model = MODELS[family]()
    x = _inputs()
    classes = torch.tensor([0, 3, 4])
    exp = CheferRollout(model)(x, classes)
    output, attns, _ = (_timm_eager if family == "timm" else _hf_eager)(model, x)
    reference = _chefer_reference(output, attns, classes, (4, 4))
    torch.testing.assert_close(exp.raw, reference, rtol=1e-4, atol=1e-5)
    _assert_maps_equal(exp.raw, reference)
    assert float(reference.std()) > 0  # the maps vary: a real check, not two constants
    assert exp.targets.tolist() == classes.tolist() and exp.method == "chefer"
    assert exp.flow.shape == (3, 2, 32, 32) and exp.flow_raw.shape == (3, 2, 4, 4)
    torch.testing.assert_close(exp.maps, exp.flow[:, -1])


def test_chefer_first_block_flow_is_one_update_of_the_identity():
    model = timm_vit()
    x = _inputs(2)
    flow_raw, targets, _ = CheferRollout(model).terms(x)
    output, attns, _ = _timm_eager(model, x)
    grads = torch.autograd.grad(output.gather(1, targets.indices[:, None]).sum(), attns)
    first = (grads[0] * attns[0]).clamp(min=0).mean(1)[:, 0, 1:]  # (I + Abar_1) I at the [class] row
    torch.testing.assert_close(flow_raw[:, 0].flatten(1), first.detach(), rtol=1e-4, atol=1e-7)


def test_chefer_drops_register_tokens_and_legrad_refuses_a_dinov2_head():
    torch.manual_seed(0)
    cfg = transformers.Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=64, image_size=56, patch_size=14, num_labels=5,
                                                 num_register_tokens=2)
    model = transformers.Dinov2WithRegistersForImageClassification(cfg).eval()
    x = torch.randn(2, 3, 56, 56)
    exp = CheferRollout(model)(x)
    output, attns, _ = _hf_eager(model, x)
    assert attns[0].shape[-1] == 1 + 2 + 16  # [class], two registers, a 4x4 grid
    reference = _chefer_reference(output, attns, exp.targets, (4, 4), prefix=3)
    _assert_maps_equal(exp.raw, reference)
    _refused(lambda: LeGrad(model), "use chefer or daam", LayerError)


# -- LeGrad -------------------------------------------------------------------------------------

def test_legrad_equals_torchcam_on_a_torchvision_vit():
    from torchcam.methods import LeGrad as TorchCAMLeGrad

    model = torchvision_vit()
    x = _inputs()
    classes = [1, 4, 2]
    ours = LeGrad(model)(x, classes)
    with TorchCAMLeGrad(model, list(model.encoder.layers)) as extractor:
        scores = model(x)
        cam = extractor(class_idx=classes, scores=scores)[0].detach()
    assert cam.shape == ours.raw.shape == (3, 4, 4) and float(cam.std()) > 0
    _assert_maps_equal(ours.raw, cam)
    upsampled = torch.nn.functional.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert float((ours.maps - _minmax(upsampled)).abs().max()) <= 1e-5
    # the last two blocks only, as in TorchCAM's own example (its last four of twelve)
    ours2 = LeGrad(model, last_blocks=2)(x, classes)
    with TorchCAMLeGrad(model, list(model.encoder.layers)[-2:]) as extractor:
        cam2 = extractor(class_idx=classes, scores=model(x))[0].detach()
    _assert_maps_equal(ours2.raw, cam2)
    assert ours2.layer == "encoder.layers[1:3]" and ours2.flow.shape == (3, 2, 32, 32)
    assert float((_minmax(ours2.raw) - _minmax(ours.raw)).abs().max()) > 1e-3  # the option matters


@pytest.mark.parametrize("family", ["timm", "huggingface"])
def test_legrad_equals_a_direct_implementation(family):
    model = MODELS[family]()
    x = _inputs()
    classes = torch.tensor([2, 2, 0])
    exp = LeGrad(model)(x, classes)
    if family == "timm":
        _, attns, outs = _timm_eager(model, x)
        tail = lambda t: model.head(model.fc_norm(model.norm(t)))  # noqa: E731
    else:
        _, attns, outs = _hf_eager(model, x)
        tail = lambda t: model.classifier(model.vit.layernorm(t))  # noqa: E731
    reference = _legrad_reference(attns, outs, tail, classes, (4, 4))
    assert float(reference.std()) > 0
    _assert_maps_equal(exp.raw, reference)
    # the flow is the running mean over blocks: its first entry is block 0's map alone
    first = _legrad_reference(attns[:1], outs[:1], tail, classes, (4, 4))
    _assert_maps_equal(exp.flow_raw[:, 0], first)


# -- both: batching, state, refusals --------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("method", [CheferRollout, LeGrad])
def test_a_batch_equals_single_images_and_the_model_is_left_as_it_was(method, family):
    model = MODELS[family]().train()
    next(model.parameters()).requires_grad_(False)  # a frozen parameter stays frozen
    before = snapshot(model)
    x = _inputs()
    batch = method(model)(x)
    for i in range(3):
        single = method(model)(x[i:i + 1])
        assert single.targets.tolist() == batch.targets[i:i + 1].tolist()
        torch.testing.assert_close(single.flow_raw[0], batch.flow_raw[i], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(single.maps[0], batch.maps[i], rtol=1e-4, atol=1e-5)
    assert float(batch.maps.min()) == 0 and float(batch.maps.max()) == 1
    assert_same_state(before, snapshot(model))


def _refused(call, match, error=InputError):
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_refusals_are_one_actionable_line():
    headless, x = timm_vit(num_classes=0), _inputs(2)
    _refused(lambda: CheferRollout(headless)(x), "callable target")
    exp = CheferRollout(headless)(x, lambda q: q[:, :4].sum(1))  # a score of the embedding works
    assert exp.targets is None and exp.maps.shape == (2, 32, 32)
    _refused(lambda: LeGrad(headless), "needs the classifier")
    model = timm_vit()
    _refused(lambda: LeGrad(model)(x, lambda out: out[:, 0]), "class indices")
    for bad in (0, 3, 1.5, True):
        _refused(lambda: LeGrad(model, last_blocks=bad), "last_blocks")
    for method in (CheferRollout, LeGrad, visionlens.DAAM):  # DAAM summed the K classes into one map
        _refused(lambda: method(model)(x, [[0, 1], [2, 3]]), "one class per image")
        _refused(lambda: method(model)(x, 7), "out of range")
        _refused(lambda: method(model)(torch.randn(2, 3, 48, 48)), "32x32")


# -- the world ViT: localisation beside DAAM, and the CLI ----------------------------------------

@pytest.fixture(scope="module")
def world_batch():
    b = World(WorldConfig(size=64), seed=0).batch("test", range(48))
    return (b["image"] - 0.5) / 0.5, b["label"], b["object_mask"].float()


def _mass_and_pointing(maps, mask):
    mass = (maps * mask).sum((1, 2)) / maps.sum((1, 2))
    hits = mask.flatten(1).gather(1, maps.flatten(1).argmax(1)[:, None])[:, 0]
    return mass, float(hits.mean())


def test_world_vit_maps_put_their_mass_on_the_object(world_batch):
    # measured on these 48 images (object share 0.089): chefer mass 0.466 (48/48 images above
    # their share), pointing 0.854; legrad mass 0.198 (41/48 above), pointing 0.833; DAAM on the
    # same images: mass 0.425, pointing 0.771 (test_daam.py)
    x, labels, mask = world_batch
    module = visionlens.load_model("world-vit").module
    share = mask.mean((1, 2))
    floors = {CheferRollout: (0.40, 0.9, 0.75), LeGrad: (0.15, 0.75, 0.7)}  # mass, share of images above, pointing
    for method, (mass_floor, above_floor, hit_floor) in floors.items():
        exp = method(module)(x)
        assert torch.equal(exp.targets, labels)
        mass, hits = _mass_and_pointing(exp.maps, mask)
        above = float((mass > share).float().mean())
        assert float(mass.mean()) >= mass_floor and above >= above_floor and hits >= hit_floor, \
            (method.name, float(mass.mean()), above, hits)


def _cli(capsys, *args):
    from visionlens.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_lists_and_runs_both_on_the_world_vit(tmp_path, world_batch, capsys):
    code, out, _ = _cli(capsys, "methods")
    assert code == 0 and "\nchefer " in out and "\nlegrad " in out
    files = save_world_images(world_batch[0], tmp_path)
    out_dir = tmp_path / "vit"
    code, _, err = _cli(capsys, "explain", *files, "--model", "world-vit", "--method", "chefer,legrad,daam",
                        "--out", str(out_dir), "--device", "cpu", "--quiet")
    assert code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["layer"]["chefer"] == summary["layer"]["legrad"] == "blocks[0:4]"
    for name in ("chefer", "legrad"):
        assert Image.open(out_dir / f"img0.{name}.gif").n_frames == 4
        flow = np.load(out_dir / "img1.npz")[f"{name}_flow"]
        assert flow.shape == (4, 64, 64) and flow.min() >= 0 and flow.max() <= 1
    code, _, err = _cli(capsys, "explain", files[0], "--model", "world-dino", "--method", "legrad",
                        "--out", str(tmp_path / "dino"), "--device", "cpu")
    assert code == 2 and not (tmp_path / "dino").exists()
    one_error_line(err, "legrad", "classifier")
