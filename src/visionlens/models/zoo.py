"""The model zoo: pretrained ImageNet models that load offline, each with its preprocessing and
class names; and a wrapper that gives the same interface to any ``torch.nn.Module``."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..assets import locate
from ..errors import AssetError, InputError, display
from ..io import load_checkpoint
from .efficientnet_lite import EfficientNetLite0
from .mobilenet_v2 import MobileNetV2
from .preprocessing import Preprocess


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, in index order."""
    return tuple(json.loads((Path(__file__).with_name("imagenet_classes.json")).read_text()))


@lru_cache(maxsize=1)
def _imagenet_synsets() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(WordNet ID, its lemmas)`` of the 1,000 ImageNet-1k classes, in index order."""
    rows = json.loads((Path(__file__).with_name("imagenet_synsets.json")).read_text(encoding="utf-8"))
    return tuple((wnid, tuple(lemmas)) for wnid, lemmas in rows)


def imagenet_wnids() -> tuple[str, ...]:
    """The WordNet IDs of the 1,000 ImageNet-1k classes in index order (``n01440764`` is class 0):
    the folder names of ImageNet's train and val trees."""
    return tuple(wnid for wnid, _ in _imagenet_synsets())


def class_name_key(name: str) -> str:
    """A class name as names are compared: case, ``_``, ``-`` and runs of spaces do not count."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def close_class_names(name: str, names, n: int = 4, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` of ``names`` close to ``name``, compared as :func:`class_name_key` compares them
    (``Cats`` is close to ``cat``), returned as the model spells them."""
    import difflib

    by_key: dict[str, str] = {}
    for known in names:
        by_key.setdefault(class_name_key(known), known)
    return [by_key[k] for k in difflib.get_close_matches(class_name_key(name), list(by_key), n=n, cutoff=cutoff)]


@lru_cache(maxsize=1)
def _imagenet_aliases() -> dict[str, int]:
    """Class index by WordNet ID and by each WordNet lemma of a class (``tabby``, ``tiger cat``,
    ``hammerhead``: the names torchvision, Keras and Caffe use), normalised. A lemma of several
    classes names the one whose first lemma it is (``polecat``: the polecat, not the skunk), and
    none when that is not one class (``crane``: the bird and the machine)."""
    by_lemma: dict[str, list[tuple[bool, int]]] = {}
    for index, (_, lemmas) in enumerate(_imagenet_synsets()):
        for rank, lemma in enumerate(lemmas):
            by_lemma.setdefault(class_name_key(lemma), []).append((rank == 0, index))
    aliases = {}
    for lemma, found in by_lemma.items():
        classes = {index for _, index in found}
        first = {index for is_first, index in found if is_first}
        if len(classes) == 1 or len(first) == 1:
            aliases[lemma] = next(iter(classes if len(classes) == 1 else first))
    aliases.update({wnid: index for index, wnid in enumerate(imagenet_wnids())})
    return aliases


def imagenet_alias_index(name: str, num_classes: int) -> int | None:
    """For a 1,000-class model, the class index that ``name`` names as an ImageNet WordNet ID
    (``n02123045``) or as one of the class's WordNet lemmas (``tabby``, ``tiger cat``); else None."""
    if num_classes != 1000:
        return None
    return _imagenet_aliases().get(name if name[:1] == "n" and name[1:].isdigit() else class_name_key(name))


WORLD_WEIGHTS = Path(__file__).with_name("world_weights")


