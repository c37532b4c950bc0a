"""A procedural image world with pixel-exact ground truth (in the spirit of FunnyBirds).

Each image holds a textured background, exactly one **class object** built from 2-4 **parts**
(the label is the *combination*: every part appears in at least two classes) and 0-3
**distractors** whose distribution does not depend on the label. Every sample comes with the
object mask, one mask per part (visible pixels), distractor masks and tight boxes.

Sampling is per image: sample ``i`` of a split is drawn from ``numpy.random.default_rng((seed,
split, i, stream))`` (stream 0: the object, 1: its context), so it is identical whatever batch it
is rendered in, and the splits never share a stream. Rendering is vectorised over
the batch in torch. ``remove_object`` / ``remove_distractors`` render the *same* scene without
those elements (the background shows through), which is the exact "inpainting" used by the
evidence check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..core.boxes import box_of

# --- the vocabulary -------------------------------------------------------------------------

# Shape primitives as (superellipse exponent p, hole ratio, cut): inside = |u|^p + |v|^p <= 1,
# minus the same shape scaled by the hole ratio, intersected with v <= 0 when cut.
SHAPES = {
    "disc": (2.0, 0.0, False),
    "square": (8.0, 0.0, False),
    "diamond": (1.0, 0.0, False),
    "ring": (2.0, 0.55, False),
    "triangle": (1.0, 0.0, True),
    "half-disc": (2.0, 0.0, True),
    "frame": (8.0, 0.6, False),
}
SHAPE_NAMES = list(SHAPES)

PART_COLOURS = {
    "red": (0.85, 0.12, 0.12),
    "blue": (0.15, 0.30, 0.90),
    "green": (0.10, 0.70, 0.20),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.75),
    "orange": (0.98, 0.55, 0.05),
    "cyan": (0.10, 0.80, 0.85),
    "white": (0.97, 0.97, 0.97),
}

# Part types: (shape, colour). Each is used by at least two classes.
PARTS = [
    ("disc", "red"),
    ("square", "blue"),
    ("triangle", "green"),
    ("ring", "yellow"),
    ("diamond", "purple"),
    ("half-disc", "orange"),
    ("frame", "cyan"),
    ("disc", "white"),
]
PART_NAMES = [f"{c} {s}" for s, c in PARTS]

# Classes: parts with their layout in the object frame (dx, dy, half-width, half-height, angle in
# degrees), object radius about 1. Part sets are all different, so the label is the combination.
CLASSES: list[tuple[str, list[tuple[int, float, float, float, float, float]]]] = [
    ("lantern", [(1, 0.0, 0.35, 0.55, 0.55, 0), (0, 0.0, -0.55, 0.40, 0.40, 0)]),
    ("beacon", [(2, 0.0, 0.30, 0.70, 0.60, 0), (0, 0.0, -0.60, 0.35, 0.35, 0)]),
    ("tower", [(1, 0.0, 0.55, 0.45, 0.40, 0), (2, 0.0, 0.0, 0.50, 0.45, 0), (3, 0.0, -0.60, 0.40, 0.40, 0)]),
    ("kite", [(4, 0.0, 0.0, 0.55, 0.85, 0), (3, 0.55, 0.55, 0.35, 0.35, 0)]),
    ("robot", [(4, 0.0, 0.20, 0.50, 0.50, 0), (5, 0.0, -0.45, 0.45, 0.45, 0), (0, -0.65, 0.25, 0.25, 0.25, 0)]),
    ("lamp", [(5, 0.0, -0.35, 0.70, 0.60, 0), (6, 0.0, 0.45, 0.45, 0.45, 0)]),
    ("cart", [(6, -0.45, 0.0, 0.45, 0.45, 0), (7, 0.45, 0.0, 0.40, 0.40, 0), (1, 0.0, 0.65, 0.80, 0.20, 0)]),
    ("flower", [(7, 0.0, 0.0, 0.35, 0.35, 0), (2, 0.0, -0.65, 0.35, 0.35, 0), (4, -0.65, 0.0, 0.35, 0.35, 0),
                (3, 0.65, 0.0, 0.35, 0.35, 0)]),
    ("boat", [(1, 0.0, 0.40, 0.85, 0.30, 0), (5, 0.0, -0.20, 0.50, 0.50, 0)]),
    ("owl", [(6, 0.0, 0.20, 0.65, 0.65, 0), (0, -0.30, -0.15, 0.22, 0.22, 0), (7, 0.30, -0.15, 0.22, 0.22, 0),
             (4, 0.0, -0.75, 0.30, 0.25, 0)]),
]
CLASS_NAMES = [name for name, _ in CLASSES]
NUM_CLASSES = len(CLASSES)
MAX_PARTS = 4
MAX_DISTRACTORS = 3

# Distractors: any primitive in colours no class part uses.
DISTRACTOR_COLOURS = [(0.55, 0.55, 0.55), (0.45, 0.30, 0.15), (0.95, 0.60, 0.75), (0.10, 0.35, 0.35), (0.20, 0.20, 0.20)]

TEXTURES = ("gradient", "stripes", "checker", "blobs", "noise")
PALETTES = {
    # background colour ranges (low, high) per channel: muted, so parts stand out
    "earth": ((0.30, 0.25, 0.15), (0.60, 0.55, 0.40)),
    "sky": ((0.35, 0.45, 0.55), (0.65, 0.75, 0.85)),
    "slate": ((0.25, 0.25, 0.30), (0.55, 0.55, 0.60)),
    "sand": ((0.55, 0.50, 0.35), (0.85, 0.80, 0.65)),
}


@dataclass(frozen=True)
class Domain:
    """The look of a world: background palettes and textures, a hue rotation of the whole image
    (degrees; classes stay distinguishable), Gaussian blur (pixels) and pixel noise (std)."""

    palettes: tuple[str, ...] = ("earth", "sky", "slate", "sand")
    textures: tuple[str, ...] = TEXTURES
    hue_shift: float = 0.0
    blur: float = 0.0
    noise: float = 0.0


@dataclass(frozen=True)
class WorldConfig:
    """Knobs: image ``size``; ``distractors`` (min, max) count; object ``scale`` range (object
    radius as a fraction of the image side); ``occlusion``: probability that one distractor is
    placed over the object; ``domain``."""

    size: int = 64
    distractors: tuple[int, int] = (0, 3)
    scale: tuple[float, float] = (0.22, 0.30)
    rotation: float = 15.0
    occlusion: float = 0.0
    domain: Domain = field(default_factory=Domain)

    def with_(self, **changes) -> "WorldConfig":
        return replace(self, **changes)


SPLITS = {"train": 0, "val": 1, "test": 2}

# --- sampling (per image, numpy) --------------------------------------------------------------

_LAYERS = MAX_PARTS + MAX_DISTRACTORS


def _sample_scene(obj_rng: np.random.Generator, ctx_rng: np.random.Generator, cfg: WorldConfig,
                  label: int | None) -> dict:
    """Draw one scene: the object's identity and appearance from ``obj_rng``; background,
    placement and distractors from ``ctx_rng`` (a new context stream gives another view of the
    same object)."""
    dom = cfg.domain
    if label is None:
        label = int(obj_rng.integers(NUM_CLASSES))
    s = obj_rng.uniform(*cfg.scale)
    theta = math.radians(obj_rng.uniform(-cfg.rotation, cfg.rotation))
    jitters = obj_rng.uniform(0.9, 1.1, size=(MAX_PARTS, 2))
    rng = ctx_rng
    # background
    palette = PALETTES[dom.palettes[int(rng.integers(len(dom.palettes)))]]
    low, high = np.array(palette[0]), np.array(palette[1])
    c1 = low + (high - low) * rng.random(3)
    c2 = low + (high - low) * rng.random(3)
    texture = TEXTURES.index(dom.textures[int(rng.integers(len(dom.textures)))])
    tex = rng.random(8)  # angle, frequency, phase, blob centres ...
    noise_grid = rng.random((6, 6))
    # object placement
    margin = s * 1.05
    cx, cy = rng.uniform(margin, 1 - margin, size=2)
    ct, st = math.cos(theta), math.sin(theta)
    layers = np.zeros((_LAYERS, 10), dtype=np.float32)  # cx cy sx sy rot p hole cut valid unused
    colours = np.zeros((_LAYERS, 3), dtype=np.float32)
    part_ids = -np.ones(MAX_PARTS, dtype=np.int64)
    for k, (pid, dx, dy, hw, hh, ang) in enumerate(CLASSES[label][1]):
        jitter = jitters[k]
        px = cx + s * (ct * dx - st * dy)
        py = cy + s * (st * dx + ct * dy)
        p, hole, cut = SHAPES[PARTS[pid][0]]
        layers[k] = (px, py, s * hw * jitter[0], s * hh * jitter[1], theta + math.radians(ang), p, hole, cut, 1, 0)
        colours[k] = PART_COLOURS[PARTS[pid][1]]
        part_ids[k] = pid
    # distractors: label-independent count, shapes, colours; away from the object unless occluding
    n_dis = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
    occlude = rng.random() < cfg.occlusion
    for j in range(MAX_DISTRACTORS):
        shape = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
        colour = DISTRACTOR_COLOURS[int(rng.integers(len(DISTRACTOR_COLOURS)))]
        size = rng.uniform(0.06, 0.12, size=2)
        rot = rng.uniform(0, 2 * math.pi)
        tries = rng.random((40, 2))
        if j >= n_dis:
            continue
        r = max(size)
        if occlude and j == 0:
            ang, rad = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.6) * s
            dx, dy = cx + rad * math.cos(ang), cy + rad * math.sin(ang)
        else:
            lo, hi = r, 1 - r
            cand = lo + (hi - lo) * tries
            ok = np.hypot(cand[:, 0] - cx, cand[:, 1] - cy) > s * 1.15 + r
            if not ok.any():
                continue
            dx, dy = cand[int(np.argmax(ok))]
        p, hole, cut = SHAPES[shape]
        layers[MAX_PARTS + j] = (dx, dy, size[0], size[1], rot, p, hole, cut, 1, 0)
        colours[MAX_PARTS + j] = colour
    pixel_noise_seed = int(rng.integers(2**31))
    return dict(label=label, c1=c1, c2=c2, texture=texture, tex=tex, noise_grid=noise_grid, layers=layers,
                colours=colours, part_ids=part_ids, noise_seed=pixel_noise_seed)


# --- rendering (vectorised, torch) ------------------------------------------------------------


def _background(scenes: list[dict], n: int, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    h = xs.shape[0]
    t = torch.zeros(n, h, h)
    tex = torch.tensor(np.stack([s["tex"] for s in scenes]), dtype=torch.float32)
    kind = torch.tensor([s["texture"] for s in scenes])
    ang = tex[:, 0, None, None] * math.pi
    cos_a, sin_a = torch.cos(ang), torch.sin(ang)
    freq = 2 + 6 * tex[:, 1, None, None]
    for code, name in enumerate(TEXTURES):
        idx = (kind == code).nonzero()[:, 0]
        if len(idx) == 0:
            continue
        if name == "gradient":
            val = (xs * cos_a[idx] + ys * sin_a[idx]) / 1.5 + 0.25
        elif name == "stripes":
            val = torch.sin(2 * math.pi * freq[idx] * (xs * cos_a[idx] + ys * sin_a[idx]) + 6.28 * tex[idx, 2, None, None])
            val = 0.5 + 0.5 * val
        elif name == "checker":
            f = freq[idx].floor()
            val = ((xs * f).floor() + (ys * f).floor()).remainder(2)
        elif name == "blobs":
            val = torch.zeros(len(idx), h, h)
            for b in range(2):
                bx, by = tex[idx, 3 + 2 * b, None, None], tex[idx, 4 + 2 * b, None, None]
                val = val + torch.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / 0.05)
        else:  # value noise
            grid = torch.tensor(np.stack([scenes[i]["noise_grid"] for i in idx.tolist()]), dtype=torch.float32)
            val = F.interpolate(grid[:, None], size=(h, h), mode="bicubic", align_corners=False)[:, 0]
        t[idx] = val if name in ("stripes", "checker") else val.clamp(0, 1)
    c1 = torch.tensor(np.stack([s["c1"] for s in scenes]), dtype=torch.float32)[:, :, None, None]
    c2 = torch.tensor(np.stack([s["c2"] for s in scenes]), dtype=torch.float32)[:, :, None, None]
    return torch.addcmul(c1, c2 - c1, t[:, None])


def _paint(layers: torch.Tensor, size: int) -> torch.Tensor:
    """Paint layers in order; return ``(N, size, size)`` long: index of the topmost layer at each
    pixel, -1 for background. Each layer is evaluated only inside its bounding window."""
    n = layers.shape[0]
    cr, sr = torch.cos(layers[:, :, 4]).abs(), torch.sin(layers[:, :, 4]).abs()
    ext_x = layers[:, :, 2] * cr + layers[:, :, 3] * sr  # half extents of the rotated bounding box
    ext_y = layers[:, :, 2] * sr + layers[:, :, 3] * cr
    reach = (torch.maximum(ext_x, ext_y) * size).ceil().long() + 1  # (N, L) radius in px
    pad = int(reach.max()) + 1
    top = torch.full((n, size + 2 * pad, size + 2 * pad), -1, dtype=torch.int8)
    top_flat = top.view(-1)
    for k in range(layers.shape[1]):
        lay = layers[:, k]
        live = (lay[:, 8] > 0.5).nonzero()[:, 0]
        if len(live) == 0:
            continue
        lay = lay[live]
        win = 2 * int(reach[live, k].max()) + 1
        ar = torch.arange(win)
        cxp, cyp = lay[:, 0] * size, lay[:, 1] * size
        ox = (cxp - 0.5).round().long() - win // 2  # window origin in image pixels
        oy = (cyp - 0.5).round().long() - win // 2
        px = (ox[:, None] + ar + 0.5 - cxp[:, None]) / size  # (M, win) x offsets from the centre
        py = (oy[:, None] + ar + 0.5 - cyp[:, None]) / size
        c, s = torch.cos(lay[:, 4])[:, None, None], torch.sin(lay[:, 4])[:, None, None]
        dx, dy = px[:, None, :], py[:, :, None]
        u = ((c * dx + s * dy) / lay[:, 2, None, None]).abs().clamp_max(4.0)
        v_signed = (-s * dx + c * dy) / lay[:, 3, None, None]
        v = v_signed.abs().clamp_max(4.0)
        expo = lay[:, 5, None, None]
        u2, v2 = u * u, v * v
        u8, v8 = (u2 * u2) ** 2, (v2 * v2) ** 2
        level = torch.where(expo < 1.5, u + v, torch.where(expo < 4, u2 + v2, u8 + v8))
        hole = lay[:, 6, None, None]
        hole_level = torch.where(expo < 1.5, hole, torch.where(expo < 4, hole**2, hole**8))
        inside = (level <= 1) & ~((hole > 0) & (level <= hole_level))
        inside = inside & ((lay[:, 7, None, None] < 0.5) | (v_signed <= 0))
        side = size + 2 * pad
        start = live * side * side + (oy + pad) * side + (ox + pad)  # flat index of each window's corner
        flat = (start[:, None, None] + ar[None, :, None] * side + ar[None, None, :]).flatten()
        inside = inside.flatten()
        top_flat.index_put_((flat[inside],), torch.tensor(k, dtype=torch.int8))
    return top[:, pad:pad + size, pad:pad + size].long()


def _hue_matrix(degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    c, s, k = math.cos(a), math.sin(a), 1 / 3
    sq = math.sqrt(k)
    return torch.tensor([
        [c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
        [k * (1 - c) + sq * s, c + k * (1 - c), k * (1 - c) - sq * s],
        [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + k * (1 - c)],
    ], dtype=torch.float32)


def render(scenes: list[dict], cfg: WorldConfig, remove_object: bool = False, remove_distractors: bool = False) -> dict:
    """Render sampled scenes into a batch (see :meth:`World.batch` for the returned keys)."""
    n, size = len(scenes), cfg.size
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    image = _background(scenes, n, xs, ys)
    layers = torch.tensor(np.stack([s["layers"] for s in scenes]))
    colours = torch.tensor(np.stack([s["colours"] for s in scenes]))
    if remove_object:
        layers[:, :MAX_PARTS, 8] = 0
    if remove_distractors:
        layers[:, MAX_PARTS:, 8] = 0
    top = _paint(layers, size)  # (N, H, W) topmost layer index, -1 = background
    painted = top >= 0
    where_n, where_p = painted.flatten(1).nonzero(as_tuple=True)  # write only the painted pixels
    flat = image.view(n, 3, size * size)
    layer_colour = colours[where_n, top.flatten(1)[where_n, where_p]]  # (P, 3)
    for c in range(3):
        flat[:, c].index_put_((where_n, where_p), layer_colour[:, c])
    visible = top[:, None] == torch.arange(_LAYERS)[None, :, None, None]
    dom = cfg.domain
    if dom.hue_shift:
        image = torch.einsum("ij,njhw->nihw", _hue_matrix(dom.hue_shift), image)
    if dom.blur > 0:
        radius = max(1, int(math.ceil(3 * dom.blur)))
        g = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * dom.blur**2))
        g = g / g.sum()
        image = F.conv2d(F.pad(image, [radius] * 4, mode="replicate").reshape(-1, 1, size + 2 * radius, size + 2 * radius),
                         g[None, None, None, :])
        image = F.conv2d(image, g[None, None, :, None]).reshape(n, 3, size, size)
    if dom.noise > 0:
        gen = torch.Generator().manual_seed(int(scenes[0]["noise_seed"]))
        noise = torch.stack([
            torch.randn(3, size, size, generator=gen.manual_seed(int(s["noise_seed"]))) for s in scenes
        ])
        image = image + dom.noise * noise
    if dom.hue_shift or dom.noise > 0:
        image = image.clamp(0, 1)
    parts = visible[:, :MAX_PARTS]
    distractors = visible[:, MAX_PARTS:]
    obj = (top >= 0) & (top < MAX_PARTS)
    return {
        "image": image,
        "label": torch.tensor([s["label"] for s in scenes]),
        "object_mask": obj,
        "object_box": box_of(obj),
        "part_masks": parts,
        "part_ids": torch.tensor(np.stack([s["part_ids"] for s in scenes])),
        "distractor_masks": distractors,
        "distractor_boxes": box_of(distractors),
        "distractor_valid": layers[:, MAX_PARTS:, 8] > 0.5,
    }


class World:
    """The generator: ``World(cfg, seed).batch(split, indices)`` renders samples by index."""

    def __init__(self, config: WorldConfig | None = None, seed: int = 0):
        self.config = config or WorldConfig()
        self.seed = seed

    def scenes(self, split: str, indices, view: int = 0) -> list[dict]:
        """Sampled scene parameters; ``view`` > 0 keeps each object and redraws its context."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
        sid = SPLITS[split]
        return [
            _sample_scene(np.random.default_rng((self.seed, sid, int(i), 0)),
                          np.random.default_rng((self.seed, sid, int(i), 1 + view)), self.config, None)
            for i in indices
        ]

    def batch(self, split: str, indices, remove_object: bool = False, remove_distractors: bool = False,
              view: int = 0) -> dict:
        """Render samples ``indices`` of ``split`` ("train", "val", "test"). Returns a dict of
        tensors: ``image`` (N, 3, H, W) in [0, 1]; ``label`` (N,); ``object_mask`` (N, H, W);
        ``object_box`` (N, 4) x0 y0 x1 y1 pixels; ``part_masks`` (N, 4, H, W) with ``part_ids``
        (N, 4; -1 for an unused slot, else an index into ``PART_NAMES``); ``distractor_masks``
        (N, 3, H, W), ``distractor_boxes`` (N, 3, 4) and ``distractor_valid`` (N, 3). Masks are
        boolean and cover exactly the visible pixels of each element. ``view`` > 0 renders the same
        objects in new contexts (background, position, distractors): views for self-supervision."""
        return render(self.scenes(split, indices, view), self.config, remove_object, remove_distractors)


class WorldDataset(torch.utils.data.Dataset):
    """A fixed split of the world as a ``Dataset``: ``(image, label)`` pairs, or the whole sample
    (image, label and every mask) with ``with_masks=True``. Images are float in [0, 1]."""

    DEFAULT_LENGTHS = {"train": 20000, "val": 2000, "test": 2000}

    def __init__(self, split: str = "train", length: int | None = None, config: WorldConfig | None = None,
                 seed: int = 0, with_masks: bool = False):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
        self.split, self.world, self.with_masks = split, World(config, seed), with_masks
        self.length = self.DEFAULT_LENGTHS[split] if length is None else length

    def __len__(self) -> int:
        return self.length

    def batch(self, indices, **kwargs) -> dict:
        """Render several samples at once (vectorised); see :meth:`World.batch`."""
        return self.world.batch(self.split, indices, **kwargs)

    def __getitem__(self, i: int):
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a split of {self.length}")
        sample = {k: v[0] for k, v in self.batch([i]).items()}
        return sample if self.with_masks else (sample["image"], sample["label"])
