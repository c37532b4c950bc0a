"""Model specs as the ecosystem means them: ``timm:NAME``, ``torchvision:NAME`` and ``hf:ID`` (or
``hf:LOCAL_DIR``), each with the preprocessing and class names of its own config.

Without a weights file, ``timm:`` and ``torchvision:`` load the library's pretrained weights
(downloaded on first use into the library's own cache, as ``timm.create_model(pretrained=True)``
and torchvision's weights enums do); with a file, the architecture's pretrained config still
gives the preprocessing. ``hf:`` goes through ``from_pretrained`` of the model and its image
processor. A download that cannot happen is one line naming the offline route."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext, redirect_stdout
from functools import partial
import inspect
import io
import math
import os
from pathlib import Path
import re
import socket
import threading
from urllib.parse import urlsplit
import warnings

from torch import nn

from ..errors import InputError, VisionlensWarning, display, one_line
from .preprocessing import Preprocess

PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _one_line(err: BaseException, limit: int = 160) -> str:
    """The library's error as a short clause: its type and its message, cut at a word (with "...")
    when longer than ``limit`` characters."""
    text = one_line(err)
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return f"{type(err).__name__}: {text}"


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{module} is not installed; pip install 'visionlens[{extra}]'") from None


def _closest(name: str, names: list[str], what: str) -> InputError:
    import difflib

    close = difflib.get_close_matches(name, names, n=4)
    hint = f"close names: {', '.join(close)}" if close else f"{len(names)} are known, e.g. {', '.join(names[:4])}"
    return InputError(f"unknown {what} '{name}'; {hint}")


# --- the Hugging Face hub (timm's pretrained weights and hf: models) ---------------------------

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why ``endpoint`` cannot be reached (one TCP connection tried), or None when it answers or when
    a proxy is configured (then the hub library decides)."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    url = urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout).close()
    except OSError as err:
        return one_line(err)
    return None


@contextmanager
def _hub_or_cache():
    """A hub load that, when the hub cannot be reached, runs in huggingface_hub's offline mode: cached
    files load and missing ones fail at once (online, the library retries for about a minute, logging
    each try). Yields why the hub cannot be reached, or None."""
    from huggingface_hub import constants

    reason = None if constants.HF_HUB_OFFLINE else _unreachable(constants.ENDPOINT)
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or reason is not None
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = saved


def _offline_clause(reason: str | None) -> str:
    from huggingface_hub import constants

    host = urlsplit(constants.ENDPOINT).hostname
    return f"{host} cannot be reached ({reason}) and it is not in the local cache" if reason else ""


# --- timm ------------------------------------------------------------------------------------

def timm_preprocess(module: nn.Module) -> Preprocess:
    """The evaluation preprocessing of timm's data config for ``module`` (what
    ``timm.data.create_transform(**resolve_data_config({}, model=module))`` does)."""
    timm_data = _require("timm.data", "timm")
    config = timm_data.resolve_data_config({}, model=module)
    _, height, width = config["input_size"]
    if height != width:
        raise InputError(f"non-square input size {height}x{width} is not supported yet")
    crop_pct = config.get("crop_pct") or 1.0
    mode = config.get("crop_mode", "center")
    if mode not in ("center", "squash"):
        raise InputError(f"timm crop mode '{mode}' is not supported; give a Preprocess in the API")
    return Preprocess(
        resize=math.floor(height / crop_pct), crop=height, mean=tuple(config["mean"]), std=tuple(config["std"]),
        interpolation=config.get("interpolation", "bilinear"), squash=mode == "squash",
    )


def timm_model(name: str, num_classes: int | None = None, pretrained: bool = False) -> nn.Module:
    """``timm.create_model(name)``; an unknown name is one line with the closest names; a pretrained
    download that fails is one line naming ``--weights``."""
    timm = _require("timm", "timm")
    if name not in timm.list_models(pretrained=False) and name not in timm.list_models(pretrained=True):
        raise _closest(name, timm.list_models(), "timm model")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    with _hub_or_cache() as offline:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # the hub is unreachable, or the name has no pretrained weights
            why = _offline_clause(offline) or _one_line(err)
            raise InputError(f"cannot load the pretrained weights of timm:{name} ({why}); "
                             "on a machine without internet give a local file with --weights FILE") from None


# --- torchvision -----------------------------------------------------------------------------

def torchvision_weights(name: str):
    """The ``DEFAULT`` entry of the architecture's weights enum, or None when it has none."""
    tvm = _require("torchvision.models", "torchvision")
    try:
        return tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def torchvision_preprocess(weights) -> Preprocess:
    """The preprocessing of a torchvision weights entry (its ``transforms()``)."""
    transform = weights.transforms()
    crop = getattr(transform, "crop_size", [224])[0]
    resize = getattr(transform, "resize_size", [256])[0]
    interpolation = getattr(getattr(transform, "interpolation", None), "value", "bilinear")
    return Preprocess(resize=resize, crop=crop, mean=tuple(transform.mean), std=tuple(transform.std),
                      interpolation=interpolation)


