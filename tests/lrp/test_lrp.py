"""The LRP engine: conservation, agreement with Zennit, the rules by hand, canonizers, clear errors
and exact model restoration."""

import pytest
import torch
import torchvision
from torch import nn

from helpers import assert_same_state, snapshot
from visionlens.errors import InputError, LRPError
from visionlens.lrp import canonizers
from visionlens.lrp import LRP, Add, Composite, Gating, ResidualAdd, ZPlus, ZRule, canonized, default_canonizers


def _structure(model: nn.Module) -> dict:
    """What a canonizer could change: the module tree, instance ``forward`` attributes, in-place flags."""
    return {
        "names": [n for n, _ in model.named_modules()],
        "ids": [id(m) for m in model.modules()],
        "forwards": [m.__dict__.get("forward") for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
    }


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


class BiasFreeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU(), nn.Dropout(0.3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5, bias=False)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.mark.parametrize("contrastive", [False, True])
def test_total_relevance_is_conserved_layer_to_layer_without_bias(contrastive):
    torch.manual_seed(0)
    net = BiasFreeNet().eval()
    x = torch.randn(3, 3, 16, 16)
    layers = ["input"] + [f"features.{i}" for i in range(9)] + ["pool"]
    att = LRP(net).attribute(x, target=[0, 2, 4], layers=layers, contrastive=contrastive)
    total = att.start.sum(1)
    assert torch.allclose(total, torch.full((3,), 1.0 if not contrastive else 1 / 5))
    for name in layers:
        sums = att.relevance[name].flatten(1).sum(1)
        assert torch.allclose(sums, total, rtol=1e-4, atol=0), (name, sums, total)


def test_z_plus_and_z_rules_by_hand():
    torch.manual_seed(1)
    lin = nn.Linear(4, 3, bias=False)
    x = torch.randn(2, 4)
    r = torch.randn(2, 3)
    wp, wn = lin.weight.clamp(min=0), lin.weight.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    z = xp @ wp.t() + xn @ wn.t()
    s = torch.where(z == 0, torch.zeros_like(z), r / z)  # zero relevance where nothing contributes
    expected = xp * (s @ wp) + xn * (s @ wn)
    (got,) = ZPlus(bias="none").relevance(lin, (x,), r)
    assert torch.allclose(got, expected, atol=1e-6)
    a, b = torch.rand(2, 5) + 0.1, torch.rand(2, 5) + 0.1
    ra, rb = ZRule().relevance(Add(), (a, b), r[:, :1].expand(2, 5))
    assert torch.allclose(ra, a / (a + b) * r[:, :1], atol=1e-6) and torch.allclose(ra + rb, r[:, :1].expand(2, 5))


def test_gating_sends_all_relevance_to_the_activation_branch():
    se = torchvision.ops.SqueezeExcitation(8, 4)
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), se, nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4, bias=False)).eval()
    units = {u.name: u.rule for u in Composite().units(net)}
    assert isinstance(units["2"], Gating) and "2.fc1" not in units  # the whole SE block is one unit
    att = LRP(net).attribute(torch.randn(2, 3, 12, 12), target=1, layers=["1", "2", "input"])
    assert torch.allclose(att.relevance["1"], att.relevance["2"])  # gate gets nothing, activation everything
    assert torch.allclose(att.relevance["input"].flatten(1).sum(1), att.start.sum(1), rtol=1e-4)


# ----- agreement with Zennit (same rules: z^B first layer, z+ elsewhere, pass for BN/ReLU, z-rule for pooling and sums)


def _zennit(model, x, start, layer):
    from zennit.attribution import Gradient
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Norm, Pass, ZBox
    from zennit.rules import ZPlus as ZennitZPlus
    from zennit.torchvision import ResNetBasicBlockCanonizer
    from zennit.types import Activation, AvgPool, BatchNorm, Convolution

    low = x.flatten(1).min(1).values[:, None, None, None]
    high = x.flatten(1).max(1).values[:, None, None, None]
    composite = SpecialFirstLayerMapComposite(
        layer_map=[(Activation, Pass()), (BatchNorm, Pass()), (Sum, Norm()), (AvgPool, Norm()),
                   (nn.AdaptiveAvgPool2d, Norm()), (Convolution, ZennitZPlus()), (nn.Linear, ZennitZPlus())],
        first_map=[(Convolution, ZBox(low, high))],
        canonizers=[ResNetBasicBlockCanonizer()],
    )
    store = {}

    def keep(module, inputs, output):
        output.register_hook(lambda g: store.__setitem__("r", g))

    with Gradient(model, composite) as attributor:
        handle = dict(model.named_modules())[layer].register_forward_hook(keep)
        try:
            _, rel_input = attributor(x, start)
        finally:
            handle.remove()
    return rel_input, store["r"]


