"""The LGD pipeline: proposals -> region features -> three text scores -> fusion -> argmax.

``LGD(encoder, describer, config).segment(image, expression, masks)`` returns the chosen mask,
every term's scores and the descriptions used. Switched-off terms never call the describer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from visionlens.checks import check_finite
from visionlens.errors import InputError, VisionlensError

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
    def __init__(self, encoder, describer=None, config: LGDConfig | None = None):
        self.encoder, self.describer = encoder, describer
        self.config = config or LGDConfig()

    def describe(self, image, expression: str, image_id: str = "", scene=None) -> dict[str, str]:
        """The attribute / surrounding sentences the config needs (empty when no describer)."""
        out = {}
        for term, kind in DESCRIPTION_KIND.items():
            wanted = self.config.use_att if term == "att" else self.config.use_sur
            if wanted and self.describer is not None:
                out[term] = self.describer.describe(image, expression, kind, image_id=image_id, scene=scene)
        return out

    def term_scores(self, image: torch.Tensor, expression: str, masks: torch.Tensor, image_id: str = "",
                    scene=None) -> tuple[dict, dict]:
        """``(S_x per term as (N,) tensors, descriptions)`` for ``masks`` (N, H, W)."""
        if not expression or not expression.strip():
            raise InputError("the referring expression is empty")
        masks = torch.as_tensor(masks).bool()
        if masks.ndim != 3 or masks.shape[0] == 0:
            raise InputError(f"expected (N, H, W) mask proposals with N >= 1, got shape {tuple(masks.shape)}")
        check_finite("the image", torch.as_tensor(image))
        descriptions = self.describe(image, expression, image_id, scene)
        f_global, f_local = self.encoder.encode_regions(image, masks)
        feats = region_features(f_global, f_local, self.config.mix)
        sentences = {"van": expression, **{k: v for k, v in descriptions.items() if v}}
        keys = list(sentences)
        encoded = self.encoder.encode_text([sentences[k] for k in keys])
        _check_encoded(self.encoder, f_global, f_local, encoded)
        texts = {k: encoded[i] for i, k in enumerate(keys)}
        return term_scores(feats, texts, self.config), descriptions

    def segment(self, image: torch.Tensor, expression: str, masks: torch.Tensor, image_id: str = "",
                scene=None) -> Segmentation:
        scores, descriptions = self.term_scores(image, expression, masks, image_id, scene)
        total = fuse(scores, self.config)
        best = select(total)
        return Segmentation(best, torch.as_tensor(masks)[best].bool().numpy(),
                            {k: [round(float(v), 5) for v in s] for k, s in scores.items()},
                            [round(float(v), 5) for v in total], descriptions)
