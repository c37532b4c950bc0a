"""Draw the README's gallery: several methods on a few bundled sample photos, side by side.

    python scripts/make_gallery.py docs/gallery.png

Uses only the public API: the offline zoo model (``visionlens fetch`` first), the bundled sample
photos and ``visionlens.viz.overlay`` / ``with_colorbar`` for the heat maps and their colour bar,
so the picture follows the library's colormap. Refuses to replace an existing file unless
``--force`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

import visionlens
import visionlens.viz
from visionlens.data import load_image, sample_images
from visionlens.errors import InputError, VisionlensError

# (column title, method class, layer): None is the zoo model's default layer.
METHODS = [
    ("CAM", visionlens.CAM, None),
    ("Grad-CAM", visionlens.GradCAM, None),
    ("Grad-CAM++", visionlens.GradCAMPlusPlus, None),
    ("LayerCAM", visionlens.LayerCAM, "features.13"),
    ("Eigen-CAM", visionlens.EigenCAM, None),
    ("Relevance-CAM", visionlens.RelevanceCAM, None),
]
# File names of the sample photos (a cat, a dog, an eagle), looked up among the bundled samples.
PHOTOS = ["chelsea.png", "imagenet_16_251.jpg", "imagenet_17_22.jpg"]
TILE = 224
CAPTION = 22


def pick_photos(names: list[str]) -> list[Path]:
    """The bundled sample photos with these file names, in this order."""
    by_name = {p.name: p for p in sample_images("all")}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"sample photos not found: {', '.join(missing)} (run `visionlens fetch samples`)")
    return [by_name[n] for n in names]


def explain_row(model, path: Path, cmap: str | None = None) -> tuple[str, list[Image.Image]]:
    """The model's view of one photo followed by one overlay per method, with the predicted class."""
    view = model.preprocess.view(load_image(path))
    x = model.preprocess.normalize(view)[None]  # the view is already resized and cropped
    tiles, label = [view], ""
    for _, method, layer in METHODS:
        exp = method(model.module, layer=layer or model.layer)(x)
        tiles.append(visionlens.viz.overlay(view, exp.maps[0].detach().cpu().numpy(), cmap=cmap))
        label = label or f"{model.class_names[int(exp.targets[0])]} ({float(exp.probabilities[0].max()):.0%})"
    return label, tiles


def compose(rows: list[tuple[str, list[Image.Image]]], titles: list[str]) -> Image.Image:
    """One grid: a title bar, then one row per photo, each tile captioned."""
    cols = len(titles)
    sheet = Image.new("RGB", (cols * TILE, CAPTION + len(rows) * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles):
        draw.text((c * TILE + 6, 5), title, fill="black")
    for r, (label, tiles) in enumerate(rows):
        top = CAPTION + r * (TILE + CAPTION)
        draw.text((6, top + TILE + 5), f"predicted: {label}", fill="black")
        for c, tile in enumerate(tiles):
            sheet.paste(tile.resize((TILE, TILE)), (c * TILE, top))
    return sheet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", nargs="?", default="docs/gallery.png", help="PNG to write (default docs/gallery.png)")
    ap.add_argument("--model", default="mobilenet_v2", help="zoo model (default mobilenet_v2)")
    ap.add_argument("--force", action="store_true", help="replace DEST if it exists")
    ap.add_argument("--cmap", default=None, help="colormap of the overlays (default: the library's default)")
    args = ap.parse_args(argv)
    dest = Path(args.dest)
    if dest.exists() and not args.force:
        print(f"{dest} exists; pass --force to replace it", file=sys.stderr)
        return 2
    try:
        model = visionlens.load_model(args.model)
        rows = [explain_row(model, p, args.cmap) for p in pick_photos(PHOTOS)]
    except VisionlensError as err:  # e.g. weights or photos not fetched: one line naming the fix
        print(f"error: {err}", file=sys.stderr)
        return 2
    titles = ["photo (model's view)"] + [name + (f" @ {layer}" if layer else "") for name, _, layer in METHODS]
    sheet = visionlens.viz.with_colorbar(compose(rows, titles), args.cmap)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest, optimize=True)
    print(f"wrote {dest} ({sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
