"""CLIP from local weights (transformers ``CLIPModel``), with Global-Local CLIP's region features.

* Global-context feature: the whole image through the ViT; for the last ``k`` blocks the patch
  tokens are multiplied by the mask (area-resized to the token grid) before each block, the CLS
  token kept; then ``post_layernorm`` and ``visual_projection`` of the CLS token. An all-ones
  mask gives exactly ``get_image_features``.
* Local feature: pixels outside the mask set to the normalisation mean, the mask's box cropped
  (square, 10 % margin), resized to the model's input size and encoded.

Images are resized (squashed) to the input size so the mask grid and the image stay aligned.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from visionlens.errors import InputError

from .local_weights import loading, model_dir, require_model_type, require_transformers, weights_identity

CLIP_MODEL_TYPES = ("clip",)  # what transformers' CLIPModel reads (a ViT or SigLIP folder is not one)


def clip_dir(path: str | Path | None) -> Path:
    """The local CLIP folder ``path`` (or ``$VISIONLENS_CLIP``), checked without loading it: a
    save_pretrained folder whose config.json declares a CLIP model."""
    folder = model_dir(path, "CLIP", "VISIONLENS_CLIP", "openai/clip-vit-base-patch32")
    require_model_type(folder, "CLIP", CLIP_MODEL_TYPES)
    return folder

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFClipEncoder:
    def __init__(self, path: str | Path | None = None, masked_blocks: int = 3, device: str = "cpu"):
        tf = require_transformers()
        self.path = clip_dir(path)
        with loading("CLIP", self.path):
            model, info = tf.CLIPModel.from_pretrained(self.path, local_files_only=True, output_loading_info=True)
        self.model = model.eval().to(device)
        missing = list((info or {}).get("missing_keys") or [])
        if missing:  # transformers' own report is silenced (dozens of lines): one line says it instead
            import warnings

            from visionlens.errors import VisionlensWarning

            warnings.warn(f"the CLIP weights in {self.path} lack {len(missing)} tensor(s) (e.g. {sorted(missing)[0]}), "
                          "which are randomly initialised", VisionlensWarning, stacklevel=2)
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as err:
            reason = " ".join(str(err).split())[:200]
            raise InputError(f"no tokenizer files in {self.path} (save the CLIP tokenizer there too): {reason}") from None
        self.device, self.k = device, int(masked_blocks)
        cfg = self.path / "preprocessor_config.json"
        pre = json.loads(cfg.read_text()) if cfg.is_file() else {}
        self.mean = torch.tensor(pre.get("image_mean", OPENAI_MEAN)).view(3, 1, 1)
        self.std = torch.tensor(pre.get("image_std", OPENAI_STD)).view(3, 1, 1)
        vc = self.model.config.vision_config
        self.size, self.patch = int(vc.image_size), int(vc.patch_size)
        self.name = f"hf-clip:{self.path.name}"
        self.identity = f"hf-clip:{weights_identity(self.path)}:k={self.k}"

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    @torch.no_grad()
    def global_features(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        vm = self.model.vision_model
        x = F.interpolate(image[None].float(), size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(0, 1)
        h = vm.pre_layrnorm(vm.embeddings(self._normalise(x).to(self.device)))
        layers = vm.encoder.layers
        split = max(0, len(layers) - self.k)
        for layer in layers[:split]:
            h = _features_tensor(layer(h, None))
        g = self.size // self.patch
        grid = F.interpolate(masks[:, None].float(), size=(g, g), mode="area").flatten(1).to(h)  # (N, g*g)
        weights = torch.cat([torch.ones(len(masks), 1).to(h), grid], 1)[:, :, None]
        h = h.expand(len(masks), -1, -1)
        for layer in layers[split:]:
            h = _features_tensor(layer(h * weights, None))
        return self.model.visual_projection(vm.post_layernorm(h[:, 0]))

    @torch.no_grad()
    def local_features(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        from .toy_vlm import _box_grids

        n, hgt, wid = masks.shape
        filled = torch.where(masks[:, None], image[None].float(), self.mean[None])
        m = masks.float()
        ys, xs = torch.arange(hgt, dtype=torch.float32), torch.arange(wid, dtype=torch.float32)
        rows, cols = m.amax(2) > 0, m.amax(1) > 0
        y0, y1 = torch.where(rows, ys, 1e9).amin(1), torch.where(rows, ys, -1e9).amax(1)
        x0, x1 = torch.where(cols, xs, 1e9).amin(1), torch.where(cols, xs, -1e9).amax(1)
        side = torch.maximum(x1 - x0, y1 - y0) * 1.1 + 2
        boxes = torch.stack([(x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2, side], 1)
        crops = F.grid_sample(filled, _box_grids(boxes, self.size, hgt, wid), align_corners=False,
                              padding_mode="border")
        return _features(self.model.get_image_features(pixel_values=self._normalise(crops).to(self.device)))

    def encode_regions(self, image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks = torch.as_tensor(masks).bool()
        if image.ndim != 3 or masks.ndim != 3 or masks.shape[1:] != image.shape[1:] or not masks.flatten(1).any(1).all():
            raise InputError(f"expected image (3, H, W) and non-empty masks (N, H, W) of its size, got "
                             f"{tuple(image.shape)} and {tuple(masks.shape)}")
        return (F.normalize(self.global_features(image, masks).cpu(), dim=-1),
                F.normalize(self.local_features(image, masks).cpu(), dim=-1))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        max_len = int(self.model.config.text_config.max_position_embeddings)
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device))
        return F.normalize(_features(out).cpu(), dim=-1)


def _features_tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out