def torchvision_model(name: str, num_classes: int | None = None, pretrained: bool = False, **options) -> nn.Module:
    """``torchvision.models.get_model(name)``; pretrained through the DEFAULT weights enum (cached
    under ``torch.hub.get_dir()``, downloaded without torch.hub's ``Downloading: ...`` line or
    progress bar); failures are one line. ``options`` (e.g. ``aux_loss``, ``num_keypoints``) are
    passed on where the architecture's builder takes them."""
    tvm = _require("torchvision.models", "torchvision")
    names = tvm.list_models()  # classifiers, detectors, segmenters, video and optical-flow models
    if name not in names:
        raise _closest(name, names, "torchvision model")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    parameters = inspect.signature(tvm.get_model_builder(name)).parameters
    kwargs.update({key: value for key, value in options.items() if key in parameters})
    if "weights_backbone" in parameters:
        kwargs["weights_backbone"] = None  # detectors and segmenters: nothing downloaded for the backbone
    if not pretrained:
        return tvm.get_model(name, weights=None, **kwargs)
    weights = torchvision_weights(name)
    if weights is None:
        raise InputError(f"torchvision:{name} has no pretrained weights; give a local file with --weights FILE")
    try:
        # torch.hub writes 'Downloading: "URL" to FILE' to stdout whatever `progress` says: kept off
        # the terminal, so that a download that cannot happen is the one line below
        with redirect_stdout(io.StringIO()), _torchvision_weights_only():
            return tvm.get_model(name, weights=weights, progress=False, **kwargs)
    except Exception as err:
        raise InputError(f"cannot load the pretrained weights of torchvision:{name} ({_one_line(err)}); "
                         "on a machine without internet give a local file with --weights FILE") from None


_TORCHVISION_LOADER_LOCK = threading.Lock()


@contextmanager
def _torchvision_weights_only():
    """torchvision's weights enums load their checkpoint through ``torch.hub.load_state_dict_from_url``
    with its default ``weights_only=False``, and a file already in the cache is not hash-checked, so
    pickled code in it would run. For the duration, that loader is called with ``weights_only=True``."""
    from torchvision.models import _api

    with _TORCHVISION_LOADER_LOCK:
        original = _api.load_state_dict_from_url
        _api.load_state_dict_from_url = partial(original, weights_only=True)
        try:
            yield
        finally:
            _api.load_state_dict_from_url = original


def dense_default_layer(module: nn.Module, task: str) -> str:
    """The layer a detector or segmenter is explained at: the last block of its backbone whose
    output is one tensor, ``backbone.body.<last>`` of an FPN detector, ``backbone.<last>`` of a
    segmenter, ``backbone.features.<last>`` of SSD (its ``extra`` blocks are called one by one
    from a ``ModuleList``, and shrink to 1x1)."""
    backbone = module.backbone
    features, extra = getattr(backbone, "features", None), getattr(backbone, "extra", None)
    if task == "detection" and isinstance(features, nn.Sequential) and isinstance(extra, nn.ModuleList):
        return f"backbone.features.{list(dict(features.named_children()))[-1]}"
    body = backbone.body if task == "detection" and hasattr(backbone, "body") else backbone
    prefix = "backbone.body" if body is not backbone else "backbone"
    return f"{prefix}.{list(dict(body.named_children()))[-1]}"


def dense_task(module: nn.Module) -> str | None:
    """``"detection"`` for torchvision's detectors, ``"segmentation"`` for its semantic segmenters,
    None for anything else."""
    try:
        from torchvision.models import detection, segmentation
    except ImportError:
        return None
    detectors = (detection.generalized_rcnn.GeneralizedRCNN, detection.retinanet.RetinaNet, detection.fcos.FCOS,
                 detection.ssd.SSD)
    if isinstance(module, detectors):
        return "detection"
    segmenters = (segmentation.fcn.FCN, segmentation.deeplabv3.DeepLabV3, segmentation.lraspp.LRASPP)
    return "segmentation" if isinstance(module, segmenters) else None


# --- Hugging Face ----------------------------------------------------------------------------

def _size_side(size, *keys) -> int | None:
    for key in keys:
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return None