@dataclass(frozen=True)
class ZooEntry:
    """``weights``: an offline asset name (see assets.py) or, for ``packaged`` entries, a file in
    ``models/world_weights``. ``task``: what the model outputs."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    weights: str
    preprocess: Preprocess
    layer: str | None
    task: str = "imagenet"
    packaged: bool = False


ZOO: dict[str, ZooEntry] = {
    "mobilenet_v2": ZooEntry(
        "mobilenet_v2", "MobileNetV2, ImageNet-1k (torchvision checkpoint)", MobileNetV2, "mobilenet_v2",
        Preprocess(), "features",
    ),
    "efficientnet_lite0": ZooEntry(
        "efficientnet_lite0", "EfficientNet-Lite0, ImageNet-1k", EfficientNetLite0, "efficientnet_lite0",
        Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), "_head_act",
    ),
}


@dataclass
class ZooModel:
    """A model with what is needed to explain it: ``module`` (in eval mode), ``preprocess``
    (PIL image -> tensor), ``class_names`` (or None), the default ``layer`` to explain and the
    ``source`` it was loaded from (spec and weights)."""

    name: str
    module: nn.Module
    preprocess: Preprocess
    class_names: tuple[str, ...] | None
    layer: str | None
    source: dict | None = None

    def describe(self) -> dict:
        """What was loaded and how its inputs are prepared (recorded in ``summary.json``)."""
        return {"name": self.name, **(self.source or {}), "preprocess": self.preprocess.describe(),
                "classes": len(self.class_names) if self.class_names is not None else None}

    def class_indices(self, specs: list[str]) -> list[int]:
        """Class indices for ``specs``, each an index, one of the model's class names (case and
        ``_``/space insensitive) or, for a 1,000-class model, an ImageNet WordNet ID or lemma
        (``n02123045``, ``tabby``); one :class:`InputError` line for an unknown name or index."""
        return [self._class_index(s.strip()) for s in specs]

    def _class_index(self, spec: str) -> int:
        names = list(self.class_names or [])
        numbered = re.fullmatch(r"class\s+(\d+)", spec.strip(), flags=re.IGNORECASE)
        if numbered is not None and not names:  # how class_name() shows a class of a model without names
            spec = numbered.group(1)
        if spec.lstrip("-").isdigit():
            index = int(spec)
            if names and not 0 <= index < len(names) or index < 0:
                raise InputError(f"target class {index} is out of range for a model with {len(names)} classes")
            return index
        norm = lambda n: n.lower().replace("_", " ").strip()  # noqa: E731
        found = [i for i, n in enumerate(names) if norm(n) == norm(spec)]
        alias = imagenet_alias_index(spec, len(names))
        if not found and alias is not None:
            found = [alias]
        if not found:
            close = close_class_names(spec, names)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise InputError(f"unknown class {spec!r} for {self.name}{hint} (or give a class index)")
        return found[0]

    def class_name(self, index: int) -> str:
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")


def _world_entries() -> dict[str, ZooEntry]:
    from .world_models import WorldMetricNet, WorldResNet, WorldViT

    world = Preprocess(resize=64, crop=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return {
        "world-cnn": ZooEntry("world-cnn", "WorldResNet classifier for the synthetic world (10 classes)",
                              WorldResNet, "world-cnn.pt", world, "layer3", "world-classifier", True),
        "world-vit": ZooEntry("world-vit", "WorldViT classifier for the synthetic world (10 classes)",
                              WorldViT, "world-vit.pt", world, "blocks[-1].norm1", "world-classifier", True),
        "world-dino": ZooEntry("world-dino", "self-supervised WorldViT: [class] embedding (96-d)",
                               lambda: WorldViT(num_classes=0), "world-dino.pt", world, "blocks[-1].norm1", "world-embedding", True),
        "world-metric": ZooEntry("world-metric", "metric-learning WorldMetricNet: L2-normalised 64-d embedding",
                                 WorldMetricNet, "world-metric.pt", world, "trunk.layer3", "world-embedding", True),
    }


ZOO.update(_world_entries())


def available_models(task: str | None = None) -> list[str]:
    """Names accepted by :func:`load_model` (only those of ``task`` when given: ``imagenet``,
    ``world-classifier`` or ``world-embedding``)."""
    return [name for name, entry in ZOO.items() if task is None or entry.task == task]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU. A device this machine does not have
    (CUDA without a GPU, ``cuda:N`` past the last GPU, ``mps`` off a Mac) is one :class:`InputError`."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA is not available on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(f"there is no {dev}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    elif dev.type == "meta":
        raise InputError("the meta device holds no data; use cpu or cuda")
    elif dev.type != "cpu":
        try:  # mps, xpu, ...: available only where PyTorch was built for them and the hardware is there
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError):
            raise InputError(f"device '{device}' is not available on this machine (this PyTorch build or its "
                             "hardware lacks it); use cpu or cuda") from None
    return dev


SAFETENSORS_SUFFIX = ".safetensors"


def _torch_saved(head: bytes) -> bool:
    return head[:2] == b"PK" or head[:1] == b"\x80"  # torch.save's zip archive (legacy: a pickle)


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: by its ``.safetensors`` suffix or by its start (an 8-byte little-endian
    header length, then the JSON header's ``{``)."""
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return True
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 9 <= 8 + int.from_bytes(head[:8], "little") <= size


