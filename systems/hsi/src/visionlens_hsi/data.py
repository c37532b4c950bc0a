"""Bi-temporal hyperspectral scenes: ``.mat`` loaders, shared min-max normalisation, symmetric
padding, difference-ready patch pairs and the stratified training split (SpectralKAN §4.2).

Labels everywhere are ``1`` changed, ``0`` unchanged, ``-1`` unknown (excluded from train and test).
The reference code uses class 0 = changed; only the naming differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visionlens.errors import InputError

CHANGED, UNCHANGED, UNKNOWN = 1, 0, -1


@dataclass(frozen=True)
class MatLayout:
    """Where one public dataset keeps its arrays, and how its label codes map to ours."""

    t1: tuple[str, str]                 # (file name, variable)
    t2: tuple[str, str]
    label: tuple[str, str]
    changed: int
    unchanged: int


# The files as distributed with the public HSI change-detection benchmarks (and read by the
# SpectralKAN reference code); other label codes are "unknown".
DATASETS: dict[str, MatLayout] = {
    "farmland": MatLayout(("farm06.mat", "imgh"), ("farm07.mat", "imghl"), ("label.mat", "label"), 1, 0),
    "river": MatLayout(("river_before.mat", "river_before"), ("river_after.mat", "river_after"),
                       ("groundtruth.mat", "lakelabel_v1"), 255, 0),
    "usa": MatLayout(("USA_Change_Dataset.mat", "T1"), ("USA_Change_Dataset.mat", "T2"),
                     ("USA_Change_Dataset.mat", "Binary"), 1, 0),
    "bayarea": MatLayout(("Bay_Area_2013.mat", "HypeRvieW"), ("Bay_Area_2015.mat", "HypeRvieW"),
                         ("bayArea_gtChanges.mat", "HypeRvieW"), 1, 2),
    "barbara": MatLayout(("barbara_2013.mat", "HypeRvieW"), ("barbara_2014.mat", "HypeRvieW"),
                         ("barbara_gtChanges.mat", "HypeRvieW"), 1, 2),
}
DATASETS["hermiston"] = DATASETS["usa"]
DATASETS["santabarbara"] = DATASETS["barbara"]


@dataclass
class Scene:
    """Two co-registered ``(H, W, bands)`` images and an ``(H, W)`` label map (1 / 0 / -1)."""

    t1: np.ndarray
    t2: np.ndarray
    labels: np.ndarray
    name: str = "scene"

    def __post_init__(self):
        if self.t1.ndim != 3 or self.t1.shape != self.t2.shape:
            raise InputError(f"{self.name}: the two dates must be (H, W, bands) arrays of one shape, "
                             f"got {self.t1.shape} and {self.t2.shape}")
        if self.labels.shape != self.t1.shape[:2]:
            raise InputError(f"{self.name}: label map {self.labels.shape} does not match image size {self.t1.shape[:2]}")
        for date, cube in (("t1", self.t1), ("t2", self.t2)):
            _check_finite(cube, f"{self.name}: date {date}")

    @property
    def bands(self) -> int:
        return self.t1.shape[2]


def _check_finite(cube: np.ndarray, what: str) -> None:
    """An :class:`InputError` naming ``what`` and the count when a cube holds NaN or infinite values."""
    bad = int(cube.size - np.count_nonzero(np.isfinite(cube)))
    if bad:
        raise InputError(f"{what} holds {bad} non-finite value(s) (NaN or Inf) out of {cube.size}: "
                         "fill or interpolate them before change detection")


def _read_cube(path: Path, key: str) -> np.ndarray:
    """A date's ``(H, W, bands)`` cube as float32, refused when it holds NaN or infinite values."""
    cube = _read_variable(path, key)
    if not np.issubdtype(cube.dtype, np.number) or np.iscomplexobj(cube):
        raise InputError(f"{path}: variable {key!r} is not a real numeric array (dtype {cube.dtype})")
    cube = cube.astype(np.float32)
    _check_finite(cube, f"{path}: variable {key!r}")
    return cube


def _read_variable(path: Path, key: str) -> np.ndarray:
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("reading .mat files needs scipy (a dependency of visionlens-hsi): pip install scipy") from exc
    if not path.is_file():
        raise InputError(f"missing file {path}: point --data at the folder holding the dataset's .mat files")
    try:
        content = loadmat(str(path))
    except Exception as exc:
        raise InputError(f"cannot read {path} as a MATLAB .mat file ({type(exc).__name__})") from exc
    if key not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise InputError(f"{path.name} has no variable {key!r} (found {found}): is this the right dataset?")
    return np.asarray(content[key])


