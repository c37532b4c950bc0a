"""One module per explanation method; :mod:`.registry` lists them all (``visionlens methods``)."""

from .ablationcam import AblationCAM
from .attnlrp import AttnLRP
from .base import ClassActivationMethod
from .cam import CAM
from .chefer import CheferRollout
from .daam import DAAM
from .eigencam import EigenCAM
from .gradcam import GradCAM
from .gradcam_plusplus import GradCAMPlusPlus
from .hirescam import HiResCAM
from .layercam import LayerCAM
from .legrad import LeGrad
from .naflow import NAFlow
from .registry import METHODS, REGISTRY, SIMILARITY_METHODS, MethodInfo
from .relevance_cam import RelevanceCAM
from .rollout import AttentionRollout
from .scorecam import ScoreCAM
from .xgradcam import XGradCAM

__all__ = ["AblationCAM", "AttnLRP", "EigenCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "ScoreCAM", "XGradCAM",
           "AttentionRollout", "CAM", "CheferRollout", "ClassActivationMethod", "DAAM", "GradCAM", "LeGrad", "METHODS",
           "MethodInfo", "NAFlow", "REGISTRY", "RelevanceCAM", "SIMILARITY_METHODS"]
