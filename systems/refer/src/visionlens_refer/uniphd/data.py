"""RefHuman-format data: a loader/writer for the annotation schema and a synthetic scene generator.

The RefHuman schema (bo-miao/RefHuman, ``datasets/refhuman.py``) is COCO-style with **one image
entry per referring sample**: ``images[i]`` carries ``file_name``, ``height``, ``width`` and the text
prompt ``caption``; its single annotation carries ``keypoints`` (17x3), ``num_keypoints``,
``segmentation`` (polygons or RLE), ``bbox``, ``area``, ``iscrowd``, ``category_id`` and
``scribble`` (120 numbers = 5 scribbles x 12 (x, y) points). Evaluation prompts are scribble 0 and
the point ``scribble[0][5]``.

The generator draws "stick-figure people" (head disc, torso polygon, capsule limbs) in per-person
shirt/pants colours, with depth-ordered occlusion, and writes exactly that schema (masks as
uncompressed RLE), so the same loader reads real RefHuman unchanged.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from visionlens.errors import InputError
from visionlens.io import write_json

from ..masks import rle_encode, segmentation_to_mask

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
FLIP_WORDS = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
            (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4))

SHIRTS = {"red": (220, 40, 40), "blue": (40, 80, 230), "green": (30, 170, 60), "yellow": (235, 210, 30),
          "purple": (150, 50, 190), "orange": (245, 140, 20)}
PANTS = {"black": (25, 25, 25), "white": (235, 235, 235), "grey": (128, 128, 128), "brown": (120, 70, 30)}
SKIN = (230, 185, 150)
ARM_STATES = {"down": 0.35, "side": 1.5, "up": 2.7}  # angle from the downward vertical, outwards


@dataclass
class RefSample:
    """One referring sample: an image, one prompt set and the referred person's pose and mask."""

    image: np.ndarray | None   # (H, W, 3) uint8; None when loaded lazily from ``image_path``
    keypoints: np.ndarray      # (17, 3) float: x, y, v (0 unlabelled, 1 occluded, 2 visible)
    mask: np.ndarray | None    # (H, W) bool; None when decoded lazily from ``segmentation``
    caption: str
    scribbles: np.ndarray      # (5, 12, 2) float pixel coordinates
    image_id: int = 0
    ann_id: int = 0
    file_name: str = ""
    area: float = 0.0
    bbox: tuple = (0.0, 0.0, 0.0, 0.0)
    image_path: str = ""
    segmentation: object = None    # the annotation's polygons or RLE, kept when ``mask`` is lazy
    mask_size: tuple = ()          # (H, W) of the lazy mask


def sample_mask(s: RefSample) -> np.ndarray:
    """The sample's ``(H, W)`` bool mask, decoded from its segmentation when the loader kept it lazy."""
    if s.mask is not None:
        return s.mask
    try:
        return segmentation_to_mask(s.segmentation, *s.mask_size)
    except InputError as err:
        raise InputError(f"annotation id {s.ann_id}: field 'segmentation': {err}") from None


def sample_size(s: RefSample) -> tuple:
    """``(H, W)`` of the sample's image and mask, without decoding a lazy mask."""
    return tuple(s.mask.shape) if s.mask is not None else tuple(s.mask_size)


def sample_image(s: RefSample) -> np.ndarray:
    """The sample's pixels (read from ``image_path`` when the loader kept it lazy); an unreadable file
    raises :class:`~visionlens.errors.ImageLoadError` naming it."""
    if s.image is not None:
        return s.image
    from visionlens.data.images import load_image

    return np.asarray(load_image(s.image_path).convert("RGB"))


# --- masks ---------------------------------------------------------------------------------

def box_of_mask(mask: np.ndarray) -> tuple:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))


# --- loader / writer ------------------------------------------------------------------------

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(value, n: int | None = None) -> bool:
    """``value`` is a list of finite numbers (of length ``n`` when given)."""
    return isinstance(value, list) and (n is None or len(value) == n) and all(_is_number(v) for v in value)


