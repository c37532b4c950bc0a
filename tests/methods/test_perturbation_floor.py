"""Score-CAM and Ablation-CAM on the fastest checked inference copy at an automatic batch size
(issue 29 item 2): the same maps as on the model itself, and the user's model returned unchanged."""

from __future__ import annotations

import pytest
import torch

from visionlens import AblationCAM, ScoreCAM
from visionlens.core import inference as I
from visionlens.core.inference import BatchSizer
from visionlens.methods.ablationcam import AblatedBatches, layer_tail

from helpers import TinyGapNet, assert_same_state, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # batch norms that do something, so that folding them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("method, layer", [(ScoreCAM, "layer3"), (AblationCAM, "layer3"),
                                           (AblationCAM, "layer4.1.conv2")])
def test_the_fast_path_gives_the_plain_paths_maps(method, layer):
    """``layer4.1.conv2`` is a convolution whose batch norm follows: the copy keeps that pair
    unfolded, so the ablated activations are the convolution's own output."""
    model = _resnet()
    x = torch.randn(2, 3, 64, 64)
    before = snapshot(model)
    fast = method(model, layer)(x, [1, 7])
    plain = method(model, layer, batch_size=64, inference_copy=False)(x, [1, 7])
    assert fast.maps.abs().amax() > 0
    torch.testing.assert_close(fast.maps, plain.maps, rtol=0, atol=1e-4)
    assert_same_state(before, snapshot(model))


def test_the_copy_is_chosen_once_and_renewed_when_the_weights_change():
    torch.manual_seed(0)
    net = TinyGapNet().eval()
    x = torch.randn(2, 3, 32, 32)
    first, how = I.fastest_checked_copy(net, x, 16)
    assert I.fastest_checked_copy(net, x, 16)[0] is first
    assert how == "model itself" or how.startswith("inference copy (2 BatchNorm folded")
    with torch.no_grad():
        net.fc.weight.mul_(2)
    again = I.fastest_checked_copy(net, x, 16)[0]
    assert again is not first or how == "model itself"
    torch.testing.assert_close(again(x), net(x), rtol=0, atol=1e-4)
    kept = I.fastest_checked_copy(net, x, 16, keep=("features.0",))[0]
    if isinstance(kept, I.InferenceCopy):
        assert isinstance(kept.inner.features[1], torch.nn.BatchNorm2d)  # the kept pair stays unfolded


class _Relabelled(TinyGapNet):
    shift = 0  # a plain attribute that renumbers the classes

    def forward(self, x):
        return super().forward(x).roll(self.shift, 1)


def _weights_through_data(net):
    net.fc.weight.data.copy_(net.fc.weight.data.roll(1, 0))  # through .data: no new tensor, no version bump


def _a_hook(net):
    net.fc.register_forward_hook(lambda module, inputs, output: output.roll(1, 1))


def _an_attribute(net):
    net.shift = 1


@pytest.mark.parametrize("change", [_weights_through_data, _a_hook, _an_attribute])
@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM])
def test_a_model_changed_since_the_last_call_is_explained_as_it_is_now(method, change):
    """The kept copy (and Ablation-CAM's checked tail) came from the model before the change; a
    change that keeps every parameter tensor (a ``.data`` update, a hook, a plain attribute) must
    not leave the maps those of the old model."""
    torch.manual_seed(0)
    net = _Relabelled().eval()
    x = torch.randn(2, 3, 32, 32)
    explain = method(net, "features")
    before = explain(x, [1, 2]).maps
    change(net)
    after = explain(x, [1, 2]).maps  # the same instance, as a loop over batches would call it
    plain = method(net, "features", batch_size=64, inference_copy=False)(x, [1, 2]).maps
    assert (plain - before).abs().amax() > 2e-3  # the change matters to the maps (20x the tolerance)
    torch.testing.assert_close(after, plain, rtol=0, atol=1e-4)
    torch.testing.assert_close(method(net, "features")(x, [1, 2]).maps, plain, rtol=0, atol=1e-4)


def test_an_explicit_batch_size_bounds_every_masked_pass(monkeypatch):
    torch.manual_seed(0)
    net = TinyGapNet().eval()
    sizes = []
    real = net.forward
    monkeypatch.setattr(I, "fastest_checked_copy", lambda module, x, batch, keep=(): (module, "model itself"))
    monkeypatch.setattr(net, "forward", lambda x: sizes.append(len(x)) or real(x))
    x = torch.randn(2, 3, 32, 32)
    from visionlens.methods import scorecam

    monkeypatch.setattr(scorecam, "fastest_checked_copy", I.fastest_checked_copy)
    a = ScoreCAM(net, "features.3", batch_size=5)(x, [0, 1])
    assert sizes and max(sizes[1:]) <= 5
    sizes.clear()
    b = ScoreCAM(net, "features.3")(x, [0, 1])  # the timed size: from 4 images, doubling while it gets faster
    assert max(sizes) > 5
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=1e-5)


# -- Ablation-CAM's fast path: the traced tail, the reused buffer, the timed batch size ---------------

