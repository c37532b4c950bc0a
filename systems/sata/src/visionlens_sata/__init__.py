"""Robustness plug-ins for ViTs: SATA (spatial-autocorrelation token analysis), evaluated
per image under several batching protocols on a generated corruption suite."""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionlens._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["FfnAccount", "SataConfig", "SataViT", "autocorrelation_scores", "bipartite_group",
                     "local_morans_i", "sata_block_indices", "split_mask"], "sata"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)  # imported on first use: the CLI stays fast

if TYPE_CHECKING:
    from .sata import (FfnAccount, SataConfig, SataViT, autocorrelation_scores, bipartite_group, local_morans_i,
        sata_block_indices, split_mask)

__all__ = ["FfnAccount", "SataConfig", "SataViT", "autocorrelation_scores", "bipartite_group", "local_morans_i",
           "sata_block_indices", "split_mask"]
