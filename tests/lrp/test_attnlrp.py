"""AttnLRP (issue 29, item 5): the rules one by one, conservation through whole ViTs, and the
relevance against the authors' library ``lxt`` (2.1, a test-only oracle) on the models it covers:
Hugging Face ViT (its attention wrapper, LayerNorm and activation patches) and torchvision ViT
(its default map: CP-LRP attention). timm ViTs are checked against lxt through a Hugging Face ViT
carrying the same weights. Every model is a tiny random-init one built here, in float64."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from visionlens.lrp.attention import identity_rule, layer_norm_rule, uniform_rule
from visionlens.methods import AttnLRP

from helpers import assert_same_state, snapshot

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")


def timm_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=5).double().eval()


def hf_vit(eager=False, width=32, heads=2):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=width, num_hidden_layers=2, num_attention_heads=heads,
                                 intermediate_size=2 * width if width == 32 else 4 * width, image_size=32, patch_size=8,
                                 num_labels=5, layer_norm_eps=1e-6)
    if eager:
        cfg._attn_implementation = "eager"
    model = transformers.ViTForImageClassification(cfg)
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    return model.double().eval()


def torchvision_vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32,
                                                 mlp_dim=64, num_classes=5)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts its head at zero
    return model.double().eval()


def world_like_vit():
    from visionlens.models.world_models import WorldViT

    torch.manual_seed(0)
    return WorldViT(img_size=32, patch=8, dim=32, depth=2, heads=2, num_classes=5).double().eval()


MODELS = {"timm": timm_vit, "huggingface": hf_vit, "torchvision": torchvision_vit, "world": world_like_vit}


def _inputs(n=3):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32, dtype=torch.float64)


def _close(ours, reference, rel):
    print(f"relative difference {float((ours - reference).abs().max() / reference.abs().max()):.1e}")
    """Largest difference within ``rel`` of the reference's largest magnitude."""
    err = float((ours - reference).abs().max())
    assert err <= rel * float(reference.abs().max()), (err, float(reference.abs().max()))


# -- the rules, one by one -------------------------------------------------------------------------

def _relevance_through(fn, *inputs):
    """``(R_inputs, R_output)`` for a random start gradient: ``R = t * grad`` on every tensor."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, g)
    return [t.detach() * gt for t, gt in zip(leaves, grads)], out.detach() * g


def test_softmax_gradient_x_input_is_the_linearisation_rule():
    torch.manual_seed(2)
    x = torch.randn(4, 7, dtype=torch.float64)
    (r_in,), r_out = _relevance_through(lambda t: t.softmax(-1), x)
    s = x.softmax(-1)
    expected = x * (r_out - s * r_out.sum(-1, keepdim=True))  # the paper's rule, R_out = s * g
    assert torch.allclose(r_in, expected, rtol=1e-10, atol=1e-12)


def test_uniform_rule_gives_each_factor_half_of_a_product():
    torch.manual_seed(3)
    a, b = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)
    (r_a, r_b), r_out = _relevance_through(lambda p, q: uniform_rule(p) @ uniform_rule(q), a, b)
    total = r_out.sum()
    assert abs(float(r_a.sum() - total / 2)) <= 1e-10 * float(r_out.abs().sum())
    assert abs(float(r_b.sum() - total / 2)) <= 1e-10 * float(r_out.abs().sum())
    assert torch.equal(uniform_rule(a), a)


def test_identity_rule_passes_relevance_through_unchanged():
    torch.manual_seed(4)
    x = torch.randn(3, 10, dtype=torch.float64)
    x[0, 0] = 0.0
    act = torch.nn.GELU()
    (r_in,), r_out = _relevance_through(lambda t: identity_rule(t, act(t)), x)
    assert torch.allclose(r_in[x != 0], r_out[x != 0], rtol=1e-10, atol=1e-14)
    assert float(r_in[0, 0]) == 0.0
    assert torch.equal(identity_rule(x, act(x)), act(x))


def test_layer_norm_rule_keeps_the_value_and_conserves_without_bias():
    torch.manual_seed(5)
    norm = torch.nn.LayerNorm(8, eps=1e-6).double()
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 8, dtype=torch.float64) * 3 + 1
    assert torch.equal(layer_norm_rule(norm, x, norm(x)), norm(x))
    with torch.no_grad():
        norm.bias.zero_()
    (r_in,), r_out = _relevance_through(lambda t: layer_norm_rule(norm, t, norm(t)), x)
    # (x - mean) / std * w is linear in x for a constant std: per token, relevance is conserved
    assert torch.allclose(r_in.sum(-1), r_out.sum(-1), rtol=1e-9, atol=1e-12)


# -- whole models ------------------------------------------------------------------------------------

def _zero_biases(model):
    """All biases, [class] tokens and position embeddings zero: every rule is then conservative."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "cls_token" in name or "class_token" in name or "pos" in name:
                p.zero_()
    return model


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("at", ["patches", "pixels"])
def test_relevance_is_conserved_with_constant_attention_and_no_biases(family, at):
    model = _zero_biases(MODELS[family]())
    exp = AttnLRP(model, at=at, variant="cp")(_inputs())
    total = exp.raw.sum((1, 2))
    assert torch.allclose(total, exp.scores, rtol=1e-8, atol=1e-10), (total, exp.scores)


