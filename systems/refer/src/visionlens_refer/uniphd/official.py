"""Load a checkpoint of the released UniPHD code into our model by a hand-written key map.

Names follow bo-miao/RefHuman at commit 8fdb041 (``models/uniphd/uniphd.py``, ``transformer.py``,
``transformer_deformable.py``, ``segmentation.py``, ``decoder.py``, ``text_encoder/text_encoder.py``,
``backbones/backbone.py``). Its Swin module file is not in that snapshot; its keys are taken to be
those of the Swin detection code it is built from (``layers.i.blocks.j.*``, patch merging at the end
of stage ``i``, per-output ``norm0..norm3``). Our model must be built with the same sizes
(``UniPHDConfig.paper``). Deliberate differences, all in values and none in names:

* the class heads: the official ``Linear(d, 2)`` scores 2 classes with sigmoid; the person is label 1
  (``category_id``), so its row 1 becomes our single logit (the encoder's top-k selection there takes
  the max of both rows);
* timm's Swin starts stage ``i + 1`` with the patch merging that ends stage ``i`` in the official
  Swin, so ``layers.i.downsample`` moves to ``layers.{i+1}``;
* fixed index buffers (``relative_position_index``, RoBERTa's ``position_ids``) are recomputed, not loaded;
* ``transformer.decoder.{class,bbox,pose}_embed`` are the same modules as the top-level heads, saved
  twice; they are checked equal and loaded once.

The forward passes are not claimed to match the official code's numerically: ours is a re-implementation
(pure-PyTorch deformable attention, our sine temperature, no ReLU before the mask refinement's first conv).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from visionlens.errors import InputError

PERSON_ROW = 1
ROW_SELECTED = ("class_heads.", "enc_class.")

# (official pattern, our name): applied in order, the first match wins.
RULES = [
    (r"backbone\.0\.patch_embed\.(.+)", r"backbone.body.patch_embed.\1"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(.+)", r"backbone.body.layers.\1.blocks.\2"),
    (r"backbone\.0\.layers\.(\d+)\.downsample\.(.+)", "downsample"),          # index shifted below
    (r"backbone\.0\.norm(\d)\.(weight|bias)", r"backbone.out_norms.\1.\2"),
    (r"input_proj\.(.+)", r"input_proj.\1"),
    (r"text_encoder\.text_backbone\.(.+)", r"text_prompt.text_encoder.text_backbone.\1"),
    (r"text_proj\.fc\.(.+)", r"text_prompt.word_proj.0.\1"),
    (r"text_proj\.layer_norm\.(.+)", r"text_prompt.word_proj.1.\1"),
    (r"sentence_proj\.fc\.(.+)", r"text_prompt.sentence_proj.0.\1"),
    (r"sentence_proj\.layer_norm\.(.+)", r"text_prompt.sentence_proj.1.\1"),
    (r"prompt_proj\.fc\.(.+)", r"position_prompt.token_proj.0.\1"),
    (r"prompt_proj\.layer_norm\.(.+)", r"position_prompt.token_proj.1.\1"),
    (r"glob_prompt_proj\.fc\.(.+)", r"position_prompt.sentence_proj.0.\1"),
    (r"glob_prompt_proj\.layer_norm\.(.+)", r"position_prompt.sentence_proj.1.\1"),
    (r"fusion_module\.multihead_attn\.(.+)", r"fusion.text_attn.\1"),
    (r"fusion_module\.multihead_attn2\.(.+)", r"fusion.position_attn.\1"),
    (r"transformer\.level_embed", "level_embed"),
    (r"transformer\.keypoint_embedding\.weight", "keypoint_embed"),
    (r"transformer\.enc_output\.(.+)", r"enc_output.0.\1"),
    (r"transformer\.enc_output_norm\.(.+)", r"enc_output.1.\1"),
    (r"transformer\.enc_out_class_embed\.(.+)", r"enc_class.\1"),
    (r"transformer\.enc_pose_embed\.layers\.(.+)", r"enc_keypoints.layers.\1"),
    (r"transformer\.encoder\.layers\.(\d+)\.(self_attn|norm1)\.(.+)", r"encoder.\1.\2.\3"),
    (r"transformer\.encoder\.layers\.(\d+)\.(linear1|linear2)\.(.+)", r"encoder.\1.ffn.\2.\3"),
    (r"transformer\.encoder\.layers\.(\d+)\.norm2\.(.+)", r"encoder.\1.ffn.norm.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.(across_attn|cross_attn|within_attn)\.(.+)", r"decoder.\1.\2.\3"),
    (r"transformer\.decoder\.layers\.(\d+)\.adjacent_matrix", r"decoder.\1.adjacent_matrix"),
    (r"transformer\.decoder\.layers\.(\d+)\.across_norm\.(.+)", r"decoder.\1.norm_across.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm1\.(.+)", r"decoder.\1.norm_cross.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.within_norm\.(.+)", r"decoder.\1.norm_within.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.(linear1|linear2)\.(.+)", r"decoder.\1.ffn1.\2.\3"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm2\.(.+)", r"decoder.\1.ffn1.norm.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.(linear1|linear2)_\.(.+)", r"decoder.\1.ffn2.\2.\3"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm2_\.(.+)", r"decoder.\1.ffn2.norm.\2"),
    (r"transformer\.decoder\.half_pose_ref_point_head\.layers\.(.+)", r"query_pos.layers.\1"),
    (r"class_embed\.(\d+)\.(.+)", r"class_heads.\1.\2"),
    (r"bbox_embed\.(\d+)\.layers\.(.+)", r"box_heads.\1.layers.\2"),
    (r"pose_embed\.(\d+)\.layers\.(.+)", r"keypoint_heads.\1.layers.\2"),
    (r"pose_visi_embed\.(\d+)\.(.+)", r"visibility_heads.\1.\2"),
    (r"controller\.layers\.(.+)", r"mask_head.controller.layers.\1"),
    (r"mask_refine\.conv1_1div8\.(.+)", r"mask_head.mask_refine.s8.0.\1"),
    (r"mask_refine\.conv2_1div8\.(.+)", r"mask_head.mask_refine.s8.2.\1"),
    (r"mask_refine\.conv1_1div4\.(.+)", r"mask_head.mask_refine.s4.0.\1"),
    (r"mask_refine\.conv2_1div4\.(.+)", r"mask_head.mask_refine.s4.2.\1"),
]
RECOMPUTED = re.compile(r".*(relative_position_index|position_ids|attn_mask)$")
ALIAS = re.compile(r"transformer\.decoder\.(class_embed|bbox_embed|pose_embed)\.(.+)")


@dataclass
class KeyReport:
    """What a conversion did: official key -> our key for each loaded tensor, and what it left out."""

    loaded: dict = field(default_factory=dict)
    unmapped: list = field(default_factory=list)        # official keys no rule covers
    recomputed: list = field(default_factory=list)      # fixed index buffers, rebuilt by our modules
    aliases: list = field(default_factory=list)         # second copies of the top-level heads
    kept_at_init: list = field(default_factory=list)    # our tensors the checkpoint does not hold

    def line(self) -> str:
        """The report as one line."""
        def names(keys):
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.unmapped:
            parts.append(f"unmapped official keys ({len(self.unmapped)}): {names(self.unmapped)}")
        if self.kept_at_init:
            parts.append(f"kept at their initial values ({len(self.kept_at_init)}): {names(self.kept_at_init)}")
        parts.append(f"{len(self.recomputed)} index buffers recomputed, {len(self.aliases)} aliases skipped")
        return "; ".join(parts)


def our_name(key: str) -> str | None:
    """Our parameter name for an official key (None when no rule covers it)."""
    for pattern, target in RULES:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        if target == "downsample":                                   # end of stage i -> start of stage i + 1
            return f"backbone.body.layers.{int(match.group(1)) + 1}.downsample.{match.group(2)}"
        return match.expand(target)
    return None


def unwrap(blob) -> dict:
    """The state dict of an official checkpoint (``{"model": ...}`` as main.py saves it; ``module.`` stripped)."""
    state = blob.get("model", blob) if isinstance(blob, dict) else blob
    if not isinstance(state, dict) or not state:
        raise InputError("not a UniPHD checkpoint: expected a state dict or {'model': state dict}")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _fit(key: str, target: str, tensor: torch.Tensor, ours: torch.Tensor) -> torch.Tensor:
    if target.startswith(ROW_SELECTED) and tensor.dim() >= 1 and tensor.shape[0] == 2 and ours.shape[0] == 1:
        tensor = tensor[PERSON_ROW:PERSON_ROW + 1]
    if tuple(tensor.shape) != tuple(ours.shape):
        raise InputError(f"official {key} has shape {tuple(tensor.shape)} but our {target} has {tuple(ours.shape)}: "
                         "build the model with UniPHDConfig.paper(...) (or the sizes the checkpoint was trained with)")
    return tensor.detach().to(ours.dtype)


def convert(state: dict, model) -> tuple[dict, KeyReport]:
    """Official state dict -> ``(our state dict, report)`` for ``model`` (a :class:`UniPHD` of matching sizes)."""
    ours_state, report, converted = model.state_dict(), KeyReport(), {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"official checkpoint entry {key!r} is not a tensor")
        if RECOMPUTED.match(key):
            report.recomputed.append(key)
            continue
        alias = ALIAS.fullmatch(key)
        if alias:
            _check_alias(state, key, alias)
            report.aliases.append(key)
            continue
        target = our_name(key)
        if target is None or target not in ours_state:
            report.unmapped.append(key)
            continue
        converted[target] = _fit(key, target, tensor, ours_state[target])
        report.loaded[key] = target
    report.kept_at_init = sorted(k for k in ours_state if k not in converted and not RECOMPUTED.match(k))
    return converted, report


def _check_alias(state: dict, key: str, alias) -> None:
    primary = f"{alias.group(1)}.{alias.group(2)}"
    if primary in state and not torch.equal(state[primary], state[key]):
        raise InputError(f"official {key} differs from {primary}: the checkpoint's head copies disagree")


def read_official(path) -> dict:
    """An official checkpoint read with ``weights_only=True``; the ``argparse.Namespace`` of its training
    arguments (``main.py`` saves ``{"model", "optimizer", "epoch", "args"}``) is the one extra type allowed."""
    import argparse

    from torch.serialization import safe_globals

    from visionlens.io import load_checkpoint

    with safe_globals([argparse.Namespace]):
        return load_checkpoint(path, "UniPHD checkpoint")


def load_official(model, blob) -> KeyReport:
    """Load an official checkpoint (already read with ``weights_only=True``) into ``model`` in place."""
    converted, report = convert(unwrap(blob), model)
    model.load_state_dict(converted, strict=False)
    return report
