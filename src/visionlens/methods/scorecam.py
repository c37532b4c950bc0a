"""Score-CAM (Wang et al., CVPRW 2020): each channel, upsampled and min-max normalised, masks the
input; the channel's weight is the target score of the masked image, softmax-normalised over
channels. No gradients.

Formula choices (as pytorch-grad-cam): masks upsampled with ``align_corners=True`` bilinear, the
score is the target logit (not the softmax probability), ``softmax`` over channels. The masked
inputs are never materialised all at once: they are built and scored ``batch_size`` at a time
(across images and channels), so peak memory is bounded by ``batch_size``. Constant channels
(all-zero masks) share one forward pass per image. With ``inference_copy`` (the default) the
masked images are scored by a BatchNorm-folded, channels-last copy of the model
(:mod:`visionlens.core.inference`), used only when it matches the model on the input: faster on
CPU (``benchmarks/cam_speed.py --tables scorecam``), and equal to the model within float rounding.
With ``compile=True`` that copy is also compiled with ``torch.compile`` for batches of
``batch_size`` (checked the same way, built once per model and reused across calls; the first call
pays the compilation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.hooks import ActivationCapture
from ..core.inference import checked_inference_copy
from ..core.targets import ClassTargets
from .base import PerturbationMethod

EPS = 1e-8


class ScoreCAM(PerturbationMethod):
    name = "scorecam"

    def __init__(self, model, layer=None, batch_size: int = 64, inference_copy: bool = True, compile: bool = False):
        super().__init__(model, layer, batch_size)
        self.inference_copy = inference_copy
        self.compile = compile

    def channel_weights(self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor,
                        capture: ActivationCapture) -> torch.Tensor:
        x, target = capture.inputs, capture.target
        x = x.to(activation.device)
        b, k = activation.shape[:2]
        scores = torch.empty(b * k, device=activation.device)
        # A constant channel gives an all-zero mask, so every such channel of an image scores the
        # same blank input: score it once per image and share the result (exact, and often most
        # channels after a ReLU).
        flat = activation.flatten(2)
        constant = (flat.amax(dim=2) == flat.amin(dim=2)).flatten()
        varying = (~constant).nonzero()[:, 0]
        blank_images = constant.view(b, k).any(dim=1).nonzero()[:, 0]
        jobs = torch.cat([varying, blank_images * k + constant.view(b, k).float().argmax(dim=1)[blank_images]])
        scorer = self.model
        if self.inference_copy and len(jobs) > b:  # worth a copy: more masked passes than images
            with capture.paused():
                scorer = checked_inference_copy(self.model, x[:4],
                                                compile_batch=self.batch_size if self.compile else None)[0]
        job_scores = torch.empty(len(jobs), device=activation.device)
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            image, channel = chunk // k, chunk % k
            maps = activation[image, channel][:, None].float()
            up = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=True)
            low = up.amin(dim=(2, 3), keepdim=True)
            high = up.amax(dim=(2, 3), keepdim=True)
            up = (up - low) / (high - low + EPS)
            with capture.paused():
                out = scorer(x[image] * up.to(x.dtype))
            score = self.target_scores(out, image, targets, target)
            job_scores[start:start + len(chunk)] = score.float()
        scores[varying] = job_scores[:len(varying)]
        blank_score = torch.zeros(b, device=activation.device)
        blank_score[blank_images] = job_scores[len(varying):]
        scores = torch.where(constant, blank_score.repeat_interleave(k), scores)
        return torch.softmax(scores.view(b, k), dim=1)