@pytest.mark.parametrize("family", list(MODELS))
def test_a_batch_equals_single_images_and_the_model_is_left_as_it_was(family):
    model = MODELS[family]().float()
    x = _inputs().float()
    before = snapshot(model)
    batch = AttnLRP(model)(x)
    assert_same_state(before, snapshot(model))
    for i in range(3):
        one = AttnLRP(model)(x[i:i + 1])
        assert torch.allclose(one.raw[0], batch.raw[i], rtol=1e-4, atol=1e-6 * float(batch.raw[i].abs().max()))
        assert int(one.targets[0]) == int(batch.targets[i])
    assert batch.maps.shape == (3, 32, 32) and 0 <= float(batch.maps.min()) and float(batch.maps.max()) == 1.0


# -- lxt, the authors' library, as the oracle --------------------------------------------------------

def _lxt_module(name):
    """One of lxt 2.1's ``efficient`` modules, imported without the package ``__init__`` (which
    imports its BERT port, written for transformers 4)."""
    spec = importlib.util.find_spec("lxt")
    if spec is None:
        pytest.skip("lxt is not installed (pip install --no-deps lxt==2.1)")
    root = Path(spec.origin).parent / "efficient"
    if "lxt.efficient" not in sys.modules:
        package = types.ModuleType("lxt.efficient")
        package.__path__ = [str(root)]
        sys.modules["lxt.efficient"] = package
    if name == "vit_torch":  # the authors' patch map for torchvision ViTs, by file (lxt.efficient.models imports BERT)
        file_spec = importlib.util.spec_from_file_location("_lxt_vit_torch", root / "models" / "vit_torch.py")
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
        return module
    return importlib.import_module(f"lxt.efficient.{name}")


class _Patched:
    """Apply lxt's patches (class attributes and module functions) and undo them exactly on exit."""

    def __init__(self, targets):
        self.targets = targets  # [(owner, attribute)], the things lxt replaces
        self.saved = []

    def __enter__(self):
        self.saved = [(owner, attr, owner.__dict__.get(attr, _MISSING)) for owner, attr in self.targets]
        return self

    def __exit__(self, *exc):
        for owner, attr, value in self.saved:
            if value is _MISSING:
                if attr in owner.__dict__:
                    delattr(owner, attr)
            else:
                setattr(owner, attr, value)


_MISSING = object()


def _lxt_relevance(model, x, conv, at):
    """lxt's relevance (``x * grad`` after its patches) at the pixels or the patch convolution's output."""
    store = {}
    handle = conv.register_forward_hook(lambda m, a, out: store.__setitem__("z", out))
    try:
        inputs = x.detach().requires_grad_(True)
        output = model(inputs)
        logits = output.logits if hasattr(output, "logits") else output
        target = logits.argmax(1)
        start = inputs if at == "pixels" else store["z"]
        (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), start)
    finally:
        handle.remove()
    return (start.detach() * grad).sum(1), target


