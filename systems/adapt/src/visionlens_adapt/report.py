"""Outputs of a comparison run: the Grad-CAM before/after figure, results JSON and table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from visionlens.methods.gradcam import GradCAM
from visionlens.viz.overlay import overlay
from visionlens.io import write_json
from visionlens.outputs import staged_out_dir


def _tile(image: torch.Tensor, size: int) -> Image.Image:
    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr).resize((size, size), Image.NEAREST)


def gradcam_figure(before, after, x: torch.Tensor, y: torch.Tensor, class_names, tile: int = 96) -> Image.Image:
    """Rows: target images; columns: image, Grad-CAM of the true class for the source model
    (``before``) and for the adapted model (``after``), each captioned with its prediction."""
    columns = [("target image", None), ("before (source)", before), ("after (adapted)", after)]
    maps, preds = {}, {}
    for title, net in columns[1:]:
        expl = GradCAM(net, layer="attention")(x, target=y)
        maps[title], preds[title] = expl.maps.detach(), expl.logits.argmax(1)
    caption = 26
    sheet = Image.new("RGB", (tile * 3, (tile + caption) * len(x) + 16), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (title, _) in enumerate(columns):
        draw.text((c * tile + 3, 2), title, fill="black")
    for r in range(len(x)):
        top = 16 + r * (tile + caption)
        base = _tile(x[r], tile)
        for c, (title, _) in enumerate(columns):
            if c == 0:
                sheet.paste(base, (0, top))
                text = f"true: {class_names[int(y[r])]}"
            else:
                heat = torch.nn.functional.interpolate(maps[title][r][None, None], size=(tile, tile), mode="bilinear",
                                                       align_corners=False)[0, 0].numpy()
                sheet.paste(overlay(base, heat, alpha=0.5), (c * tile, top))
                text = f"pred: {class_names[int(preds[title][r])]}"
            draw.text((c * tile + 3, top + tile + 6), text[:16], fill="black")
    return sheet


def write_outputs(out: Path, results: dict, table: str, figure: Image.Image | None,
                  earlier: set[str] | frozenset = frozenset()) -> list[Path]:
    """Write ``results.json``, ``table.md`` and (optionally) ``gradcam.png``, all moved into ``out``
    together when they are complete; the files of ``earlier`` (an earlier run's outputs there) that
    this run does not write again are removed, so that ``out`` holds one run."""
    out = Path(out)
    names = ["results.json", "table.md"] + (["gradcam.png"] if figure is not None else [])
    with staged_out_dir(out, earlier=earlier) as stage:
        write_json(results, stage / "results.json", indent=1)  # strict JSON: NaN becomes null
        (stage / "table.md").write_text(table + "\n")
        if figure is not None:
            figure.save(stage / "gradcam.png", format="PNG", optimize=True)
    return [out / name for name in names]