def _ablation_by_hand(net: TinyGapNet, upto: int, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """The raw Ablation-CAM map at ``net.features[upto]``: each channel zeroed in turn and the rest
    of the network run on it, one channel at a time."""
    index = torch.tensor(classes)[:, None]
    with torch.no_grad():
        acts = net.features[:upto + 1](x).clone()
        base = net(x).gather(1, index)[:, 0]
        weights = torch.empty(len(x), acts.shape[1])
        for k in range(acts.shape[1]):
            ablated = acts.clone()
            ablated[:, k] = 0
            out = net.fc(net.pool(net.features[upto + 1:](ablated)).flatten(1)).gather(1, index)[:, 0]
            weights[:, k] = (base - out) / base
    return torch.einsum("bk,bkhw->bhw", weights, acts)


@pytest.mark.parametrize("upto", [4, 5])  # a batch norm whose output an in-place ReLU overwrites; that ReLU
@pytest.mark.parametrize("batch_size", [3, None])  # several passes of 3 copies; the timed size
def test_ablation_cam_fast_path_equals_ablation_by_hand(upto, batch_size):
    """Also where an in-place ReLU follows the layer: neither the checks nor the ablated passes
    may write into the layer's activations that the map is built from."""
    torch.manual_seed(0)
    net = TinyGapNet().eval()
    x = torch.randn(3, 3, 16, 16)
    before = snapshot(net)
    cam = AblationCAM(net, f"features.{upto}", batch_size=batch_size)
    for _ in range(3):  # later calls reuse the checked tail and the batch size being searched
        exp = cam(x, [0, 2, 4])
        torch.testing.assert_close(exp.raw, _ablation_by_hand(net, upto, x, [0, 2, 4]), rtol=1e-4, atol=1e-5)
    assert_same_state(before, snapshot(net))


def test_the_traced_tail_runs_nothing_before_the_layer(monkeypatch):
    """At ``layer3`` of a ResNet the ablated copies run only ``layer4``, the pooling and the head of
    the inference copy: nothing in its ``layer1`` runs in a call, and the maps equal the model-itself path."""
    from visionlens.methods import ablationcam

    model = _resnet()
    x = torch.randn(2, 3, 64, 64)
    copy = I.InferenceCopy(model, keep=("layer3",))
    monkeypatch.setattr(ablationcam, "fastest_checked_copy", lambda module, x, batch, keep=(): (copy, "copy"))
    runs = {"layer1.0.conv1": 0, "layer4.0.conv1": 0}  # leaves: the traced tail calls these, not the blocks

    def count(name):
        return lambda module, inputs, output: runs.update({name: runs[name] + 1})

    for name in runs:
        copy.inner.get_submodule(name).register_forward_hook(count(name))
    cam = AblationCAM(model, "layer3")
    cam(x, [1, 7])  # the first call also measures the copy's memory per image (one probe forward)
    runs.update({name: 0 for name in runs})
    fast = cam(x, [1, 7])
    assert runs["layer1.0.conv1"] == 0 and runs["layer4.0.conv1"] > 0
    plain = AblationCAM(model, "layer3", inference_copy=False)(x, [1, 7])
    # the copy folds BatchNorm: its logits round differently, and (y - y_k) / y magnifies that
    assert float((fast.raw - plain.raw).abs().max()) <= 1e-3 * float(plain.raw.abs().max())


def test_layer_tail_equals_the_model_and_refuses_a_skip_over_the_layer():
    model = _resnet()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        acts = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
        torch.testing.assert_close(layer_tail(model, "layer1")(acts), model(x), rtol=1e-5, atol=1e-5)
    assert layer_tail(model, "layer4.0.conv1") is None  # the block's shortcut reads the block's input


@pytest.mark.parametrize("shape, tokens", [((3, 5, 2, 2), False), ((2, 6, 4), True)])
def test_reused_ablation_buffer_equals_fresh_copies(shape, tokens):
    """Batches of every size, across image boundaries, and after the model wrote into the buffer
    (as an in-place ReLU after the layer does): each equals a fresh copy with its channel zeroed."""
    torch.manual_seed(0)
    source = torch.randn(shape)
    kept = source.clone()
    b, k = shape[0], shape[-1] if tokens else shape[1]
    batches = AblatedBatches(source, 4, tokens)
    start = 0
    for n, scribble in [(4, False), (4, False), (1, True), (4, False), (3, False), (4, False)] * 2:
        pairs = torch.arange(start, start + n) % (b * k)
        image, channel = pairs // k, pairs % k
        expected = source[image].clone()
        if tokens:
            expected[torch.arange(n), ..., channel] = 0
        else:
            expected[torch.arange(n), channel] = 0
        got = batches(image, channel)
        assert torch.equal(got, expected)
        if scribble:
            got.relu_()
        start += n
    assert torch.equal(source, kept)  # the source is never written


def test_the_batch_sizer_keeps_the_fastest_size_and_ignores_a_short_pass():
    rate = {32: 100.0, 64: 180.0, 128: 200.0, 256: 150.0}  # copies per second
    sizer = BatchSizer(256, timed=True)
    sizes = []
    for _ in range(12):
        size = sizer.next()
        sizes.append(size)
        sizer.record(size, size, size / rate[size])  # two passes per size, then the next size
        sizer.record(size, size - 1, 1e-6)  # a short last pass: not counted
    assert sizes == [32, 32, 64, 64, 128, 128, 256, 256, 128, 128, 128, 128]  # 256 is too slow: 128 stays
    assert BatchSizer(40, timed=False).next() == 40


def test_ablation_cam_keeps_its_buffer_between_calls_and_refills_it_for_new_images():
    """On a CPU the buffer of ablated copies outlives a call (no fresh pages each call); a call on
    other images still gets their own maps: equal to a new AblationCAM's on those images."""
    torch.manual_seed(0)
    net = TinyGapNet().eval()
    first, second = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    cam = AblationCAM(net, "features.3", batch_size=5)
    cam(first, [0, 2])
    buffer = cam._kept_batches.buffer
    again = cam(second, [1, 3])
    assert cam._kept_batches.buffer is buffer
    fresh = AblationCAM(net, "features.3", batch_size=5)(second, [1, 3])
    torch.testing.assert_close(again.raw, fresh.raw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again.raw, _ablation_by_hand(net, 3, second, [1, 3]), rtol=1e-4, atol=1e-5)
