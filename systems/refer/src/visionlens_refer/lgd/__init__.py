"""LGD: zero-shot referring image segmentation with generated descriptions (arXiv:2504.14467).

Pipeline: mask proposals -> CLIP-style region features (global-context and local crop) -> the
expression's score S_van plus the scores of two MLLM descriptions of the referent, its
attributes S_att and its surroundings S_sur -> S = S_van + alpha S_att + beta S_sur -> argmax.
Every stage is pluggable: proposals (``proposals``, ``sam``), encoders (``toy_vlm``,
``clip_hf``), describers (``describers``, ``mllm``, ``perception``); ``regions`` caches each
image's proposals and region features. Real weights are always local folders;
nothing is downloaded. ``synthetic`` + ``benchmark`` score the whole pipeline on the synthetic
world, ``refcoco`` loads RefCOCO/+/g, ``metrics`` gives oIoU / mIoU / Pr@K.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionlens._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["CachedDescriber", "SceneDescriber"], "describers"),
    "ReferMetrics": "metrics",
    **dict.fromkeys(["LGD", "Segmentation"], "pipeline"),
    **dict.fromkeys(["ClassicalProposer", "FileProposer", "GTProposer"], "proposals"),
    "RegionScoreDescriber": "perception",
    **dict.fromkeys(["RegionCache", "Regions"], "regions"),
    "SamFilters": "sam_filters",
    "LGDConfig": "scores",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)  # imported on first use: the CLI stays fast

if TYPE_CHECKING:
    from .describers import CachedDescriber, SceneDescriber
    from .metrics import ReferMetrics
    from .pipeline import LGD, Segmentation
    from .perception import RegionScoreDescriber
    from .proposals import ClassicalProposer, FileProposer, GTProposer
    from .regions import RegionCache, Regions
    from .sam_filters import SamFilters
    from .scores import LGDConfig

__all__ = ["LGD", "LGDConfig", "Segmentation", "ReferMetrics", "GTProposer", "FileProposer", "ClassicalProposer",
           "SceneDescriber", "CachedDescriber", "RegionScoreDescriber", "RegionCache", "Regions", "SamFilters"]
