"""Robustness plug-ins for ViTs: SATA (spatial-autocorrelation token analysis), evaluated
per image under several batching protocols on a generated corruption suite."""

from .sata import FfnAccount, SataConfig, SataViT, autocorrelation_scores, bipartite_group, local_morans_i, \
    sata_block_indices, split_mask

__all__ = ["FfnAccount", "SataConfig", "SataViT", "autocorrelation_scores", "bipartite_group", "local_morans_i",
           "sata_block_indices", "split_mask"]
