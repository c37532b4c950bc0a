"""Make the detection and segmentation pictures of docs/detection.md with the commands it shows.

No pretrained detector or segmenter ships in a package registry, and this project's machines
cannot reach torchvision's download server, so the script saves randomly initialised weights
(seed 0; the detector's "person" logit biased so that it detects something) and runs
``visionlens explain`` with ``--weights`` on a bundled photo. The pictures show what the command
writes (view, box, overlays, region), not what a trained model attends to. On a machine with
internet, drop ``--weights`` to use torchvision's COCO / VOC weights.

    python scripts/make_dense_examples.py docs            # writes docs/detection-example.png, segmentation-example.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

PERSON = 1  # COCO's and VOC's "person"


def _save_weights(folder: Path) -> tuple[Path, Path]:
    from torchvision.models import detection, segmentation

    torch.manual_seed(0)
    det = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    with torch.no_grad():
        det.roi_heads.box_predictor.cls_score.bias[PERSON] = 8.0
    seg = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
    torch.save(det.state_dict(), folder / "random-detector.pt")
    torch.save(seg.state_dict(), folder / "random-segmenter.pt")
    return folder / "random-detector.pt", folder / "random-segmenter.pt"


def _strip(out: Path, summary: dict) -> Image.Image:
    """The view, the region (segmenters) and every overlay of the first target, side by side."""
    row = summary["images"][0]
    target = row["targets"][0]
    names = [row["view"]] + ([target["region"]] if "region" in target else []) + list(target["files"].values())
    pictures = [Image.open(out / n).convert("RGB") for n in names]
    height = 240
    pictures = [p.resize((round(p.width * height / p.height), height)) for p in pictures]
    strip = Image.new("RGB", (sum(p.width for p in pictures) + 6 * (len(pictures) - 1), height), (255, 255, 255))
    x = 0
    for p in pictures:
        strip.paste(p, (x, 0))
        x += p.width + 6
    return strip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="folder for detection-example.png and segmentation-example.png")
    args = parser.parse_args(argv)
    import json

    from visionlens.cli import main as visionlens
    from visionlens.data import sample_images

    photo = next(p for p in sample_images() if p.stem == "astronaut")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        det, seg = _save_weights(tmp)
        runs = {
            "detection-example.png": ["explain", str(photo), "--model", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn",
                                      "--weights", str(det), "--method", "gradcam,eigencam,layercam", "--top", "1",
                                      "--out", str(tmp / "det")],
            "segmentation-example.png": ["explain", str(photo), "--model", "torchvision:lraspp_mobilenet_v3_large",
                                         "--weights", str(seg), "--method", "gradcam,layercam", "--out", str(tmp / "seg")],
        }
        for name, argv_ in runs.items():
            print("visionlens " + " ".join(argv_), file=sys.stderr)
            if visionlens(argv_ + ["--quiet", "--device", "cpu"]) != 0:
                return 1
            out = Path(argv_[-1])
            _strip(out, json.loads((out / "summary.json").read_text())).save(args.dest / name)
            print(f"wrote {args.dest / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
