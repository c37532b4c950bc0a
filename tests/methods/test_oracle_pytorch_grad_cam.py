"""Grad-CAM agrees with pytorch-grad-cam (PyPI ``grad-cam``, test-only) on real photos."""

import numpy as np
import pytest
import torch

from visionlens import GradCAM
from visionlens.data import load_image

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def _compare(zoo, layer_module, layer_name, photos, targets=None):
    x = torch.stack([zoo.preprocess(load_image(p)) for p in photos])
    with torch.no_grad():
        classes = zoo.module(x).argmax(1).tolist() if targets is None else targets
    ours = GradCAM(zoo.module, layer_name)(x, classes).maps.numpy()
    with pgc.GradCAM(model=zoo.module, target_layers=[layer_module]) as ref_cam:
        ref = ref_cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    assert ours.shape == ref.shape
    for a, b in zip(ours, ref):
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert corr >= 0.999, corr
        assert np.abs(a - b).max() <= 1e-3, np.abs(a - b).max()


def test_gradcam_matches_pytorch_grad_cam_mobilenet_last_layer(mobilenet, imagenet_photos):
    _compare(mobilenet, mobilenet.module.features[-1], "features[-1]", imagenet_photos)


def test_gradcam_matches_pytorch_grad_cam_mobilenet_intermediate_layer(mobilenet, imagenet_photos):
    # an intermediate block (14x14) and a fixed, non-predicted class
    _compare(mobilenet, mobilenet.module.features[13], "features.13", imagenet_photos[:8], [1] * 8)


def test_gradcam_matches_pytorch_grad_cam_efficientnet(efficientnet, imagenet_photos):
    _compare(efficientnet, efficientnet.module._head_act, "_head_act", imagenet_photos[:8])


@pytest.mark.parametrize("method", ["GradCAM", "XGradCAM", "GradCAMPlusPlus"])
def test_a_layer_followed_by_an_in_place_relu_matches_pytorch_grad_cam_with_in_place_turned_off(method):
    """pytorch-grad-cam keeps a layer's output as a tensor sharing memory with it, which the in-place
    ReLU after it overwrites (docs/guides/switching.md); with in-place turned off in its copy of the
    model, the two agree. visionlens, on the model as built, uses the layer's own output."""
    import copy

    import torchvision

    import visionlens

    torch.manual_seed(1)
    model = torchvision.models.vgg11(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = [3, 7]
    ours = getattr(visionlens, method)(model, "features.13")(x, targets).maps.numpy()  # a conv before ReLU(inplace)
    without = copy.deepcopy(model)
    for m in without.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    with getattr(pgc, method)(model=without, target_layers=[without.features[13]]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])
    for a, b in zip(ours, ref):
        assert np.abs(a - b).max() <= 1e-4 and np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.9999
    assert all(m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU))  # the user's model as it was
