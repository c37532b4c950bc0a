"""The papers' training schedules as presets (``visionlens adapt --preset NAME``).

Every value comes from the authors' public code, read at the commit named in ``SOURCES``; the
file and setting are in the comment beside it. ProULearn has no public code, so it has no preset.

Mapping to this harness: the source stage trains the backbone at ``source.lr`` and the bottleneck
(and a linear head) at ``source.lr * bottleneck_lr_mult``; the target stage trains the backbone and
attention at ``adapt.lr * lr_encoder`` and the bottleneck at ``adapt.lr * bottleneck_lr_mult``.
Deviation in every preset: the references resize to 256 and crop 224 at random (SHOT also flips);
here images are resized to 224 and shifted by up to 16 px (``shift_pixels``), with no flip.
"""

from __future__ import annotations

from visionlens.errors import InputError

SOURCES = {
    "shot": "tim-learn/SHOT at f7d555a: object/image_source.py, object/image_target.py, readme.md",
    "eianet": "zichengpan/EIANet at 34fb3f4: src_pretrain.py, tar_adapt.py, office31.sh, office_home.sh",
}

PRESETS = {
    "shot": {
        "run": {"backbone": "resnet50", "size": 224, "bottleneck": 256},  # image_source.py --net, --bottleneck
        # image_source.py: --max_epoch 20, --batch_size 64, --lr 1e-2 with the backbone at lr * 0.1 and the
        # bottleneck at lr; lr_scheduler: (1 + 10 p) ** -0.75, weight decay 1e-3, momentum 0.9, Nesterov; --smooth 0.1
        "source": {"epochs": 20, "batch_size": 64, "lr": 1e-3, "bottleneck_lr_mult": 10.0, "weight_decay": 1e-3,
                   "momentum": 0.9, "smoothing": 0.1, "schedule": "shot", "shift_pixels": 16},
        # image_target.py: --max_epoch 15, --batch_size 64, --lr 1e-2, --lr_decay1 0.1 (backbone),
        # --lr_decay2 1.0 (bottleneck), the same scheduler and weight decay
        "adapt": {"epochs": 15, "batch_size": 64, "lr": 1e-2, "lr_encoder": 0.1, "bottleneck_lr_mult": 1.0,
                  "weight_decay": 1e-3, "momentum": 0.9, "schedule": "shot", "shift_pixels": 16},
        "datasets": {
            "office31": {"source": {"epochs": 100}},  # readme.md: image_source.py --dset office --max_epoch 100
            # readme.md: --net resnet101 --lr 1e-3 --max_epoch 10 (source) and --lr 1e-3 (target) on VISDA-C
            "visda": {"run": {"backbone": "resnet101"}, "source": {"epochs": 10, "lr": 1e-4}, "adapt": {"lr": 1e-3}},
        },
    },
    "eianet": {
        "run": {"backbone": "resnet50", "size": 224, "bottleneck": 256, "temperature": 0.01},  # network.py, tar_adapt.py
        # src_pretrain.py: --max_epoch 20, --batch_size 64, --lr 1e-3, bottleneck and BN at lr * 10, SGD momentum
        # 0.9, weight decay 5e-4, Nesterov, no scheduler; --smooth 0.1
        "source": {"epochs": 20, "batch_size": 64, "lr": 1e-3, "bottleneck_lr_mult": 10.0, "weight_decay": 5e-4,
                   "momentum": 0.9, "smoothing": 0.1, "schedule": "constant", "shift_pixels": 16},
        # tar_adapt.py: --max_epoch 60, --batch_size 108, --lr 1e-3, --lr_encoder 0.2, bottleneck and BN at
        # lr * 2; its lr_scheduler is defined but never called (constant rate)
        "adapt": {"epochs": 60, "batch_size": 108, "lr": 1e-3, "lr_encoder": 0.2, "bottleneck_lr_mult": 2.0,
                  "weight_decay": 5e-4, "momentum": 0.9, "schedule": "constant", "shift_pixels": 16},
        "datasets": {
            "office31": {"run": {"temperature": 0.1}},  # office31.sh: --temperature 0.1
            "officehome": {"adapt": {"batch_size": 128, "lr_encoder": 0.5}},  # office_home.sh
        },
    },
}
NO_PRESET = {"proulearn": "ProULearn (arXiv:2501.13517) has no public code, so its schedule is unknown"}


def preset(name: str, data: str) -> dict:
    """``{"run": ..., "source": ..., "adapt": ...}`` of preset ``name`` for dataset ``data``."""
    if name in NO_PRESET:
        raise InputError(f"no preset '{name}': {NO_PRESET[name]}; use --preset {' or '.join(PRESETS)}")
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    base = PRESETS[name]
    extra = base["datasets"].get(data, {})
    return {part: {**base[part], **extra.get(part, {})} for part in ("run", "source", "adapt")}
