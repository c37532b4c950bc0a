"""On a CUDA machine: results stay on the GPU and agree with the CPU and with pytorch-grad-cam."""

import json

import numpy as np
import pytest
import torch

import visionlens
from visionlens import CAM, GradCAM
from visionlens.data import load_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def gpu_mobilenet(mobilenet):
    return visionlens.load_model("mobilenet_v2", device="cuda")


def test_gpu_maps_match_cpu_and_stay_on_device(gpu_mobilenet, mobilenet, imagenet_photos):
    x = torch.stack([mobilenet.preprocess(load_image(p)) for p in imagenet_photos])
    for method in (CAM, GradCAM):
        cpu = method(mobilenet.module)(x)
        gpu = method(gpu_mobilenet.module)(x.cuda())
        assert gpu.maps.is_cuda and gpu.raw.is_cuda and gpu.targets.is_cuda
        assert torch.equal(cpu.targets, gpu.targets.cpu())
        diff = (cpu.maps - gpu.maps.cpu()).abs().max().item()
        assert diff < 2e-2, diff  # TF32/cuDNN differences only


def test_gpu_matches_pytorch_grad_cam(gpu_mobilenet, imagenet_photos):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.stack([gpu_mobilenet.preprocess(load_image(p)) for p in imagenet_photos]).cuda()
    ours = GradCAM(gpu_mobilenet.module, "features[-1]")(x)
    classes = ours.targets.tolist()
    with pgc.GradCAM(model=gpu_mobilenet.module, target_layers=[gpu_mobilenet.module.features[-1]]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    for a, b in zip(ours.maps.cpu().numpy(), ref):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999
        assert np.abs(a - b).max() <= 1e-3


def test_cli_on_cuda(tmp_path, imagenet_photos):
    from visionlens.cli import main

    assert main(["explain", *map(str, imagenet_photos[:3]), "--device", "cuda", "--out", str(tmp_path), "--quiet"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["device"].startswith("cuda")
