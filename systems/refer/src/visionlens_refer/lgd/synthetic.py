"""A synthetic referring benchmark on the synthetic world (``visionlens.data.world``).

Each scene is a 96x96 world image (background, one class object, distractors) into which up to
two more world objects are pasted at free positions. Every entity (object, distractor, part)
has a pixel-exact mask, so the scene graph is exact. Expressions refer to one object and come
in four kinds, built from the graph and kept only when they single it out:

* ``category``  "the lantern"
* ``attribute`` "the thing with a blue square" (a part no other object has)
* ``spatial``   "the leftmost one" (clear margin to the runner-up)
* ``relation``  "the one next to the grey ring" (the distractor is unique and nearest to it)

Like many RefCOCO expressions, the spatial and relational ones never name the referent's
category, which is the case LGD's generated descriptions are meant to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from visionlens.data.world import (CLASS_NAMES, DISTRACTOR_COLOURS, MAX_PARTS, PART_NAMES, SHAPES, World,
                           WorldConfig)

SIZE = 96
DISTRACTOR_COLOUR_NAMES = ("grey", "brown", "pink", "teal", "black")
KINDS = ("category", "attribute", "spatial", "relation")
SPATIAL = {"leftmost": (0, -1), "rightmost": (0, 1), "topmost": (1, -1), "lowest": (1, 1)}
_SHAPE_BY_PARAMS = {(p, h, c): name for name, (p, h, c) in SHAPES.items()}


@dataclass
class Entity:
    """One scene element: ``kind`` object / distractor / part, its ``name`` ("lantern", "grey
    ring", "blue square"), ``parts`` (objects only), pixel ``mask`` and ``owner`` (parts: the
    index of their object)."""

    kind: str
    name: str
    mask: np.ndarray
    parts: list[str] = field(default_factory=list)
    owner: int = -1

    @property
    def centre(self) -> np.ndarray:
        ys, xs = np.nonzero(self.mask)
        return np.array([xs.mean(), ys.mean()])


@dataclass
class ReferSample:
    """An image ``(3, H, W)`` float tensor in [0, 1], its ``entities``, one ``expression``,
    its ``kind``, the ``referent`` (entity index) and the ground-truth ``mask``."""

    image_id: str
    image: torch.Tensor
    entities: list[Entity]
    expression: str
    kind: str
    referent: int

    @property
    def mask(self) -> np.ndarray:
        return self.entities[self.referent].mask


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (torch.nn.functional.max_pool2d(t, 2 * r + 1, 1, r)[0, 0] > 0).numpy()


def _distractor_name(scene: dict, j: int) -> str:
    lay, col = scene["layers"][MAX_PARTS + j], scene["colours"][MAX_PARTS + j]
    shape = _SHAPE_BY_PARAMS.get((float(lay[5]), float(np.float32(lay[6])), bool(lay[7] > 0.5)))
    if shape is None:  # float32 round trip of the hole ratio
        shape = min(SHAPES, key=lambda s: abs(SHAPES[s][0] - lay[5]) + abs(SHAPES[s][1] - lay[6]) + 9 * (SHAPES[s][2] != (lay[7] > 0.5)))
    colour = int(np.argmin([np.abs(np.array(c) - col).sum() for c in DISTRACTOR_COLOURS]))
    return f"{DISTRACTOR_COLOUR_NAMES[colour]} {shape}"


def _object_entities(batch: dict, i: int, shift: tuple[int, int]) -> list[Entity]:
    dy, dx = shift
    move = lambda m: np.roll(np.roll(m, dy, 0), dx, 1)  # noqa: E731  (placement keeps it inside)
    parts = [(PART_NAMES[int(pid)], batch["part_masks"][i, k].numpy()) for k, pid in enumerate(batch["part_ids"][i]) if pid >= 0]
    parts = [(n, m) for n, m in parts if m.any()]
    obj = Entity("object", CLASS_NAMES[int(batch["label"][i])], move(batch["object_mask"][i].numpy()),
                 parts=sorted({n for n, _ in parts}))
    return [obj] + [Entity("part", n, move(m)) for n, m in parts]


def make_scenes(split: str, indices, seed: int = 0, extra_objects: int = 2) -> list[tuple[torch.Tensor, list[Entity]]]:
    """Render scenes ``indices`` of ``split`` (batched): ``(image (3, 96, 96), entities)`` each."""
    indices = [int(i) for i in indices]
    cfg = WorldConfig(size=SIZE, scale=(0.11, 0.14), distractors=(2, 3))
    world = World(cfg, seed)
    scenes = world.scenes(split, indices)
    base = world.batch(split, indices)
    extras = [World(cfg.with_(distractors=(0, 0)), seed + 1 + k).batch(split, indices) for k in range(extra_objects)]
    return [_compose(base, extras, scenes[b], b, (seed, 7, index)) for b, index in enumerate(indices)]


def make_scene(split: str, index: int, seed: int = 0, extra_objects: int = 2) -> tuple[torch.Tensor, list[Entity]]:
    """Render scene ``index`` of ``split``: image ``(3, 96, 96)`` and its entities."""
    return make_scenes(split, [index], seed, extra_objects)[0]


def _compose(base: dict, extras: list[dict], scene: dict, b: int, rng_key) -> tuple[torch.Tensor, list[Entity]]:
    image = base["image"][b].clone()
    entities = _object_entities(base, b, (0, 0))
    for j in range(base["distractor_masks"].shape[1]):
        m = base["distractor_masks"][b, j].numpy()
        if m.sum() >= 12:
            entities.append(Entity("distractor", _distractor_name(scene, j), m))
    occupied = _dilate(np.any([e.mask for e in entities], axis=0), 3)
    rng = np.random.default_rng(rng_key)
    for extra in extras:
        m = extra["object_mask"][b].numpy()
        ys, xs = np.nonzero(m)
        for _ in range(60):
            dy = int(rng.integers(-ys.min(), SIZE - ys.max()))
            dx = int(rng.integers(-xs.min(), SIZE - xs.max()))
            moved = np.roll(np.roll(m, dy, 0), dx, 1)
            if not (moved & occupied).any():
                break
        else:
            continue
        image[:, torch.from_numpy(moved)] = extra["image"][b][:, torch.from_numpy(m)]
        first = len(entities)
        new = _object_entities(extra, b, (dy, dx))
        for e in new[1:]:
            e.owner = first
        entities += new
        occupied |= _dilate(moved, 3)
    for e in entities:
        if e.kind == "part" and e.owner < 0:
            e.owner = 0
    return image, entities


def _expressions(entities: list[Entity], rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """Every uniquely-referring expression ``(text, kind, referent)`` for the scene's objects."""
    objs = [i for i, e in enumerate(entities) if e.kind == "object"]
    dis = [i for i, e in enumerate(entities) if e.kind == "distractor"]
    out = []
    for i in objs:
        e = entities[i]
        if sum(entities[j].name == e.name for j in objs) == 1 and len(objs) > 1:
            out.append((f"the {e.name}", "category", i))
        unique = [p for p in e.parts if sum(p in entities[j].parts for j in objs) == 1]
        if unique and len(objs) > 1:
            out.append((f"the thing with {article(unique[int(rng.integers(len(unique)))])}", "attribute", i))
    if len(objs) > 1:
        centres = {i: entities[i].centre for i in objs}
        for word, (axis, sign) in SPATIAL.items():
            order = sorted(objs, key=lambda i: sign * centres[i][axis])
            if sign * (centres[order[1]][axis] - centres[order[0]][axis]) > 0 and \
                    abs(centres[order[1]][axis] - centres[order[0]][axis]) >= 12:
                out.append((f"the {word} one", "spatial", order[0]))
    names = [entities[d].name for d in dis]
    for d in dis:
        if names.count(entities[d].name) != 1 or len(objs) < 2:
            continue
        dist = sorted((np.hypot(*(entities[i].centre - entities[d].centre)), i) for i in objs)
        if dist[1][0] - dist[0][0] >= 10:
            out.append((f"the one next to the {entities[d].name}", "relation", dist[0][1]))
    return out


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def benchmark(split: str = "test", n: int = 300, seed: int = 0, chunk: int = 64, bar=None) -> list[ReferSample]:
    """``n`` referring samples of ``split``: one expression per scene, the kinds taken in turn
    (a scene without an expression of the turn's kind gives another kind). ``bar``: a progress bar
    advanced once per sample."""
    samples, start = [], 0
    while len(samples) < n:
        for index, (image, entities) in enumerate(make_scenes(split, range(start, start + chunk), seed), start):
            rng = np.random.default_rng((seed, 11, index))
            exprs = _expressions(entities, rng)
            if exprs and len(samples) < n:
                want = KINDS[len(samples) % len(KINDS)]
                pick = [x for x in exprs if x[1] == want] or exprs
                text, kind, ref = pick[int(rng.integers(len(pick)))]
                samples.append(ReferSample(f"{split}-{seed}-{index}", image, entities, text, kind, ref))
                if bar is not None:
                    bar.update(1)
        start += chunk
    return samples
