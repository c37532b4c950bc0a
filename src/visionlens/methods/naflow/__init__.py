"""NAFlow: the method (:mod:`.method`) and the per-layer inverses it solves (:mod:`.inverse`)."""

from .method import NAFlow, NAFlowTerms, SimilarityNAFlow

__all__ = ["NAFlow", "NAFlowTerms", "SimilarityNAFlow"]
