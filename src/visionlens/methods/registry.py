"""Every explanation method in one place: its CLI name, class, kind and what it explains.

``visionlens methods`` prints this table; :data:`METHODS` (methods that explain a class) and
:data:`SIMILARITY_METHODS` (methods that explain a similarity between two images) are views of it.
Kinds: ``cam`` (channel weights -> one map at one layer), ``flow`` (one map per layer or block),
``similarity`` (both images of a pair)."""

from __future__ import annotations

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
    """One registered method: ``name`` on the command line, ``cls``, ``kind``, ``summary`` (the
    paper and what the method does, one line for ``visionlens methods`` and the explorer) and
    ``explains`` (``"class"`` or ``"similarity"``)."""

    name: str
    cls: type
    kind: str
    summary: str
    explains: str = "class"

    @property
    def shares_pass(self) -> bool:
        """Whether ``explain_many`` computes it from the pass it shares with other methods."""
        return bool(getattr(self.cls, "shares_pass", False))


REGISTRY: tuple[MethodInfo, ...] = (
    MethodInfo("cam", CAM, "cam",
               "CAM (Zhou et al., CVPR 2016): the classifier's weights on the last feature maps"),
    MethodInfo("gradcam", GradCAM, "cam",
               "Grad-CAM (Selvaraju et al., ICCV 2017): feature maps weighted by their mean gradient"),
    MethodInfo("gradcam++", GradCAMPlusPlus, "cam",
               "Grad-CAM++ (Chattopadhyay et al., WACV 2018): Grad-CAM with higher-order pixel weights"),
    MethodInfo("xgradcam", XGradCAM, "cam",
               "XGrad-CAM (Fu et al., BMVC 2020): gradients weighted by the activations"),
    MethodInfo("layercam", LayerCAM, "cam",
               "LayerCAM (Jiang et al., TIP 2021): a positive-gradient weight per position, for any layer"),
    MethodInfo("hirescam", HiResCAM, "cam",
               "HiResCAM (Draelos & Carin, 2020): gradient times activation at each position"),
    MethodInfo("eigencam", EigenCAM, "cam",
               "Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the feature maps' first principal component; the same for every class"),
    MethodInfo("scorecam", ScoreCAM, "cam",
               "Score-CAM (Wang et al., CVPRW 2020): each channel masks the input, weighted by the class score it keeps"),
    MethodInfo("ablationcam", AblationCAM, "cam",
               "Ablation-CAM (Desai & Ramaswamy, WACV 2020): each channel weighted by the score lost without it"),
    MethodInfo("relevance-cam", RelevanceCAM, "cam",
               "Relevance-CAM (Lee et al., CVPR 2021): channel weights from layer-wise relevance propagation"),
    MethodInfo("daam", DAAM, "flow",
               "DAAM (Liao et al., Pattern Recognition 2025): the attention map accumulated through every ViT block"),
    MethodInfo("rollout", AttentionRollout, "flow",
               "Attention rollout (Abnar & Zuidema, ACL 2020): attention multiplied through the blocks; the same for every class"),
    MethodInfo("chefer", CheferRollout, "flow",
               "Chefer's rollout (Chefer, Gur & Wolf, ICCV 2021): gradient-weighted attention rollout"),
    MethodInfo("legrad", LeGrad, "flow",
               "LeGrad (Bousselham et al., 2024): the class score's gradients on every block's attention"),
    MethodInfo("attnlrp", AttnLRP, "flow",
               "AttnLRP (Achtibat et al., ICML 2024): layer-wise relevance propagation with rules for attention"),
    MethodInfo("naflow", NAFlow, "flow",
               "NAFlow (Liao et al., TPAMI 2026): the neuron-abandoning attention flow through every CNN layer"),
    MethodInfo("sfam", SFAM, "similarity",
               "SFAM (Similar Feature Activation Map): channel weights from each embedding dimension's share of the similarity", "similarity"),
    MethodInfo("gradcam", SimilarityGradCAM, "similarity",
               "Grad-CAM of the similarity of the two embeddings", "similarity"),
    MethodInfo("relevance-cam", SimilarityRelevanceCAM, "similarity",
               "Relevance-CAM started from the similarity of the two embeddings", "similarity"),
    MethodInfo("naflow", SimilarityNAFlow, "flow",
               "NAFlow of the similarity, through every CNN layer", "similarity"),
)

METHODS: dict[str, type] = {m.name: m.cls for m in REGISTRY if m.explains == "class"}
SIMILARITY_METHODS: dict[str, type] = {m.name: m.cls for m in REGISTRY if m.explains == "similarity"}


def _spelling_key(name: str) -> str:
    """``"Grad-CAM++"`` -> ``"gradcam++"``: lower case, without spaces, dashes and underscores."""
    return "".join(ch for ch in name.lower() if ch not in " -_")


def unknown_method(name: str, known, what: str = "method", note: str = "") -> str:
    """The one-line error for a method name not in ``known``: the name it most likely means
    (the same letters in another spelling, e.g. ``ScoreCAM`` or ``relevance_cam``, or the name of
    its class, e.g. ``GradCAMPlusPlus``, where ``known`` maps names to classes; else the closest
    name), then every choice; ``note`` ends the line."""
    import difflib

    classes = dict(known) if isinstance(known, dict) else {}
    known = list(known)
    key = _spelling_key(name)
    same = [k for k in known if key in (_spelling_key(k), _spelling_key(getattr(classes.get(k), "__name__", "")))]
    close = same or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {what} '{name}'{hint}; choose from: {', '.join(known)}{note}"