def _load_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file (``safetensors.torch.load_file``: no code can run), or one
    line when the package is missing or the file is not valid."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise InputError(f"{display(path)}: a safetensors file; reading it needs the safetensors package: "
                         "pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # a corrupt or truncated file, a header that is not safetensors JSON
        with open(path, "rb") as f:
            if _torch_saved(f.read(2)):
                raise InputError(f"{display(path)}: named .safetensors but written by torch.save; "
                                 "rename it (e.g. to .pt)") from None
        text = " ".join(str(err).split())
        reason = text[:120] if text else type(err).__name__
        raise InputError(f"{display(path)}: not a valid safetensors file ({reason})") from None


def load_state_dict_file(path: str | Path) -> dict:
    """A state dict from a checkpoint file, loaded with ``weights_only=True`` (pickled code is
    refused), or from a safetensors file (by its ``.safetensors`` suffix or its header; needs the
    ``safetensors`` package); ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are unwrapped
    and a common ``module.`` (DDP) or ``model.`` prefix is stripped. NaN or infinite values are
    refused."""
    if Path(path).is_file() and _is_safetensors(Path(path)):
        state = _load_safetensors(Path(path))
    else:
        state = load_checkpoint(path, "state dict")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{display(path)}: expected a state dict of tensors")
    for prefix in ("module.", "model."):
        if all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{display(path)}: '{key}' holds NaN or infinite values; these weights cannot explain anything")
    return state


def fit_state_dict(module: nn.Module, state: dict, spec: str, path) -> None:
    """Load ``state`` into ``module`` or raise one line naming the first key that does not fit."""
    own = module.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise InputError(f"{display(path)} does not fit {spec}: '{key}' has shape {tuple(value.shape)} in the file, "
                             f"{tuple(own[key].shape)} in the model")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise InputError(f"{display(path)} does not fit {spec}: {len(missing)} missing and {len(unexpected)} unexpected "
                         f"keys (first: {first})")
    module.load_state_dict(state)


def _num_classes(state: dict) -> int | None:
    heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(heads[-1].shape[0]) if heads else None


def _file_classes(spec: str, state: dict) -> int | None:
    """A classifier file's number of classes: the rows, in the file, of the architecture's head
    (its last 2-d weight in the architecture's own key order, found on the meta device: nothing is
    allocated); the file's last 2-d weight when the file lacks that key. A safetensors file lists
    its keys sorted by name, not in the model's order (``stages.*`` after ``head.fc.*``)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            own = library_architecture(spec).state_dict()
    except InputError:
        raise
    except Exception:  # an architecture that cannot be built on the meta device
        own = {}
    heads = [k for k, v in own.items() if k.endswith("weight") and v.dim() == 2]
    if heads and torch.is_tensor(state.get(heads[-1])) and state[heads[-1]].dim() == 2:
        return int(state[heads[-1]].shape[0])
    return _num_classes(state)


# Where a torchvision detector's or segmenter's state dict shows its number of classes: the key of
# its class layer and, for heads with several anchors per location, the key of the matching box
# regression layer (4 rows per anchor: classes = class rows / anchors). The first key found counts.
DENSE_CLASS_HEADS = (
    ("roi_heads.box_predictor.cls_score.weight", None),  # Faster, Mask and Keypoint R-CNN
    ("head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight"),  # RetinaNet, FCOS
    ("head.classification_head.module_list.0.weight", "head.regression_head.module_list.0.weight"),  # SSD
    ("head.classification_head.module_list.0.1.weight", "head.regression_head.module_list.0.1.weight"),  # SSDlite
    ("classifier.4.weight", None),  # FCN, DeepLabV3: the last conv of the classifier
    ("classifier.high_classifier.weight", None),  # LR-ASPP
)


def dense_options(state: dict) -> dict:
    """The builder arguments of a torchvision detector or segmenter that its state dict fixes:
    ``num_classes`` (from its class head, see ``DENSE_CLASS_HEADS``), ``aux_loss`` (whether an
    ``aux_classifier`` is there: FCN, DeepLabV3) and ``num_keypoints`` (Keypoint R-CNN). No
    ``num_classes`` when no known head is found (the architecture's default is built and the file
    is then checked against it)."""
    options: dict = {"aux_loss": any(k.startswith("aux_classifier.") for k in state)}
    keypoints = state.get("roi_heads.keypoint_predictor.kps_score_lowres.weight")
    if keypoints is not None and keypoints.dim() == 4:  # ConvTranspose2d: (in, keypoints, k, k)
        options["num_keypoints"] = int(keypoints.shape[1])
    for cls_key, box_key in DENSE_CLASS_HEADS:
        rows = state.get(cls_key)
        if rows is None or rows.dim() < 2:
            continue
        rows = int(rows.shape[0])
        if box_key is None:
            classes = rows
        else:
            box = state.get(box_key)
            fits = box is not None and box.dim() >= 2 and box.shape[0] % 4 == 0
            anchors = int(box.shape[0]) // 4 if fits else 0
            classes = rows // anchors if anchors and rows % anchors == 0 else 0
        if classes > 0:
            options["num_classes"] = classes
        break
    return options


def library_architecture(spec: str, num_classes: int | None = None, **options) -> nn.Module:
    """The architecture of ``torchvision:NAME`` or ``timm:NAME``, randomly initialised (nothing is
    downloaded); an unknown name is one line with the closest names. ``options``: further builder
    arguments of a torchvision architecture (``aux_loss``, ``num_keypoints``) where it takes them."""
    from . import hub

    library, _, arch = spec.partition(":")
    if library == "torchvision":
        return hub.torchvision_model(arch, num_classes, **options)
    if library == "timm":
        return hub.timm_model(arch, num_classes)
    raise InputError(f"unknown model library '{library}'; use torchvision:NAME, timm:NAME or hf:ID")


def _library_preprocess(library: str, arch: str, module: nn.Module) -> tuple[Preprocess, tuple[str, ...] | None]:
    """The preprocessing and class names the library's own config gives the architecture."""
    from . import hub

    if library == "timm":
        return hub.timm_preprocess(module), None
    weights = hub.torchvision_weights(arch)
    names = (tuple(weights.meta.get("categories") or ()) or None) if weights is not None else None
    dense = _dense_preprocess(module, weights)
    if dense is not None:
        return dense, names
    return (Preprocess() if weights is None else hub.torchvision_preprocess(weights)), names