def load_dataset(name: str, folder) -> Scene:
    """Load Farmland, River, USA (Hermiston), Bay Area or Santa Barbara from its ``.mat`` files."""
    key = name.lower().replace("_", "").replace("-", "").replace(" ", "")
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}: use one of {', '.join(sorted(DATASETS))}")
    layout, folder = DATASETS[key], Path(folder)
    t1 = _read_cube(folder / layout.t1[0], layout.t1[1])
    t2 = _read_cube(folder / layout.t2[0], layout.t2[1])
    raw = _read_variable(folder / layout.label[0], layout.label[1])
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    labels = np.full(raw.shape, UNKNOWN, dtype=np.int64)
    labels[raw == layout.changed] = CHANGED
    labels[raw == layout.unchanged] = UNCHANGED
    return Scene(t1, t2, labels, name=key)


def normalize_pair(t1: np.ndarray, t2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band min-max with the min and max shared by both dates (constant bands become 0)."""
    both = np.stack([t1, t2]).astype(np.float32)
    lo = both.min(axis=(0, 1, 2))
    span = both.max(axis=(0, 1, 2)) - lo
    span[span == 0] = 1.0
    both = (both - lo) / span
    return both[0], both[1]


def symmetric_indices(n: int, pad: int) -> np.ndarray:
    """Indices of a length-``n`` axis mirror-padded by ``pad`` (edge repeated, like numpy 'symmetric')."""
    if pad > n:
        raise InputError(f"patch radius {pad} is larger than the image side {n}")
    return np.concatenate([np.arange(pad)[::-1], np.arange(n), np.arange(n - 1, n - 1 - pad, -1)])


def symmetric_pad(cube: np.ndarray, pad: int) -> np.ndarray:
    """Mirror-pad the first two axes of an ``(H, W, ...)`` array."""
    return cube[symmetric_indices(cube.shape[0], pad)][:, symmetric_indices(cube.shape[1], pad)]


class PatchPairs:
    """Normalised, padded dates; ``patches(rows, cols)`` -> ``(N, 2, bands, p*p)`` float32."""

    def __init__(self, scene: Scene, patch: int = 5):
        if patch < 1 or patch % 2 == 0:
            raise InputError(f"patch size must be odd and positive, got {patch}")
        self.patch, self.radius = patch, patch // 2
        a, b = normalize_pair(scene.t1, scene.t2)
        self.cube = torch.from_numpy(np.stack([symmetric_pad(a, self.radius), symmetric_pad(b, self.radius)]))
        dy, dx = np.meshgrid(np.arange(patch), np.arange(patch), indexing="ij")
        self._dy, self._dx = torch.from_numpy(dy.ravel()), torch.from_numpy(dx.ravel())

    def patches(self, rows, cols) -> torch.Tensor:
        rows, cols = torch.as_tensor(rows).long(), torch.as_tensor(cols).long()
        rr = rows[:, None] + self._dy                                       # top-left of the padded window
        cc = cols[:, None] + self._dx
        return self.cube[:, rr, cc, :].permute(1, 0, 3, 2).contiguous()   # (N, 2, bands, p*p)

    def differences(self, rows, cols) -> torch.Tensor:
        """Difference patches ``D = X1 - X2``: ``(N, bands, p*p)``."""
        pair = self.patches(rows, cols)
        return pair[:, 0] - pair[:, 1]


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0):
    """``floor(fraction * n_c)`` random pixels of each class for training, the other labelled pixels for test.

    Returns ``(train, test)``: ``(N, 2)`` arrays of (row, col), classes in the order unchanged, changed.
    """
    if not 0 < fraction < 1:
        raise InputError(f"training fraction must be in (0, 1), got {fraction}")
    rng = np.random.RandomState(seed)
    train, test = [], []
    for cls in (UNCHANGED, CHANGED):
        pos = np.argwhere(labels == cls)
        k = int(pos.shape[0] * fraction)
        if pos.shape[0] == 0:
            name = "changed" if cls else "unchanged"
            raise InputError(f"the label map has no {name} pixel (class {cls}): a change detector needs labelled "
                             f"pixels of both classes; check the ground-truth file (or the --dataset layout)")
        if k == 0:
            raise InputError(f"a {fraction:g} split leaves no training pixel of class "
                             f"{'changed' if cls else 'unchanged'} ({pos.shape[0]} labelled): raise --train-fraction")
        chosen = np.zeros(pos.shape[0], dtype=bool)
        chosen[rng.choice(pos.shape[0], k, replace=False)] = True
        train.append(pos[chosen])
        test.append(pos[~chosen])
    return np.concatenate(train), np.concatenate(test)