@pytest.mark.parametrize("arch, layer", [("vgg16", "features.22"), ("resnet18", "layer2")])
def test_agrees_with_zennit_at_an_intermediate_layer_and_the_input(arch, layer):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)().eval()
    with torch.no_grad():  # non-zero biases and BatchNorm statistics, so that they matter
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.uniform_(-0.1, 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    composite = Composite(type_rules={(nn.Conv2d, nn.Linear): ZPlus(bias="positive")})  # Zennit's bias convention
    att = LRP(model, composite).attribute(x, target=[3, 7], layers=["input", layer])
    for m in model.modules():  # Zennit needs out-of-place ReLUs
        if isinstance(m, nn.ReLU):
            m.inplace = False
    z_input, z_layer = _zennit(model, x, att.start, layer)
    assert _corr(att.relevance["input"], z_input).min() >= 0.99
    assert _corr(att.relevance[layer], z_layer).min() >= 0.99


# ----- canonizers, restoration, errors


def test_canonizers_reproduce_the_output_and_are_undone():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    bottleneck = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1])
    for model in [torchvision.models.resnet18().eval(), bottleneck.eval(),
                  timm.create_model("resnet18", pretrained=False).eval(), torchvision.models.mobilenet_v2().eval()]:
        before = _structure(model)
        with torch.no_grad():
            expected = model(x)
            with canonized(model, default_canonizers()):
                assert any(isinstance(m, Add) for m in model.modules())
                assert torch.allclose(model(x), expected, atol=1e-5)
        assert _structure(model) == before


def test_model_restored_exactly_after_success_and_after_an_error():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.train()
    model.layer1.requires_grad_(False)
    state, structure = snapshot(model), _structure(model)
    x = torch.randn(2, 3, 32, 32)
    LRP(model).attribute(x, target=1, layers=["layer2", "input"])
    assert_same_state(state, snapshot(model))
    assert _structure(model) == structure
    with pytest.raises(InputError, match="out of range"):
        LRP(model).attribute(x, target=99, layers=["layer2"])
    assert_same_state(state, snapshot(model))
    assert _structure(model) == structure


class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, 1))

    def forward(self, x):
        return x * self.weight


class Residual(nn.Module):
    def __init__(self, inplace: bool):
        super().__init__()
        self.conv, self.bn, self.inplace = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), inplace

    def forward(self, x):
        out = self.bn(self.conv(x))
        if self.inplace:
            out += x
            return out
        return out + x


def _head(body: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), body, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


@pytest.mark.parametrize(
    "body, message",
    [
        (Scale(4), "LRP has no rule for module with parameters '2' (test_lrp.Scale); register one, e.g. "
                   "visionlens.lrp.register_rule(Scale"),
        (nn.Softplus(), "LRP has no rule for module of a type '2' (torch.nn.modules.activation.Softplus)"),
        (Residual(inplace=False), "no rule for the functional operation 'Add' that feeds module '3'"),
        (Residual(inplace=True), "no rule for the functional operation 'Add' that feeds module '3'"),
    ],
)
def test_missing_rules_stop_with_one_line_naming_the_module(body, message):
    model = _head(body)
    state, structure = snapshot(model), _structure(model)
    with pytest.raises(LRPError) as err:
        LRP(model).attribute(torch.randn(2, 3, 8, 8), layers=["input"])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert_same_state(state, snapshot(model))
    assert _structure(model) == structure


def test_a_registered_rule_or_block_makes_the_error_go_away(monkeypatch):
    model = _head(Scale(4))
    att = LRP(model, Composite(name_rules={"2": ZRule()})).attribute(torch.randn(2, 3, 8, 8), layers=["1"])
    assert torch.isfinite(att.relevance["1"]).all()

    def forward(self, x):
        return self.lrp_add(self.bn(self.conv(x)), x)

    monkeypatch.setattr(canonizers, "_RESIDUAL_FORWARDS", dict(canonizers._RESIDUAL_FORWARDS))
    ResidualAdd.register(Residual, forward)
    model = _head(Residual(inplace=True))
    before = _structure(model)
    att = LRP(model).attribute(torch.randn(2, 3, 8, 8), layers=["input"])
    assert torch.isfinite(att.relevance["input"]).all() and _structure(model) == before


