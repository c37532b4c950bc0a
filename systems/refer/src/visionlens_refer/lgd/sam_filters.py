"""SAM proposal settings, importable without torch (the CLI builds its flags from the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from visionlens.checks import check_number

FLAGS = {"pred_iou_thresh": "--sam-pred-iou", "stability_thresh": "--sam-stability", "min_area": "--sam-min-area"}


@dataclass(frozen=True)
class SamFilters:
    """Proposal settings; each has a ``visionlens refer --sam-*`` flag (see :data:`FLAGS`)."""

    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.0
    stability_thresh: float = 0.0
    stability_offset: float = 1.0
    nms_thresh: float = 0.7
    min_area: int = 64
    max_masks: int = 64

    def __post_init__(self):
        for name in ("points_per_side", "points_per_batch", "max_masks"):
            check_number(name, getattr(self, name), minimum=1, integer=True)
        check_number("min_area", self.min_area, minimum=0, integer=True)
        check_number("nms_thresh", self.nms_thresh, minimum=0, maximum=1)
        check_number("stability_offset", self.stability_offset, minimum=0)
        for name in ("pred_iou_thresh", "stability_thresh"):
            check_number(name, getattr(self, name))
