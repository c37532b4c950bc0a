"""Batching, post-processing, and saving/loading UniPHD weights (plain tensors + config dict)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from visionlens.errors import AssetError, InputError

from .config import UniPHDConfig
from .data import RefSample, box_of_mask, sample_image, sample_mask, sample_size

PACKAGED_WEIGHTS = Path(__file__).parents[1] / "weights" / "uniphd-synth.pt"  # manifest: uniphd-synth.json beside it


def fit_sample(s: RefSample, size: int) -> RefSample:
    """Resize a sample to the model's square input (image bilinear, mask nearest, coordinates scaled);
    a lazy sample's image is read and its mask decoded here, one batch at a time."""
    h, w = sample_size(s)
    if (h, w) == (size, size):
        return replace(s, image=sample_image(s), mask=sample_mask(s), segmentation=None)
    from PIL import Image

    sx, sy = size / w, size / h
    kp = s.keypoints.copy()
    kp[:, 0] = (kp[:, 0] + 0.5) * sx - 0.5
    kp[:, 1] = (kp[:, 1] + 0.5) * sy - 0.5
    scr = (s.scribbles + 0.5) * [sx, sy] - 0.5
    mask = np.asarray(Image.fromarray(sample_mask(s).astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
    image = np.asarray(Image.fromarray(sample_image(s)).resize((size, size), Image.BILINEAR))
    return replace(s, image=image, mask=mask, keypoints=kp, scribbles=scr, area=s.area * sx * sy, bbox=box_of_mask(mask),
                   segmentation=None, mask_size=(size, size))


def move(tree, device):
    """Every tensor in nested dicts and lists moved to ``device`` (other values kept as they are)."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: move(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [move(v, device) for v in tree]
    return tree


def images_tensor(samples: list[RefSample]) -> torch.Tensor:
    return torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255.0


def make_targets(samples: list[RefSample], size: int) -> dict:
    kp = torch.tensor(np.stack([s.keypoints for s in samples]), dtype=torch.float32)
    boxes = torch.tensor([s.bbox for s in samples], dtype=torch.float32)
    boxes = torch.cat([boxes[:, :2] + boxes[:, 2:] / 2, boxes[:, 2:]], 1) / size
    return {
        "keypoints": (kp[..., :2] + 0.5) / size, "visible": (kp[..., 2] > 0).float(), "visible_flag": (kp[..., 2] == 2).float(),
        "area": torch.tensor([s.area for s in samples], dtype=torch.float32) / size ** 2, "boxes": boxes,
        "masks": torch.from_numpy(np.stack([s.mask for s in samples])),
    }


def make_prompt(samples: list[RefSample], kind: str, rng: np.random.Generator | None = None) -> dict:
    """Evaluation prompts (rng None): caption, scribble 0, point scribble[0][5]. Training (rng given):
    scribble index uniform in 0..4, point = a point of that scribble with index uniform in 4..7."""
    if kind == "text":
        return {"kind": "text", "texts": [s.caption for s in samples]}
    pts = []
    for s in samples:
        k = 0 if rng is None else int(rng.integers(5))
        if kind == "scribble":
            pts.append(s.scribbles[k])
        elif kind == "point":
            pts.append(s.scribbles[k, 5 if rng is None else int(rng.integers(4, 8))][None])
        else:
            raise InputError(f"unknown prompt kind {kind!r}; use text, point or scribble")
    return {"kind": kind, "points": torch.tensor(np.stack(pts), dtype=torch.float32)}


@torch.no_grad()
def postprocess(outputs: dict, size: int, out_hw: tuple | None = None) -> list[dict]:
    """Per image: queries ranked by score, keypoints (Q, 17, 3) in output pixels (visibility written as
    1, as in the official code), boolean masks at the output size, and boxes (x, y, w, h)."""
    import torch.nn.functional as F

    last = outputs["layers"][-1]
    scores = last["logits"].sigmoid()
    order = scores.argsort(1, descending=True)
    h, w = out_hw or (size, size)
    results = []
    for i in range(scores.shape[0]):
        o = order[i]
        kp = last["keypoints"][i, o] * torch.tensor([w, h]) - 0.5
        kp = torch.cat([kp, torch.ones_like(kp[..., :1])], -1)
        m = outputs["masks"][i, o][None]
        if (h, w) != tuple(m.shape[-2:]):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        bx = last["boxes"][i, o] * torch.tensor([w, h, w, h])
        results.append({"scores": scores[i, o].numpy(), "keypoints": kp.numpy().astype(np.float64),
                        "masks": (m[0].sigmoid() > 0.5).numpy(),
                        "boxes": torch.cat([bx[:, :2] - bx[:, 2:] / 2, bx[:, 2:]], 1).numpy()})
    return results


def save_weights(model, path: str | os.PathLike, half: bool = False, extra: dict | None = None) -> Path:
    """Write ``{"config", "model", **extra}`` to ``path`` atomically (``half``: float16 weights)."""
    from visionlens.io import save_atomic

    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"config": model.config.to_dict(), "model": state, **(extra or {})}
    save_atomic(lambda tmp: torch.save(blob, tmp), path)
    return path


def read_weights(path: str | os.PathLike, what: str = "UniPHD weights") -> dict:
    """A UniPHD weights/checkpoint file as ``{"config": dict, "model": state dict, ...}``: loaded without
    running pickled code, its parts and the finiteness of every weight checked (one :class:`InputError` line)."""
    from visionlens.checks import check_finite
    from visionlens.io import load_checkpoint

    blob = load_checkpoint(path, what)
    if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict) or not isinstance(blob.get("model"), dict):
        raise InputError(f"{path} is not a {what} file (expected 'config' and 'model'): "
                         "train one with `visionlens pose train`")
    for name, tensor in blob["model"].items():
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{path}: model entry {name!r} is not a tensor; not a UniPHD weights file")
        check_finite(f"{path}: weight {name!r}", tensor)
    return blob


def load_uniphd(path: str | os.PathLike | None = None, device: str = "cpu"):
    """A UniPHD from a weights or checkpoint file (default: the packaged synthetic model), in eval mode,
    on ``device`` (``auto``: CUDA when available; an unavailable one is one :class:`InputError` line)."""
    from visionlens.models.zoo import resolve_device

    from .model import UniPHD

    device = resolve_device(device)
    if path is None and not PACKAGED_WEIGHTS.is_file():
        raise AssetError(f"UniPHD weights not found: {PACKAGED_WEIGHTS}; train some with `visionlens pose train`")
    path = Path(path) if path else PACKAGED_WEIGHTS
    blob = read_weights(path)
    try:
        model = UniPHD(UniPHDConfig.from_dict(blob["config"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["model"].items()})
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        reason = " ".join(str(err).split())[:160]
        raise InputError(f"{path} is not a UniPHD weights file ({reason}); train one with `visionlens pose train`") from None
    return model.to(device).eval()