def _ann_fields_problem(ann: dict, h: int, w: int) -> str | None:
    """What is wrong with a used annotation's fields (``None`` when nothing is)."""
    if not _numbers(ann.get("keypoints"), 51):
        return _field_problem(ann, "keypoints", "51 finite numbers (17 x, y, v triples)")
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        if not isinstance(seg.get("counts"), (str, list)) or list(seg.get("size", [])) != [h, w]:
            return f"field 'segmentation' must be an RLE with 'counts' and 'size' [{h}, {w}] (the image's height, width)"
    elif not (isinstance(seg, list) and seg and all(_numbers(poly) and len(poly) >= 6 and len(poly) % 2 == 0
                                                      for poly in seg)):
        return _field_problem(ann, "segmentation", "polygons (lists of >= 3 finite x, y pairs) or an RLE dict")
    if not _numbers(ann.get("bbox"), 4) or min(ann["bbox"][2:]) < 0:
        return _field_problem(ann, "bbox", "4 finite numbers x, y, width, height (width, height >= 0)")
    if not _is_number(ann.get("area")) or ann["area"] < 0:
        return _field_problem(ann, "area", "a finite number >= 0")
    if not _numbers(ann.get("scribble"), 120):
        return _field_problem(ann, "scribble", "120 finite numbers (5 scribbles x 12 x, y points)")
    return None


def _field_problem(entry: dict, field: str, expected: str) -> str:
    if field not in entry:
        return f"missing field {field!r} ({expected})"
    value = entry[field]
    got = f"{len(value)} values" if isinstance(value, (list, dict)) else repr(value)[:40]
    return f"field {field!r} must hold {expected}, got {got}"


def _image_problem(im) -> str | None:
    """What is wrong with an image entry (``None`` when nothing is)."""
    if not isinstance(im.get("file_name"), str) or not im["file_name"]:
        return _field_problem(im, "file_name", "the image's file name")
    for field in ("height", "width"):
        if not isinstance(im.get(field), int) or isinstance(im[field], bool) or im[field] < 1:
            return _field_problem(im, field, "a positive integer")
    if not isinstance(im.get("caption"), str):
        return _field_problem(im, "caption", "the referring text; RefHuman gives one per image entry")
    return None


def _used(ann: dict) -> bool:
    """The official loader drops crowd annotations and those without a labelled keypoint."""
    return not ann.get("iscrowd", 0) and ann.get("num_keypoints", 1) != 0


