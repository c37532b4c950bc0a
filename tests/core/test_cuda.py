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


def test_relevance_cam_on_gpu_matches_cpu(gpu_mobilenet, mobilenet, imagenet_photos):
    from visionlens import RelevanceCAM

    x = torch.stack([mobilenet.preprocess(load_image(p)) for p in imagenet_photos[:8]])
    for layer in ("features.13", "features"):
        cpu = RelevanceCAM(mobilenet.module, layer)(x)
        gpu = RelevanceCAM(gpu_mobilenet.module, layer)(x.cuda())
        assert gpu.maps.is_cuda and torch.equal(cpu.targets, gpu.targets.cpu())
        corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(cpu.maps.numpy(), gpu.maps.cpu().numpy())]
        assert min(corr) > 0.99, corr


def test_world_models_on_gpu():
    from visionlens.data.world import World, WorldConfig

    b = World(WorldConfig(size=64), seed=0).batch("test", range(64))
    x = ((b["image"] - 0.5) / 0.5).cuda()
    zoo = visionlens.load_model("world-cnn", device="cuda")
    with torch.no_grad():
        assert float((zoo.module(x).argmax(1).cpu() == b["label"]).float().mean()) >= 0.95
    exp = GradCAM(zoo.module, zoo.layer)(x, b["label"])
    assert exp.maps.is_cuda and exp.maps.shape == (64, 64, 64)


def _world_batch(n=16):
    from visionlens.data.world import World, WorldConfig

    b = World(WorldConfig(size=64), seed=0).batch("test", range(n))
    return b, (b["image"] - 0.5) / 0.5


def _close_maps(cpu, gpu, floor=0.99):
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(cpu.numpy(), gpu.cpu().numpy())]
    assert min(corr) > floor, corr


def test_daam_on_gpu_matches_cpu():
    from visionlens import DAAM
    from visionlens.data.bank import build_bank

    b, x = _world_batch()
    cpu_vit, gpu_vit = visionlens.load_model("world-vit"), visionlens.load_model("world-vit", device="cuda")
    cpu = DAAM(cpu_vit.module)(x, b["label"])
    gpu = DAAM(gpu_vit.module)(x.cuda(), b["label"])
    assert gpu.flow.is_cuda and gpu.flow.shape == cpu.flow.shape
    _close_maps(cpu.maps, gpu.maps)
    dino_cpu, dino_gpu = visionlens.load_model("world-dino"), visionlens.load_model("world-dino", device="cuda")
    bank = build_bank(dino_cpu, n=500)
    _close_maps(DAAM(dino_cpu.module, bank=bank)(x).maps, DAAM(dino_gpu.module, bank=bank)(x.cuda()).maps)


def test_sfam_on_gpu_matches_cpu():
    from visionlens import SFAM

    b, x = _world_batch(8)
    _, x2 = _world_batch(8)
    for metric in ("cosine", "euclidean"):
        cpu = SFAM(visionlens.embedder("world-metric"), metric=metric)(x, x2.flip(0))
        gpu = SFAM(visionlens.embedder("world-metric", device="cuda"), metric=metric)(x.cuda(), x2.flip(0).cuda())
        assert gpu.maps.is_cuda
        _close_maps(cpu.maps, gpu.maps)


def test_many_methods_and_targets_on_gpu(gpu_mobilenet, imagenet_photos):
    from visionlens import GradCAMPlusPlus, LayerCAM, ScoreCAM, explain_many

    x = torch.stack([gpu_mobilenet.preprocess(load_image(p)) for p in imagenet_photos[:4]]).cuda()
    methods = [GradCAM(gpu_mobilenet.module, "features"), GradCAMPlusPlus(gpu_mobilenet.module, "features"),
               LayerCAM(gpu_mobilenet.module, "features"), ScoreCAM(gpu_mobilenet.module, "features")]
    together = explain_many(methods, x)
    for m in methods:
        torch.testing.assert_close(together[m.name].maps, m(x).maps, rtol=1e-3, atol=1e-3)
    multi = GradCAM(gpu_mobilenet.module, "features")(x, torch.tensor([[1, 2, 3]] * 4))
    assert multi.maps.shape == (4, 3, 224, 224) and multi.maps.is_cuda