def _lxt_hf(model, x, at):
    patches = _lxt_module("patches")
    from transformers.activations import GELUActivation
    from transformers.models.vit import modeling_vit

    targets = [(torch.nn.LayerNorm, "forward"), (GELUActivation, "forward"), (GELUActivation, "original_forward"),
               (modeling_vit, "eager_attention_forward")]
    with _Patched(targets):
        patches.patch_method(patches.layer_norm_forward, torch.nn.LayerNorm)
        patches.patch_method(patches.non_linear_forward, GELUActivation, keep_original=True)
        modeling_vit.eager_attention_forward = patches.wrap_attention_forward(modeling_vit.eager_attention_forward)
        return _lxt_relevance(model, x, model.vit.embeddings.patch_embeddings.projection, at)


@pytest.mark.parametrize("at", ["patches", "pixels"])
def test_equals_lxt_on_a_hugging_face_vit(at):
    model, x = hf_vit(eager=True), _inputs()
    ours = AttnLRP(model, at=at)(x)
    constant_attention = AttnLRP(model, at=at, variant="cp")(x).raw
    reference, target = _lxt_hf(model, x, at)
    assert torch.equal(ours.targets, target)
    _close(ours.raw, reference, 1e-5)  # lxt's eager attention takes its softmax in float32
    # the oracle tells the rules apart: CP-LRP is far from it
    assert float((constant_attention - reference).abs().max()) > 1e-3 * float(reference.abs().max())


@pytest.mark.parametrize("at", ["patches", "pixels"])
def test_cp_variant_equals_lxt_on_a_torchvision_vit(at):
    vit_torch = _lxt_module("vit_torch")
    model, x = torchvision_vit(), _inputs()
    ours = AttnLRP(model, at=at, variant="cp")(x)
    from torch.nn import GELU, LayerNorm, MultiheadAttention

    targets = [(GELU, "forward"), (GELU, "original_forward"), (LayerNorm, "forward"),
               (MultiheadAttention, "forward"), (MultiheadAttention, "original_forward")]
    with _Patched(targets):
        for cls, patch in vit_torch.cp_LRP.items():
            assert patch(cls)
        reference, target = _lxt_relevance(model, x, model.conv_proj, at)
    assert torch.equal(ours.targets, target)
    _close(ours.raw, reference, 1e-6)  # lxt divides by x + 1e-10 in its identity rule


def _hf_twin_of_timm(model):
    """A Hugging Face ViT with the timm ViT's weights (same architecture, same eps and GELU)."""
    twin = hf_vit(eager=True, width=model.embed_dim, heads=model.blocks[0].attn.num_heads)
    blocks, layers = model.blocks, twin.vit.layers
    with torch.no_grad():
        emb = twin.vit.embeddings
        emb.patch_embeddings.projection.load_state_dict(model.patch_embed.proj.state_dict())
        emb.cls_token.copy_(model.cls_token)
        emb.position_embeddings.copy_(model.pos_embed)
        for block, layer in zip(blocks, layers):
            layer.layernorm_before.load_state_dict(block.norm1.state_dict())
            layer.layernorm_after.load_state_dict(block.norm2.state_dict())
            attn = layer.attention
            for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
                proj.weight.copy_(block.attn.qkv.weight.chunk(3)[i])
                proj.bias.copy_(block.attn.qkv.bias.chunk(3)[i])
            attn.o_proj.load_state_dict(block.attn.proj.state_dict())
            layer.mlp.fc1.load_state_dict(block.mlp.fc1.state_dict())
            layer.mlp.fc2.load_state_dict(block.mlp.fc2.state_dict())
        twin.vit.layernorm.load_state_dict(model.norm.state_dict())
        twin.classifier.load_state_dict(model.head.state_dict())
    return twin


