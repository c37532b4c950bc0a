"""The LGD pipeline: proposals -> region features -> three text scores -> fusion -> argmax.

``LGD(encoder, describer, config).segment(image, expression, masks)`` returns the chosen mask,
every term's scores and the descriptions used. Switched-off terms never call the describer.
Region features are encoded ``region_batch`` masks at a time, or passed in precomputed
(``regions``: a :class:`~.regions.Regions` from the per-image cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from visionlens.checks import check_finite
from visionlens.errors import InputError, VisionlensError

from .regions import Regions, encode_regions_batched
from .scores import LGDConfig, fuse, region_features, select, term_scores

DESCRIPTION_KIND = {"att": "attribute", "sur": "surrounding"}


@dataclass
class Segmentation:
    """``index`` of the chosen proposal, its ``mask`` (H, W) bool, per-term ``scores`` (lists,
    one value per proposal), the fused ``total`` and the ``descriptions`` used."""

    index: int
    mask: np.ndarray
    scores: dict
    total: list
    descriptions: dict

    def as_dict(self) -> dict:
        return {"index": self.index, "area": int(self.mask.sum()), "scores": self.scores, "total": self.total,
                "descriptions": self.descriptions}


def _check_encoded(encoder, *features: torch.Tensor) -> None:
    """Stop (not an input problem: the weights are) when the encoder gives NaN or infinite features."""
    if not all(bool(torch.isfinite(f).all()) for f in features):
        name = getattr(encoder, "name", type(encoder).__name__)
        raise VisionlensError(f"the encoder {name} gave NaN or infinite features; check its weights")


class LGD:
    def __init__(self, encoder, describer=None, config: LGDConfig | None = None, region_batch: int = 32):
        self.encoder, self.describer = encoder, describer
        self.config = config or LGDConfig()
        self.region_batch = region_batch

    def describe(self, image, expression: str, image_id: str = "", scene=None, regions=None) -> dict[str, str]:
        """The attribute / surrounding sentences the config needs (empty when no describer).
        A describer that perceives the proposals (``needs_regions``) also gets ``regions``."""
        out = {}
        extra = {"regions": regions} if getattr(self.describer, "needs_regions", False) else {}
        for term, kind in DESCRIPTION_KIND.items():
            wanted = self.config.use_att if term == "att" else self.config.use_sur
            if wanted and self.describer is not None:
                out[term] = self.describer.describe(image, expression, kind, image_id=image_id, scene=scene, **extra)
        return out

    def term_scores(self, image: torch.Tensor, expression: str, masks: torch.Tensor, image_id: str = "",
                    scene=None, regions=None) -> tuple[dict, dict]:
        """``(S_x per term as (N,) tensors, descriptions)`` for ``masks`` (N, H, W); ``regions``
        (precomputed features of these masks) skips the image encoder."""
        if not expression or not expression.strip():
            raise InputError("the referring expression is empty")
        masks = torch.as_tensor(masks).bool()
        if masks.ndim != 3 or masks.shape[0] == 0:
            raise InputError(f"expected (N, H, W) mask proposals with N >= 1, got shape {tuple(masks.shape)}")
        check_finite("the image", torch.as_tensor(image))
        if regions is None:
            f_global, f_local = encode_regions_batched(self.encoder, image, masks, self.region_batch)
        else:
            f_global, f_local = regions.f_global, regions.f_local
        descriptions = self.describe(image, expression, image_id, scene, Regions(masks, f_global, f_local))
        feats = region_features(f_global, f_local, self.config.mix)
        sentences = {"van": expression, **{k: v for k, v in descriptions.items() if v}}
        keys = list(sentences)
        encoded = self.encoder.encode_text([sentences[k] for k in keys])
        _check_encoded(self.encoder, f_global, f_local, encoded)
        texts = {k: encoded[i] for i, k in enumerate(keys)}
        return term_scores(feats, texts, self.config), descriptions

    def segment(self, image: torch.Tensor, expression: str, masks: torch.Tensor, image_id: str = "",
                scene=None, regions=None) -> Segmentation:
        scores, descriptions = self.term_scores(image, expression, masks, image_id, scene, regions)
        total = fuse(scores, self.config)
        best = select(total)
        return Segmentation(best, torch.as_tensor(masks)[best].bool().numpy(),
                            {k: [round(float(v), 5) for v in s] for k, s in scores.items()},
                            [round(float(v), 5) for v in total], descriptions)
