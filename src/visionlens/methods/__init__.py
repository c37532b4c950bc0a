"""One module per explanation method; ``METHODS`` maps CLI names to classes."""

from .ablationcam import AblationCAM
from .base import ClassActivationMethod
from .cam import CAM
from .daam import DAAM
from .eigencam import EigenCAM
from .gradcam import GradCAM
from .gradcam_plusplus import GradCAMPlusPlus
from .hirescam import HiResCAM
from .layercam import LayerCAM
from .naflow import NAFlow
from .relevance_cam import RelevanceCAM
from .rollout import AttentionRollout
from .scorecam import ScoreCAM
from .xgradcam import XGradCAM

METHODS = {"cam": CAM, "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
           "hirescam": HiResCAM, "eigencam": EigenCAM, "scorecam": ScoreCAM, "ablationcam": AblationCAM, "relevance-cam": RelevanceCAM, "daam": DAAM, "rollout": AttentionRollout,
           "naflow": NAFlow}

__all__ = ["AblationCAM", "EigenCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "ScoreCAM", "XGradCAM",
           "AttentionRollout", "CAM", "ClassActivationMethod", "DAAM", "GradCAM", "METHODS", "NAFlow", "RelevanceCAM"]