def _dense_preprocess(module: nn.Module, weights) -> Preprocess | None:
    """A detector's view: short side ``min_size[-1]``, pixels in [0, 1] (it normalises inside); a
    segmenter's: short side of its weights' transform (520), normalised. None for other models."""
    from .hub import dense_task

    task = dense_task(module)
    if task == "detection":
        side = module.transform.min_size[-1]  # the size its transform resizes to in eval mode (Keypoint R-CNN: 800)
        return Preprocess(resize=side, crop=side, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    if task == "segmentation":
        transform = weights.transforms() if weights is not None else None
        side = transform.resize_size[0] if transform is not None else 520
        mean = tuple(transform.mean) if transform is not None else Preprocess().mean
        std = tuple(transform.std) if transform is not None else Preprocess().std
        return Preprocess(resize=side, crop=side, mean=mean, std=std)
    return None


def _class_names(names: tuple[str, ...] | None, num_classes: int | None) -> tuple[str, ...] | None:
    if names is not None and len(names) == num_classes:
        return names
    return imagenet_classes() if num_classes == 1000 else None


def _head_size(module: nn.Module) -> int | None:
    classes = getattr(module, "num_classes", None)
    if isinstance(classes, int) and classes > 0:
        return classes
    return _num_classes(module.state_dict())


def load_library_model(spec: str, weights: str | Path | None, device=None) -> ZooModel:
    """``torchvision:NAME`` or ``timm:NAME``: with ``weights`` (a local state-dict file; the number
    of classes is read from it) or, without, the library's pretrained weights; ``hf:ID_OR_DIR``
    through ``from_pretrained``. Preprocessing and class names come from the model's own config."""
    library, _, arch = spec.partition(":")
    if library == "hf":
        return _load_hf(spec, arch, weights, device)
    if library not in ("timm", "torchvision"):
        raise InputError(f"unknown model library '{library}'; use torchvision:NAME, timm:NAME or hf:ID")
    dense = _dense_architecture(library, arch)
    if weights is not None:
        state = load_state_dict_file(weights)
        options = dense_options(state) if dense else {}
        classes = options.pop("num_classes", None) if dense else _file_classes(spec, state)
        module = library_architecture(spec, classes, **options)
        fit_state_dict(module, state, spec, weights)
        source = {"spec": spec, "weights": str(Path(weights).resolve())}
    else:
        from . import hub

        build = hub.timm_model if library == "timm" else hub.torchvision_model
        module = build(arch, pretrained=True)
        classes = None if dense else _head_size(module)
        source = {"spec": spec, "weights": "pretrained"}
    preprocess, names = _library_preprocess(library, arch, module)
    module.eval().to(resolve_device(device))
    if dense:  # the weights' categories (COCO's 91, VOC's 21) when the file has as many classes, else
        # "class 0" ... "class N-1" (so that a --target index past the last class is one line)
        if classes is not None and (names is None or len(names) != classes):
            names = tuple(f"class {i}" for i in range(classes))
    else:
        names = _class_names(names, classes)
    return ZooModel(spec, module, preprocess, names, None, source)


def _dense_architecture(library: str, arch: str) -> bool:
    """A torchvision detector or segmenter (built with the classes of its weights file, else its
    default ones: COCO's 91, VOC's 21)."""
    if library != "torchvision":
        return False
    from .hub import _require

    tvm = _require("torchvision", "torchvision").models  # not installed: one line naming the extra

    return arch in tvm.list_models(module=tvm.detection) + tvm.list_models(module=tvm.segmentation)


def _load_hf(spec: str, source: str, weights, device) -> ZooModel:
    from . import hub

    if weights is not None:
        raise InputError(f"{spec}: --weights is for torchvision:/timm: models; save the weights into the "
                         "Hugging Face folder (save_pretrained) and give hf:LOCAL_DIR")
    if source.startswith("~"):  # the shell leaves hf:~/... as it is
        source = str(Path(source).expanduser())
    module, processor = hub.hf_model(source)
    module.eval().to(resolve_device(device))
    where = str(Path(source).resolve()) if Path(source).exists() else source
    return ZooModel(spec, module, hub.hf_preprocess(processor), hub.hf_class_names(module.config), None,
                    {"spec": spec, "weights": where, "processor": type(processor).__name__})


def _zoo_state(entry: ZooEntry) -> dict:
    path = WORLD_WEIGHTS / entry.weights if entry.packaged else locate(entry.weights)
    if not path.is_file():
        raise AssetError(f"{path} is missing; retrain it with: python scripts/train_world.py {entry.name}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unsafe or corrupt checkpoint
        raise AssetError(f"{path}: cannot be loaded safely ({type(err).__name__}); delete it and run: visionlens fetch weights") from None


def _kind_of(value) -> str:
    """``"Tensor of shape (2, 3, 224, 224)"``: what a value is, without its (possibly huge) repr."""
    shape = getattr(value, "shape", None)
    return type(value).__name__ + (f" of shape {tuple(shape)}" if shape is not None else "")


def load_model(
    model: str | nn.Module,
    device: str | torch.device | None = "cpu",
    preprocess: Preprocess | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
    weights: str | Path | None = None,
) -> ZooModel:
    """Load a zoo model by name (weights verified by SHA-256, loaded with ``weights_only=True``),
    a model spec (``torchvision:NAME`` / ``timm:NAME`` with local ``weights`` or pretrained,
    ``hf:ID_OR_DIR``; see hub.py), or wrap any ``nn.Module`` (ImageNet preprocessing unless
    given; not moved or changed)."""
    if isinstance(model, nn.Module):
        return ZooModel(
            type(model).__name__, model, preprocess or Preprocess(),
            tuple(class_names) if class_names is not None else None, None,
        )
    if isinstance(model, str) and ":" in model:
        zoo = load_library_model(model, weights, device)
        if preprocess is not None:
            zoo.preprocess = preprocess
        if class_names is not None:
            zoo.class_names = tuple(class_names)
        return zoo
    if not isinstance(model, str):
        raise InputError(f"a model is a name, a spec (torchvision:NAME, timm:NAME, hf:ID) or a torch.nn.Module; "
                         f"got {_kind_of(model)}")
    if model not in ZOO:
        raise InputError(f"unknown model {model!r}; choose from: {', '.join(ZOO)}, torchvision:NAME, timm:NAME or hf:ID")
    entry = ZOO[model]
    module = entry.build()
    if weights is not None:  # the zoo architecture with the user's own (e.g. fine-tuned) weights
        fit_state_dict(module, load_state_dict_file(weights), model, weights)
    else:
        module.load_state_dict(_zoo_state(entry))
    module.eval().to(resolve_device(device))
    if entry.task == "imagenet":
        names = imagenet_classes()
    else:
        from ..data.world import CLASS_NAMES

        names = tuple(CLASS_NAMES)
    weights_source = str(Path(weights).resolve()) if weights is not None else "zoo"
    return ZooModel(entry.name, module, preprocess or entry.preprocess, names, entry.layer,
                    {"spec": entry.name, "weights": weights_source})