def _check_refhuman(path: Path, data) -> tuple[dict, list[dict]]:
    """``(images by id, used annotations)`` of a parsed RefHuman file, every field they need checked
    first; else one :class:`InputError` line naming the file, the entry and the field."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise InputError(f"{path} is not a RefHuman/COCO annotation file: expected an object with the lists "
                         "'images' and 'annotations'")
    images = {im["id"]: im for im in data["images"] if isinstance(im, dict) and isinstance(im.get("id"), int)}
    used, checked = [], set()
    for index, ann in enumerate(data["annotations"]):
        name = f"annotation id {ann['id']!r}" if isinstance(ann, dict) and "id" in ann else f"annotation at index {index}"
        if not isinstance(ann, dict):
            raise InputError(f"{path}: {name} is not a JSON object")
        if _used(ann):
            _check_annotation(path, name, ann, images, checked)
            used.append(ann)
    return images, used


def _check_annotation(path: Path, name: str, ann: dict, images: dict, checked: set) -> None:
    """One used annotation and (once) its image entry; ``checked`` holds the image ids already seen."""
    if not isinstance(ann.get("id"), int) or not isinstance(ann.get("image_id"), int):
        raise InputError(f"{path}: {name}: fields 'id' and 'image_id' must be integers")
    im = images.get(ann["image_id"])
    if im is None:
        raise InputError(f"{path}: {name} refers to image id {ann['image_id']}, which 'images' lacks")
    if ann["image_id"] not in checked:
        problem = _image_problem(im)
        if problem:
            raise InputError(f"{path}: image id {ann['image_id']} (of {name}): {problem}")
        checked.add(ann["image_id"])
    problem = _ann_fields_problem(ann, im["height"], im["width"])
    if problem:
        raise InputError(f"{path}: {name}: {problem}")


def _read_json(path: Path):
    if not path.is_file():
        raise InputError(f"annotation file not found: {path}; pass the RefHuman_*.json path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({' '.join(str(err).split())}); pass a RefHuman_*.json file") from None


def _sample(path: Path, ann: dict, im: dict, image, file: Path, lazy: bool) -> RefSample:
    h, w = im["height"], im["width"]
    mask = None
    if not lazy:
        try:
            mask = segmentation_to_mask(ann["segmentation"], h, w)
        except InputError as err:
            raise InputError(f"{path}: annotation id {ann['id']}: field 'segmentation': {err}") from None
    return RefSample(
        image=image, keypoints=np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3), mask=mask,
        caption=im["caption"], scribbles=np.asarray(ann["scribble"], dtype=np.float64).reshape(5, 12, 2),
        image_id=int(im["id"]), ann_id=int(ann["id"]), file_name=im["file_name"], area=float(ann["area"]),
        bbox=tuple(float(b) for b in ann["bbox"]), image_path=str(file),
        segmentation=ann["segmentation"] if lazy else None, mask_size=(h, w))


def load_refhuman(annotation_file: str | os.PathLike, image_dir: str | os.PathLike, limit: int | None = None,
                  lazy: bool = False) -> list[RefSample]:
    """Read a RefHuman JSON (one image entry per referring sample) and its images (``lazy``: keep only
    the image path and the segmentation, and read pixels and decode the mask when a batch needs them,
    so memory does not grow with the masks of a full-size dataset).

    Annotations with ``num_keypoints == 0`` or ``iscrowd == 1`` are dropped, as in the official loader;
    the fields of the others are checked before any image is read.
    """
    from visionlens.data.images import load_image

    path = Path(annotation_file)
    images, used = _check_refhuman(path, _read_json(path))
    if not used:
        raise InputError(f"{path} holds no usable annotation (need num_keypoints > 0 and iscrowd == 0)")
    cache: dict[str, np.ndarray | None] = {}
    samples = []
    for ann in used[:limit]:
        im = images[ann["image_id"]]
        file = Path(image_dir) / im["file_name"]
        if im["file_name"] not in cache:
            if not file.is_file():
                raise InputError(f"image not found: {file}; pass the folder holding the RefHuman images")
            cache[im["file_name"]] = None if lazy else np.asarray(load_image(file).convert("RGB"))
        samples.append(_sample(path, ann, im, cache[im["file_name"]], file, lazy))
    return samples


def write_refhuman(samples: list[RefSample], annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
                   info: dict | None = None, progress=None) -> Path:
    """Write samples as RefHuman JSON + PNG images (images shared between samples are written once);
    ``info``: COCO's optional top-level ``info`` object (what made the set); ``progress``: a
    :class:`~visionlens.core.progress.Progress` advanced once per sample."""
    from PIL import Image

    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, written = [], [], set()
    for s in samples:
        h, w = sample_size(s)
        if s.file_name not in written:
            Image.fromarray(sample_image(s)).save(image_dir / s.file_name)
            written.add(s.file_name)
        images.append({"id": s.image_id, "file_name": s.file_name, "height": h, "width": w, "caption": s.caption})
        annotations.append({
            "id": s.ann_id, "image_id": s.image_id, "category_id": 1, "iscrowd": 0,
            "keypoints": [float(v) for v in s.keypoints.reshape(-1)],
            "num_keypoints": int((s.keypoints[:, 2] > 0).sum()),
            "segmentation": rle_encode(sample_mask(s), compressed=False), "area": float(s.area), "bbox": [float(b) for b in s.bbox],
            "scribble": [float(v) for v in s.scribbles.reshape(-1)],
        })
        if progress is not None:
            progress.update()
    return write_json({**({"info": info} if info else {}), "images": images, "annotations": annotations,
                       "categories": [{"id": 1, "name": "person", "keypoints": list(KEYPOINT_NAMES),
                                       "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}]},
                      annotation_file, indent=None)


def eval_prompt(sample: RefSample, kind: str) -> np.ndarray | str:
    """The evaluation prompt of the official protocol: caption, scribble 0, or point scribble[0][5]."""
    if kind == "text":
        return sample.caption
    if kind == "scribble":
        return sample.scribbles[0]
    if kind == "point":
        return sample.scribbles[0, 5:6]
    raise InputError(f"unknown prompt kind {kind!r}; use text, point or scribble")


# --- horizontal flip (augmentation) ---------------------------------------------------------

def flip_caption(caption: str) -> str:
    return " ".join(FLIP_WORDS.get(w, w) for w in caption.split(" "))


def flip_sample(s: RefSample) -> RefSample:
    """Mirror image, mask, keypoints (swapping left/right joints), scribbles and caption words."""
    mask = sample_mask(s)
    w = mask.shape[1]
    kp = s.keypoints.copy()
    kp[:, 0] = np.where(kp[:, 2] > 0, w - 1 - kp[:, 0], kp[:, 0])
    for a, b in FLIP_PAIRS:
        kp[[a, b]] = kp[[b, a]]
    scr = s.scribbles.copy()
    scr[..., 0] = w - 1 - scr[..., 0]
    x, y, bw, bh = s.bbox
    return replace(s, image=sample_image(s)[:, ::-1].copy(), mask=mask[:, ::-1].copy(), keypoints=kp, scribbles=scr,
                   caption=flip_caption(s.caption), bbox=(w - x - bw, y, bw, bh), segmentation=None)


# --- synthetic stick-figure scenes ----------------------------------------------------------

@dataclass
class Figure:
    keypoints: np.ndarray   # (17, 2)
    height: float
    shirt: str
    pants: str
    left_arm: str
    right_arm: str


def _pose(rng, cx: float, top: float, h: float, left_arm: str, right_arm: str) -> np.ndarray:
    r = 0.09 * h
    head = np.array([cx, top + r + 1])
    kp = np.zeros((17, 2))
    kp[0] = head + [0, 0.25 * r]
    kp[1], kp[2] = head + [0.45 * r, -0.2 * r], head + [-0.45 * r, -0.2 * r]
    kp[3], kp[4] = head + [0.9 * r, 0.05 * r], head + [-0.9 * r, 0.05 * r]
    sy, hy = top + 0.25 * h, top + 0.56 * h
    for side, (s_i, e_i, w_i, state) in ((1, (5, 7, 9, left_arm)), (-1, (6, 8, 10, right_arm))):
        kp[s_i] = [cx + side * 0.13 * h, sy]
        a = ARM_STATES[state] + rng.uniform(-0.2, 0.2)
        kp[e_i] = kp[s_i] + 0.17 * h * np.array([side * math.sin(a), math.cos(a)])
        a2 = a + rng.uniform(-0.3, 0.3)
        kp[w_i] = kp[e_i] + 0.16 * h * np.array([side * math.sin(a2), math.cos(a2)])
    for side, (h_i, k_i, a_i) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        kp[h_i] = [cx + side * 0.08 * h, hy]
        a = rng.uniform(0.05, 0.35)
        kp[k_i] = kp[h_i] + 0.21 * h * np.array([side * math.sin(a), math.cos(a)])
        kp[a_i] = kp[k_i] + 0.21 * h * np.array([side * math.sin(a * 0.5), math.cos(a * 0.5)])
    angle = rng.uniform(-0.15, 0.15)  # lean about the hip centre
    centre = (kp[11] + kp[12]) / 2
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (kp - centre) @ rot.T + centre + rng.normal(0, 0.3, size=(17, 2))


def _capsule(xx, yy, p, q, radius) -> np.ndarray:
    d = q - p
    t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
    return (xx - p[0] - t * d[0]) ** 2 + (yy - p[1] - t * d[1]) ** 2 <= radius ** 2


def _polygon(xx, yy, pts) -> np.ndarray:
    """Inside a convex polygon (either winding)."""
    pos = np.ones_like(xx, dtype=bool)
    neg = np.ones_like(xx, dtype=bool)
    for i in range(len(pts)):
        a, b = pts[i], pts[(i + 1) % len(pts)]
        cross = (b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0])
        pos &= cross >= 0
        neg &= cross <= 0
    return pos | neg


def _render_figure(fig: Figure, xx, yy) -> tuple[dict, np.ndarray]:
    """Per-colour part masks and the union."""
    kp, h = fig.keypoints, fig.height
    width = max(1.2, 0.045 * h)
    head = (xx - (kp[3, 0] + kp[4, 0]) / 2) ** 2 + (yy - (kp[3, 1] + kp[4, 1]) / 2) ** 2 <= (0.09 * h + 0.5) ** 2
    torso = _polygon(xx, yy, [kp[5], kp[6], kp[12], kp[11]]) | _capsule(xx, yy, kp[5], kp[6], width) \
        | _capsule(xx, yy, kp[11], kp[12], width)
    arms = np.zeros_like(head)
    for a, b in ((5, 7), (7, 9), (6, 8), (8, 10)):
        arms |= _capsule(xx, yy, kp[a], kp[b], width)
    legs = np.zeros_like(head)
    for a, b in ((11, 13), (13, 15), (12, 14), (14, 16)):
        legs |= _capsule(xx, yy, kp[a], kp[b], width * 1.2)
    neck = _capsule(xx, yy, (kp[3] + kp[4]) / 2, (kp[5] + kp[6]) / 2, width * 0.8)
    parts = {"skin": head | neck, "shirt": torso | arms, "pants": legs & ~torso}
    return parts, head | neck | torso | arms | legs


def _captions(figs: list[Figure], rng) -> list[str]:
    """A uniquely referring caption per figure, drawn from the templates that are unique in the scene."""
    xs = [f.keypoints[:, 0].mean() for f in figs]
    order = np.argsort(xs)
    size = len(figs)
    out = []
    for i, f in enumerate(figs):
        options = [f"the person in a {f.shirt} shirt"]
        if sum(g.pants == f.pants for g in figs) == 1:
            options.append(f"the person wearing {f.pants} pants")
        gaps = np.diff(np.sort(xs))
        if gaps.min() > 8:
            if i == order[0]:
                options.append("the leftmost person")
            if i == order[-1]:
                options.append("the rightmost person")
            if size == 3 and i == order[1]:
                options.append("the person in the middle")
        hs = sorted(g.height for g in figs)
        if hs[-1] - hs[-2] > 6 and f.height == hs[-1]:
            options.append("the tallest person")
        if hs[1] - hs[0] > 6 and f.height == hs[0]:
            options.append("the shortest person")
        pose = {("up", "up"): "the person raising both arms", ("up", "down"): "the person raising the left arm",
                ("down", "up"): "the person raising the right arm", ("down", "down"): "the person with both arms down"}
        key = (f.left_arm, f.right_arm)
        if key in pose and sum((g.left_arm, g.right_arm) == key for g in figs) == 1:
            options.append(pose[key])
        out.append(options[rng.integers(len(options))])
    return out


def _scribbles(mask: np.ndarray, rng) -> np.ndarray:
    """5 quadratic Bezier scribbles of 12 points whose rounded points all lie inside the mask."""
    ys, xs = np.nonzero(mask)
    out = np.zeros((5, 12, 2))
    t = np.linspace(0, 1, 12)[:, None]
    for k in range(5):
        for _ in range(60):
            p = np.stack([xs, ys], 1)[rng.integers(len(xs), size=3)].astype(float)
            curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t ** 2 * p[2]
            r = np.round(curve).astype(int)
            if mask[r[:, 1], r[:, 0]].all():
                out[k] = r
                break
        else:  # a polyline through interior pixels, ordered by y
            idx = np.sort(rng.integers(len(xs), size=12))
            out[k] = np.stack([xs[idx], ys[idx]], 1)
    return out


def synthetic_scene(rng, size: int = 96, people: tuple[int, int] = (2, 3)):
    """One scene: image, figures, visible masks and visibility flags; None when occlusion is too heavy."""
    n = int(rng.integers(people[0], people[1] + 1))
    shirts = rng.choice(list(SHIRTS), size=n, replace=False)
    slots = (np.arange(n) + rng.uniform(0.1, 0.9, size=n)) / n
    rng.shuffle(slots)
    figs = []
    for i in range(n):
        h = rng.uniform(0.42, 0.62) * size
        cx = np.clip(slots[i] * size, 0.25 * h, size - 0.25 * h)
        top = rng.uniform(2, size - h - 2)
        la, ra = rng.choice(list(ARM_STATES)), rng.choice(list(ARM_STATES))
        figs.append(Figure(_pose(rng, cx, top, h, la, ra), h, str(shirts[i]), str(rng.choice(list(PANTS))), la, ra))
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    base = rng.integers(60, 200, size=3)
    image = np.clip(base + rng.normal(0, 12, size=(size, size, 3)) + (yy[..., None] / size) * rng.integers(-40, 40, size=3), 0, 255)
    full, visible, covered = [], [None] * n, np.zeros((size, size), bool)
    rendered = [_render_figure(f, xx, yy) for f in figs]
    for i in range(n - 1, -1, -1):  # front-most is the last drawn
        visible[i] = rendered[i][1] & ~covered
        covered |= rendered[i][1]
        full.append(rendered[i][1])
    for i, (parts, _) in enumerate(rendered):
        colours = {"skin": SKIN, "shirt": SHIRTS[figs[i].shirt], "pants": PANTS[figs[i].pants]}
        for part, m in parts.items():
            image[m] = np.asarray(colours[part]) + rng.normal(0, 6, size=3)
    for i in range(n):
        if visible[i].sum() < 0.5 * rendered[i][1].sum():
            return None
    vis = []
    for i, f in enumerate(figs):
        r = np.round(f.keypoints).astype(int)
        inside = (r[:, 0] >= 0) & (r[:, 0] < size) & (r[:, 1] >= 0) & (r[:, 1] < size)
        v = np.where(inside, 1, 0)
        rc = np.clip(r, 0, size - 1)
        v[inside & visible[i][rc[:, 1], rc[:, 0]]] = 2
        vis.append(v)
    return np.clip(image, 0, 255).astype(np.uint8), figs, visible, vis


def synthetic_file_name(scene_id: int) -> str:
    """The image file name of synthetic scene ``scene_id`` (1, 2, ...)."""
    return f"scene_{scene_id:06d}.png"


def synthetic_refhuman(count: int, seed: int = 0, size: int = 96, people: tuple[int, int] = (2, 3),
                       progress=None) -> list[RefSample]:
    """``count`` referring samples (one per person, scenes drawn until enough); deterministic in ``seed``;
    ``progress``: a :class:`~visionlens.core.progress.Progress` advanced once per sample."""
    if count < 1 or size < 32:
        raise InputError("synthetic_refhuman needs count >= 1 and size >= 32")
    rng = np.random.default_rng(seed)
    samples: list[RefSample] = []
    scene_id = 0
    while len(samples) < count:
        scene = synthetic_scene(rng, size, people)
        if scene is None:
            continue
        image, figs, masks, vis = scene
        captions = _captions(figs, rng)
        scene_id += 1
        for i, f in enumerate(figs):
            if len(samples) >= count:
                break
            kp = np.concatenate([f.keypoints, vis[i][:, None]], 1)
            kp[vis[i] == 0, :2] = 0
            samples.append(RefSample(
                image=image, keypoints=kp, mask=masks[i], caption=captions[i], scribbles=_scribbles(masks[i], rng),
                image_id=len(samples) + 1, ann_id=len(samples) + 1, file_name=synthetic_file_name(scene_id),
                area=float(masks[i].sum()), bbox=box_of_mask(masks[i]),
            ))
            if progress is not None:
                progress.update()
    return samples