def test_relevance_at_mobilenet_v2_features_13_equals_zennits(imagenet_photos):
    """Relevance-CAM's negative values at the zoo MobileNetV2's features.13 (Bullmastiff photo) are
    LRP's: the engine's relevance there equals Zennit's under the same rules (z+ with Zennit's bias
    convention, z^B first layer, pass for BN/ReLU6, z-rule for sums and pooling)."""
    pytest.importorskip("zennit")
    from PIL import Image
    from zennit.attribution import Gradient
    from zennit.canonizers import AttributeCanonizer
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Norm, Pass, ZBox
    from zennit.rules import ZPlus as ZennitZPlus
    from zennit.types import Activation, AvgPool, BatchNorm, Convolution

    import visionlens
    from visionlens.models.mobilenet_v2 import InvertedResidual

    class SkipSum(AttributeCanonizer):
        """The inverted residual's ``x + conv(x)`` through Zennit's ``Sum`` (as its ResNet canonizer)."""

        def __init__(self):
            super().__init__(self._attributes)

        @classmethod
        def _attributes(cls, name, module):
            if isinstance(module, InvertedResidual) and module.use_skip:
                return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
            return None

        @staticmethod
        def forward(self, x):
            return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))

    zoo = visionlens.load_model("mobilenet_v2")
    model, layer = zoo.module.eval(), "features.13"
    bullmastiff = next(p for p in imagenet_photos if p.stem.endswith("_243"))
    x = zoo.preprocess(Image.open(bullmastiff).convert("RGB"))[None]
    composite = Composite(type_rules={(nn.Conv2d, nn.Linear): ZPlus(bias="positive")})
    att = LRP(model, composite).attribute(x, target=243, layers=[layer])
    ours, act = att.relevance[layer], att.activations[layer]
    low, high = x.min(), x.max()
    reference = SpecialFirstLayerMapComposite(
        layer_map=[(Activation, Pass()), (BatchNorm, Pass()), (Sum, Norm()), (AvgPool, Norm()),
                   (nn.AdaptiveAvgPool2d, Norm()), (Convolution, ZennitZPlus()), (nn.Linear, ZennitZPlus())],
        first_map=[(Convolution, ZBox(low, high))], canonizers=[SkipSum()])
    store = {}
    def keep(module, inputs, output):
        output.register_hook(lambda g: store.__setitem__("r", g))

    handle = dict(model.named_modules())[layer].register_forward_hook(keep)
    try:
        with Gradient(model, reference) as attributor:
            attributor(x, att.start)
    finally:
        handle.remove()
    theirs = store["r"]
    assert float((ours - theirs).abs().max()) <= 5e-3 * float(theirs.abs().max())
    cam = lambda r: (r.mean((2, 3))[:, :, None, None] * act).sum(1)  # noqa: E731  Relevance-CAM's map
    ours_cam, their_cam = cam(ours), cam(theirs)
    assert float(ours_cam.min()) < 0 and float(their_cam.min()) < 0  # the negative values are Zennit's too
    assert float(((ours_cam > 0) != (their_cam > 0)).float().mean()) < 0.01

def test_a_full_backward_hook_of_the_callers_does_not_stop_lrp():
    """A gradient-logging hook (register_full_backward_hook) puts an identity node in the graph;
    the maps are those without it, and the hook is still there afterwards."""
    tv = pytest.importorskip("torchvision")
    from visionlens import RelevanceCAM

    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64)
    plain = RelevanceCAM(model, "layer3")(x).maps
    model.layer4.register_full_backward_hook(lambda module, grad_in, grad_out: None)
    hooked = RelevanceCAM(model, "layer3")(x).maps
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-6)
    assert len(model.layer4._backward_hooks) == 1


def test_a_module_called_twice_is_explained_at_its_last_call_as_every_method_does():
    """torchvision's BasicBlock runs its one ReLU twice; its last call is the block's output, as
    Grad-CAM's activation capture reads it (Relevance-CAM used to read the first call)."""
    from visionlens import GradCAM, RelevanceCAM

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    att = LRP(model).attribute(x, [1, 2], layers=["layer4.1.relu", "layer4"])  # the ReLU's first call is the leaf
    torch.testing.assert_close(att.relevance["layer4.1.relu"], att.relevance["layer4"], rtol=0, atol=1e-7)
    shared, block = RelevanceCAM(model, "layer4.1.relu")(x, [1, 2]), RelevanceCAM(model, "layer4")(x, [1, 2])
    assert shared.raw.abs().amax() > 0
    torch.testing.assert_close(shared.raw, block.raw, rtol=0, atol=1e-6)
    torch.testing.assert_close(GradCAM(model, "layer4.1.relu")(x, [1, 2]).raw, GradCAM(model, "layer4")(x, [1, 2]).raw,
                               rtol=0, atol=1e-6)
