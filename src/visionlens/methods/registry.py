"""Every explanation method in one place: its CLI name, class, kind and what it explains.

``visionlens methods`` prints this table; :data:`METHODS` (methods that explain a class) and
:data:`SIMILARITY_METHODS` (methods that explain a similarity between two images) are views of it.
Kinds: ``cam`` (channel weights -> one map at one layer), ``flow`` (one map per layer or block),
``similarity`` (both images of a pair)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .ablationcam import AblationCAM
from .attnlrp import AttnLRP
from .cam import CAM
from .chefer import CheferRollout
from .daam import DAAM
from .eigencam import EigenCAM
from .gradcam import GradCAM
from .gradcam_plusplus import GradCAMPlusPlus
from .hirescam import HiResCAM
from .layercam import LayerCAM
from .legrad import LeGrad
from .naflow import NAFlow, SimilarityNAFlow
from .relevance_cam import RelevanceCAM
from .rollout import AttentionRollout
from .scorecam import ScoreCAM
from .sfam import SFAM
from .similarity import SimilarityGradCAM, SimilarityRelevanceCAM
from .xgradcam import XGradCAM


@dataclass(frozen=True)
class MethodInfo:
    """One registered method: ``name`` on the command line, ``cls``, ``kind`` and ``explains``
    (``"class"`` or ``"similarity"``)."""

    name: str
    cls: type
    kind: str
    explains: str = "class"

    @property
    def summary(self) -> str:
        """The first line of the method's module docstring (it names the paper), or of its class
        docstring where a module holds several methods (the similarity methods)."""
        module_doc = sys.modules[self.cls.__module__].__doc__
        doc = self.cls.__doc__ if self.explains == "similarity" and self.cls.__doc__ else module_doc or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @property
    def shares_pass(self) -> bool:
        """Whether ``explain_many`` computes it from the pass it shares with other methods."""
        return bool(getattr(self.cls, "shares_pass", False))


REGISTRY: tuple[MethodInfo, ...] = (
    MethodInfo("cam", CAM, "cam"),
    MethodInfo("gradcam", GradCAM, "cam"),
    MethodInfo("gradcam++", GradCAMPlusPlus, "cam"),
    MethodInfo("xgradcam", XGradCAM, "cam"),
    MethodInfo("layercam", LayerCAM, "cam"),
    MethodInfo("hirescam", HiResCAM, "cam"),
    MethodInfo("eigencam", EigenCAM, "cam"),
    MethodInfo("scorecam", ScoreCAM, "cam"),
    MethodInfo("ablationcam", AblationCAM, "cam"),
    MethodInfo("relevance-cam", RelevanceCAM, "cam"),
    MethodInfo("daam", DAAM, "flow"),
    MethodInfo("rollout", AttentionRollout, "flow"),
    MethodInfo("chefer", CheferRollout, "flow"),
    MethodInfo("legrad", LeGrad, "flow"),
    MethodInfo("attnlrp", AttnLRP, "flow"),
    MethodInfo("naflow", NAFlow, "flow"),
    MethodInfo("sfam", SFAM, "similarity", "similarity"),
    MethodInfo("gradcam", SimilarityGradCAM, "similarity", "similarity"),
    MethodInfo("relevance-cam", SimilarityRelevanceCAM, "similarity", "similarity"),
    MethodInfo("naflow", SimilarityNAFlow, "flow", "similarity"),
)

METHODS: dict[str, type] = {m.name: m.cls for m in REGISTRY if m.explains == "class"}
SIMILARITY_METHODS: dict[str, type] = {m.name: m.cls for m in REGISTRY if m.explains == "similarity"}