@pytest.mark.parametrize("at", ["patches", "pixels"])
def test_equals_lxt_on_a_timm_vit_through_its_hugging_face_twin(at):
    model, x = timm_vit(), _inputs()
    twin = _hf_twin_of_timm(model)
    assert torch.allclose(model(x), twin(x).logits, rtol=1e-6, atol=1e-7)  # HF eager: softmax in float32
    ours = AttnLRP(model, at=at)(x)
    reference, target = _lxt_hf(twin, x, at)
    assert torch.equal(ours.targets, target)
    _close(ours.raw, reference, 1e-5)


# -- refusals, the world ViT and the command line ------------------------------------------------------

def _refused(call, *words):
    from visionlens.errors import VisionlensError

    with pytest.raises(VisionlensError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_refusals_are_one_actionable_line():
    model, x = timm_vit().float(), _inputs(2).float()
    _refused(lambda: AttnLRP(model, at="tokens"), "at must be one of", "patches")
    _refused(lambda: AttnLRP(model, variant="full"), "variant must be one of", "cp")
    _refused(lambda: AttnLRP(model, layer="head"), "leave the layer out")
    _refused(lambda: AttnLRP(model)(x, [[0, 1], [2, 3]]), "one score per image")
    _refused(lambda: AttnLRP(model)(torch.randn(2, 3, 48, 48)), "32x32")
    _refused(lambda: AttnLRP(torchvision.models.resnet18(num_classes=3)), "not a recognised Vision Transformer")
    torch.manual_seed(0)
    headless = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                                 num_classes=0).eval()
    _refused(lambda: AttnLRP(headless)(x), "callable target")
    exp = AttnLRP(headless)(x, lambda q: q[:, :4].sum(1))  # a score of the embedding works
    assert exp.targets is None and exp.raw.shape == (2, 4, 4)


@pytest.fixture(scope="module")
def world_batch():
    from visionlens.data.world import World, WorldConfig

    b = World(WorldConfig(size=64), seed=0).batch("test", range(48))
    return (b["image"] - 0.5) / 0.5, b["label"], b["object_mask"].float()


def test_world_vit_maps_put_their_mass_on_the_object(world_batch):
    # measured on these 48 images (object share 0.089): patches mass 0.589, pointing 0.917;
    # pixels mass 0.834, pointing 1.0 (chefer 0.466 / 0.854, DAAM 0.425 / 0.771: test_vit_baselines.py)
    import visionlens

    x, labels, mask = world_batch
    module = visionlens.load_model("world-vit").module
    share = mask.mean((1, 2))
    for at, (mass_floor, hit_floor) in {"patches": (0.5, 0.85), "pixels": (0.7, 0.9)}.items():
        exp = AttnLRP(module, at=at)(x)
        assert torch.equal(exp.targets, labels)
        mass = (exp.maps * mask).sum((1, 2)) / exp.maps.sum((1, 2))
        hits = float(mask.flatten(1).gather(1, exp.maps.flatten(1).argmax(1)[:, None]).mean())
        assert float(mass.mean()) >= mass_floor and float((mass > share).float().mean()) >= 0.9 and hits >= hit_floor, \
            (at, float(mass.mean()), hits)


def test_cli_lists_and_runs_attnlrp_on_the_world_vit(tmp_path, world_batch, capsys):
    import json

    from visionlens.cli import main

    from helpers import one_error_line, save_world_images

    assert main(["methods"]) == 0
    assert "\nattnlrp " in capsys.readouterr().out
    files = save_world_images(world_batch[0], tmp_path)
    out_dir = tmp_path / "vit"
    code = main(["explain", *files, "--model", "world-vit", "--method", "attnlrp,chefer", "--out", str(out_dir),
                 "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["layer"]["attnlrp"] == "blocks[0:4]"
    assert (out_dir / "img0.attnlrp.png").exists()
    code = main(["explain", files[0], "--model", "world-dino", "--method", "attnlrp", "--out", str(tmp_path / "dino"),
                 "--device", "cpu"])
    assert code == 2 and not (tmp_path / "dino").exists()
    one_error_line(capsys.readouterr().err, "attnlrp", "callable target")
