"""Score-CAM (Wang et al., CVPRW 2020): each channel, upsampled and min-max normalised, masks the
input; the channel's weight is the target score of the masked image, softmax-normalised over
channels. No gradients.

Formula choices (as pytorch-grad-cam): masks upsampled with ``align_corners=True`` bilinear, the
score is the target logit (not the softmax probability), ``softmax`` over channels. The masked
inputs are never materialised all at once: they are built and scored ``batch_size`` at a time
(across images and channels), so peak memory is bounded by ``batch_size``. Constant channels
(all-zero masks) share one forward pass per image. With ``inference_copy`` (the default) the
masked images are scored by the fastest checked copy of the model
(:func:`visionlens.core.inference.fastest_checked_copy`: BatchNorm folded, channels-last or not,
used only when it matches the model on the input, chosen once per model and kept), equal to the
model within float rounding. ``batch_size`` None (the default) takes the device's memory bound
(:func:`visionlens.core.inference.batch_bound`); on a CPU the size within it is found by timing
the real passes (:class:`visionlens.core.inference.BatchSizer`, from 4 images up). With
``compile=True`` the folded copy is also compiled with ``torch.compile`` for batches of
``batch_size`` (64 when None; checked the same way, built once per model and reused across calls;
the first call pays the compilation).
``benchmarks/perturbation_floor.py`` times it against pytorch-grad-cam and the masked passes alone.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..core.hooks import ActivationCapture
from ..core.inference import BatchSizer, batch_bound, checked_inference_copy, fastest_checked_copy
from ..core.targets import ClassTargets
from .base import PerturbationMethod

EPS = 1e-8
FIRST_BATCH = 4  # masked images in the first timed pass on a CPU (a whole-model pass: few images can be fastest)


class ScoreCAM(PerturbationMethod):
    name = "scorecam"

    def __init__(self, model, layer=None, batch_size: int | None = None, inference_copy: bool = True,
                 compile: bool = False):
        super().__init__(model, layer, 64 if batch_size is None else batch_size)
        self.batch_size = batch_size  # None: the memory bound, found on the first call
        self.inference_copy = inference_copy
        self.compile = compile
        self._sizers: dict = {}  # (scorer, image size) -> its batch sizer, kept across calls

    def _scorer(self, x: torch.Tensor, capture: ActivationCapture, jobs: int) -> tuple[torch.nn.Module, BatchSizer]:
        """The module that scores the masked images, and its batch sizer for ``jobs`` of them (on a
        CPU timed from :data:`FIRST_BATCH`, kept per scorer and image size; see :class:`BatchSizer`)."""
        with capture.paused():
            if self.inference_copy and self.compile:
                batch = self.batch_size or 64
                return checked_inference_copy(self.model, x[:4], compile_batch=batch)[0], BatchSizer(batch, False)
            scorer = self.model
            if self.inference_copy:
                scorer = fastest_checked_copy(self.model, x, self.batch_size or 64)[0]
            key = (id(scorer), tuple(x.shape[1:]))
            if key not in self._sizers:  # sized for the first call's count: later calls differ a little
                bound = min(self.batch_size or batch_bound(scorer, x), jobs)
                timed = self.batch_size is None and x.device.type == "cpu"
                self._sizers = {key: BatchSizer(bound, timed, first=FIRST_BATCH)}
        return scorer, self._sizers[key]

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
        if len(jobs) > b:  # worth a copy: more masked passes than images
            scorer, sizer = self._scorer(x, capture, len(jobs))
        else:
            scorer, sizer = self.model, BatchSizer(self.batch_size or 64, timed=False)
        job_scores = torch.empty(len(jobs), device=activation.device)
        start = 0
        while start < len(jobs):
            size = sizer.next()
            clock = time.perf_counter()
            chunk = jobs[start:start + size]
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
            sizer.record(size, len(chunk), time.perf_counter() - clock)
            start += len(chunk)
        scores[varying] = job_scores[:len(varying)]
        blank_score = torch.zeros(b, device=activation.device)
        blank_score[blank_images] = job_scores[len(varying):]
        scores = torch.where(constant, blank_score.repeat_interleave(k), scores)
        return torch.softmax(scores.view(b, k), dim=1)
