"""Describers turn (image, expression) into LGD's attribute / surrounding sentences.

* :class:`SceneDescriber` - rule-based, for synthetic scenes: it resolves the expression against
  the scene graph (an oracle for perception, standing in for the MLLM) and writes the two
  captions; ``error_rate`` makes it describe a wrong object that often, like a fallible MLLM.
* :class:`CachedDescriber` - a JSONL cache in front of any describer, keyed by (image id,
  expression, prompt version, model, kind); ``cache_only`` evaluates without any MLLM.

Real MLLM backends live in ``mllm.py``. Every describer has ``name`` and
``describe(image, expression, kind, image_id=..., scene=None) -> str``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from visionlens.errors import InputError, VisionlensError

from .captions import attribute_caption, surrounding_caption
from .prompts import KINDS, clean_description, load_prompts
from .synthetic import SPATIAL, Entity


def resolve(expression: str, entities: list[Entity]) -> int | None:
    """The object a synthetic-grammar expression refers to, or None (unparsed / ambiguous)."""
    text = expression.lower().strip().rstrip(".")
    objs = [i for i, e in enumerate(entities) if e.kind == "object"]
    found: list[int] = []
    if m := re.fullmatch(r"the one next to the (.+)", text):
        dis = [i for i, e in enumerate(entities) if e.kind == "distractor" and e.name == m.group(1)]
        if len(dis) == 1 and objs:
            c = entities[dis[0]].centre
            found = [min(objs, key=lambda i: float(np.hypot(*(entities[i].centre - c))))]
    elif m := re.fullmatch(r"the (\w+) one", text):
        if m.group(1) in SPATIAL and objs:
            axis, sign = SPATIAL[m.group(1)]
            found = [min(objs, key=lambda i: sign * entities[i].centre[axis])]
    elif m := re.fullmatch(r"the thing with an? (.+)", text):
        found = [i for i in objs if m.group(1) in entities[i].parts]
    elif m := re.fullmatch(r"the (.+)", text):
        found = [i for i in objs if entities[i].name == m.group(1)]
    return found[0] if len(found) == 1 else None


class SceneDescriber:
    """Rule-based describer for synthetic scenes (needs ``scene=entities``)."""

    def __init__(self, error_rate: float = 0.0, seed: int = 0):
        self.error_rate, self.seed = float(error_rate), seed
        self.name = f"scene-rules(error={self.error_rate:g},seed={seed})"

    def describe(self, image, expression: str, kind: str, image_id: str = "", scene: list[Entity] | None = None) -> str:
        if kind not in KINDS:
            raise InputError(f"unknown description kind {kind!r}; choose from {', '.join(KINDS)}")
        if scene is None:
            raise InputError("the rule-based describer needs a synthetic scene; use an MLLM backend or a cache for other images")
        ref = resolve(expression, scene)
        if ref is None:
            return ""
        digest = hashlib.sha256(f"{self.seed}|{image_id}|{expression}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        if rng.random() < self.error_rate:  # the same mistake for both kinds
            others = [i for i, e in enumerate(scene) if e.kind == "object" and i != ref]
            ref = others[int(rng.integers(len(others)))] if others else ref
        text = attribute_caption(scene[ref]) if kind == "attribute" else surrounding_caption(scene, ref)
        return clean_description(text)


def image_key(image) -> str:
    """A content id for an image (tensor, array, PIL image, file path or bytes)."""
    if isinstance(image, (str, Path)):
        data = Path(image).read_bytes()
    elif isinstance(image, bytes):
        data = image
    else:
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else
                         (image.detach().cpu().numpy() if hasattr(image, "detach") else image))
        data = str(arr.shape).encode() + np.ascontiguousarray(arr).tobytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]


class CachedDescriber:
    """JSONL cache around ``inner`` (or none, with ``cache_only``). One JSON object per line with
    the key fields and ``text``; a miss calls ``inner`` and appends the answer."""

    def __init__(self, path: str | Path, inner=None, model: str | None = None, prompt_version: str | None = None,
                 cache_only: bool = False):
        if inner is None and not cache_only:
            raise InputError("a cache without a describer behind it must be cache_only")
        self.path, self.inner, self.cache_only = Path(path), inner, cache_only
        self.model = model or getattr(inner, "name", None)
        if not self.model:
            raise InputError("the cache needs the model id of the describer it stores (pass model=...)")
        self.prompt_version = prompt_version or load_prompts()["version"]
        self.name = f"cache:{self.model}"
        self.needs_regions = getattr(inner, "needs_regions", False)
        self.entries: dict[str, str] = {}
        self.hits = self.misses = 0
        if self.path.is_file():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                        self.entries[self.key(row["image"], row["expression"], row["kind"], row["prompt_version"], row["model"])] = row["text"]
                    except (json.JSONDecodeError, KeyError, TypeError) as err:
                        raise InputError(f"{self.path}:{n} is not a cache line: {err}") from None

    @staticmethod
    def key(image_id: str, expression: str, kind: str, prompt_version: str, model: str) -> str:
        return json.dumps([image_id, expression, kind, prompt_version, model])

    def describe(self, image, expression: str, kind: str, image_id: str = "", scene=None, **perceived) -> str:
        image_id = image_id or image_key(image)
        k = self.key(image_id, expression, kind, self.prompt_version, self.model)
        if k in self.entries:
            self.hits += 1
            return self.entries[k]
        if self.cache_only:
            raise VisionlensError(f"no cached {kind} description for {image_id} / {expression!r} (model {self.model}, "
                                  f"prompts {self.prompt_version}) in {self.path}; run once with an MLLM backend to fill it")
        self.misses += 1
        text = self.inner.describe(image, expression, kind, image_id=image_id, scene=scene, **perceived)
        row = {"image": image_id, "expression": expression, "kind": kind, "prompt_version": self.prompt_version,
               "model": self.model, "text": text}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.entries[k] = text
        return text
