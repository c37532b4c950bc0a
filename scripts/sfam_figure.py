"""Draw docs/sfam-pair.png: SFAM pair maps for world-metric on planted pairs (the same object in two
contexts), with the Grad-CAM-on-similarity baseline.

    python scripts/sfam_figure.py docs/sfam-pair.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import visionlens
from visionlens import SFAM, SimilarityGradCAM
from visionlens.data.world import World, WorldConfig
from visionlens.models.world_eval import normalise
from visionlens.viz.overlay import overlay, save_atomic

SCALE = 3


def _img(t) -> Image.Image:
    return Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def main(dest: str = "docs/sfam-pair.png", idx=(0, 3, 5, 9)) -> None:
    emb = visionlens.embedder("world-metric")
    world = World(WorldConfig(size=64), seed=0)
    a, b = world.batch("test", idx), world.batch("test", idx, view=1)
    xa, xb = normalise(a["image"]), normalise(b["image"])
    sfam, grad = SFAM(emb).pair(xa, xb), SimilarityGradCAM(emb).pair(xa, xb)
    heads = ["query", "SFAM", "Grad-CAM(s)", "reference", "SFAM", "Grad-CAM(s)"]
    size, top = 64 * SCALE, 18
    sheet = Image.new("RGB", (size * 6, top + size * len(idx)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, h in enumerate(heads):
        draw.text((c * size + 4, 3), h, fill="black")
    for r in range(len(idx)):
        qa, qb = _img(a["image"][r]), _img(b["image"][r])
        tiles = [qa, overlay(qa, sfam.query.maps[r].numpy()), overlay(qa, grad.query.maps[r].numpy()),
                 qb, overlay(qb, sfam.reference.maps[r].numpy()), overlay(qb, grad.reference.maps[r].numpy())]
        for c, t in enumerate(tiles):
            sheet.paste(t.resize((size, size), Image.NEAREST), (c * size, top + r * size))
        draw.text((3 * size + 4, top + r * size + 3), f"cos {float(sfam.scores[r]):.3f}", fill="white")
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    save_atomic(lambda t: sheet.save(t, format="PNG"), Path(dest))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
