"""Helpers shared by test modules (import them from here, not from conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def one_error_line(err: str, *names: str) -> str:
    """The single ``error:`` line a command printed on stderr (asserting that there is one, that
    it names every one of ``names``, and no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def json_error_line(response, status: int, *words: str) -> str:
    """The one-line ``{"error": ...}`` of an HTTP ``response`` with ``status`` (asserting it names
    every one of ``words``, on one line, without a traceback)."""
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, message
    return message


def strict_json(text: str):
    """Parse ``text`` as strict JSON: a bare NaN or Infinity fails the test."""
    def refuse(token):
        raise AssertionError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


class TinyGapNet(nn.Module):
    """conv-bn-relu x2 -> GAP -> linear: the setting where CAM is defined."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def labelled_folder(folder, photos) -> str:
    """Copy sample ImageNet photos (named ``..._<class index>``) into ``folder`` with the
    ``labels.csv`` that `visionlens evaluate --data FOLDER` reads; returns the folder."""
    folder.mkdir()
    rows = ["file,class_index"]
    for p in photos:
        (folder / p.name).write_bytes(p.read_bytes())
        rows.append(f"{p.name},{int(p.stem.rsplit('_', 1)[1])}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return str(folder)


def snapshot(model: nn.Module) -> dict:
    """Everything a call must leave unchanged: modes, flags, hooks, parameters and buffers."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [
            sum(len(getattr(m, d, {})) for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                  "_backward_pre_hooks", "_forward_hooks_with_kwargs"))
            for m in model.modules()
        ],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k


def kill_after_records(cmd: list[str], results: Path, records: int = 4, timeout: float = 60.0) -> None:
    """Run ``cmd`` in a subprocess and SIGKILL it once ``results`` holds ``records`` lines (a driver
    killed mid-run); asserts that it was still running then."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= records:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def save_world_images(x: torch.Tensor, folder: Path, n: int = 2) -> list[str]:
    """The first ``n`` synthetic-world images of ``x`` (normalised with mean = std = 0.5) as PNG
    files in ``folder``; their paths."""
    import numpy as np
    from PIL import Image

    files = []
    for i in range(n):
        path = Path(folder) / f"img{i}.png"
        pixels = ((x[i] * 0.5 + 0.5).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(path)
        files.append(str(path))
    return files