def hf_preprocess(processor) -> Preprocess:
    """The preprocessing of a Hugging Face image processor (resize, optional centre crop or
    ``crop_pct``, rescale to [0, 1], normalise)."""
    size = getattr(processor, "size", None) or {}
    crop_size = getattr(processor, "crop_size", None) or {}
    height, width = _size_side(size, "height"), _size_side(size, "width")
    if height and width and height != width:
        raise InputError(f"the image processor resizes to {height}x{width}; only square sizes are supported yet")
    short = _size_side(size, "shortest_edge")
    center = bool(getattr(processor, "do_center_crop", False))
    crop = _size_side(crop_size, "height") if center else None
    crop_pct = getattr(processor, "crop_pct", None)
    if height:
        resize, crop, squash = height, crop or height, True
    elif short and crop_pct and short < 384:  # ConvNeXt-style: resize short/crop_pct, crop short
        resize, crop, squash = int(short / crop_pct), short, False
    elif short and crop:
        resize, squash = short, False
    elif short:
        resize, crop, squash = short, short, True
    else:
        raise InputError("the image processor gives no image size; give a Preprocess in the API")
    mean = tuple(getattr(processor, "image_mean", None) or (0.0, 0.0, 0.0))
    std = tuple(getattr(processor, "image_std", None) or (1.0, 1.0, 1.0))
    if not getattr(processor, "do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = getattr(processor, "resample", 2)
    interpolation = PIL_RESAMPLE_NAMES.get(int(getattr(resample, "value", resample)), "bilinear")
    return Preprocess(resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation, squash=squash)


def hf_class_names(config) -> tuple[str, ...] | None:
    """Class names from ``config.id2label`` in index order; None for the placeholder
    ``LABEL_i`` names or a model without a head."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)] if id2label else []
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return tuple(names)


def hf_model(source: str):
    """``(module, processor)`` for ``hf:ORG/NAME`` or a local folder: the image-classification model
    when the config has one, else the bare backbone (``AutoModel``)."""
    transformers = _require("transformers", "hf")
    if source.startswith((".", "/")) and not Path(source).exists():
        raise InputError(f"hf:{display(source)}: no such folder; give a folder that save_pretrained wrote, "
                         "or ORG/NAME of a Hub model")
    local = Path(source).exists()
    where = display(source) if local else source
    with nullcontext() if local else _hub_or_cache() as offline:
        try:
            config = transformers.AutoConfig.from_pretrained(source)
            processor = transformers.AutoImageProcessor.from_pretrained(source)
        except Exception as err:
            hint = ("the folder needs config.json and preprocessor_config.json (save_pretrained of the model "
                    "and its image processor)") if local else (
                    "on a machine without internet, save it with save_pretrained and give hf:LOCAL_DIR")
            why = _offline_clause(offline) or _one_line(err)
            raise InputError(f"cannot load hf:{where} ({why}); {hint}") from None
        try:
            with _quiet_transformers(transformers):
                auto = _auto_class(transformers, config, where)
                module, loading = auto.from_pretrained(source, output_loading_info=True)
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"cannot load the weights of hf:{where} ({_one_line(err)})") from None
    _warn_missing_weights(where, loading)
    return module, processor


def _warn_missing_weights(where: str, loading: dict) -> None:
    """One warning line for weights the checkpoint does not hold (transformers starts them at
    random; its own multi-line load report is kept off the terminal)."""
    missing = sorted(set(loading.get("missing_keys") or ()) | {k[0] if isinstance(k, tuple) else k
                                                               for k in loading.get("mismatched_keys") or ()})
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        warnings.warn(VisionlensWarning(f"hf:{where}: {len(missing)} weight(s) are not in the checkpoint and start at "
                                        f"random ({shown}); the model's outputs, and so its maps, mean little until "
                                        "they are trained"), stacklevel=3)


DENSE_HEADS = re.compile(r"For\w*(Detection|Segmentation|DepthEstimation|MaskGeneration)")
"""Hugging Face architectures whose head is a detector's, a segmenter's or a depth estimator's."""


def _auto_class(transformers, config, where: str = ""):
    """The image-classification auto class when the saved architecture is a classifier (or none is
    named and the config type has one), the saved class itself for a distilled classifier
    (``DeiTForImageClassificationWithTeacher``), else the bare backbone's ``AutoModel``. A saved model with
    another task's head (``...ForObjectDetection``, ``...ForSemanticSegmentation``, ...) is one
    :class:`InputError` line: loaded as a backbone, its head would be dropped and its hidden state
    read as class scores."""
    saved = getattr(config, "architectures", None) or []
    other_task = [name for name in saved if DENSE_HEADS.search(name)]  # pre-training heads (MAE) load as backbones
    if other_task and len(other_task) == len(saved):
        raise InputError(f"hf:{where} is a {other_task[0]}; visionlens explains Hugging Face image classifiers and "
                         "backbones, not this task's head: for detection and segmentation use a torchvision model "
                         "(docs/detection.md)")
    teacher = next((name for name in saved if name.endswith("ForImageClassificationWithTeacher")
                    and hasattr(transformers, name)), None)
    if teacher is not None:  # distilled DeiT: both heads kept, its logits the mean of the two
        return getattr(transformers, teacher)
    if saved:
        is_classifier = any(name.endswith("ForImageClassification") for name in saved)
    else:
        is_classifier = type(config) in transformers.AutoModelForImageClassification._model_mapping
    return transformers.AutoModelForImageClassification if is_classifier else transformers.AutoModel


@contextmanager
def _quiet_transformers(transformers):
    """Turn transformers' per-tensor loading bars and its load report off for the call (the global
    settings restored): missing weights are one visionlens warning line instead."""
    logging = transformers.utils.logging
    was_on, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if was_on:
            logging.enable_progress_bar()
