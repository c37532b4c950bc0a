"""Screenshots of the HTML pages in a real headless browser (Debian's ``chromium``; this script
installs nothing): the demo page, the pair page, the retrieve page and the report card, each made by
running the real commands on the bundled photos and zoo models into a temporary folder.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--full-demo]

By default the demo page is `visionlens explain` with the demo's methods (CAM, Grad-CAM and
Relevance-CAM at an intermediate and the last layer) on six labelled photos, two of which
mobilenet_v2 gets wrong; ``--full-demo`` runs `visionlens demo` itself (minutes on a small CPU).
The report card comes from `visionlens evaluate` on 12 synthetic-world images. Pages are taken at
1,400 x 1,000 pixels; the pair page also at 900 pixels wide, to show its pictures wrapping. For each
page the script prints the width its content needs (the browser's scrollWidth), which is at most the
window's width when nothing overflows.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_METHODS = "cam,gradcam,relevance-cam@features.13,relevance-cam@features"
DEMO_PHOTOS = ("imagenet_00_243", "imagenet_01_559", "imagenet_07_609", "imagenet_14_129", "imagenet_03_990",
               "imagenet_05_853")


def visionlens(*args: str) -> None:
    """Run one `visionlens` command (this interpreter's package), stopping on failure."""
    cmd = [sys.executable, "-m", "visionlens", *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"error: `visionlens {' '.join(args[:1])}` failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    print(f"  visionlens {args[0]}: {time.perf_counter() - start:.0f} s")


def screenshot(browser: str, page: Path, dest: Path, width: int = 1400, height: int = 1000) -> None:
    """``page`` as the browser shows it in a ``width`` x ``height`` window, saved to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no state from earlier runs
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--screenshot={dest}", f"--window-size={width},{height}",
                        page.resolve().as_uri()], capture_output=True, check=True, timeout=120)
    print(f"  {dest} ({width}x{height})")


def page_width(browser: str, page: Path, width: int) -> int:
    """The width the page's content needs in a ``width``-pixel window (its scrollWidth), measured on a
    copy of the page (in the same temporary folder) with a line of script added."""
    probe = page.with_name(f"_width_{page.name}")
    script = "<script>document.body.dataset.scrollWidth = document.documentElement.scrollWidth;</script>"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              f"--window-size={width},1000", "--dump-dom", probe.resolve().as_uri()],
                             capture_output=True, text=True, check=True, timeout=120).stdout
    found = re.search(r'data-scroll-width="(\d+)"', dom)
    if found is None:
        sys.exit(f"error: could not measure {page}")
    return int(found.group(1))


def make_pages(work: Path, full_demo: bool) -> dict[str, Path]:
    """Run the commands into ``work``; the page of each."""
    from visionlens.data.samples import sample_images

    photos = {p.stem: p for p in sample_images("all")}
    device = ["--device", "cpu", "--quiet"]
    if full_demo:
        visionlens("demo", "--out", str(work / "demo"), *device)
    else:
        visionlens("explain", *(str(photos[s]) for s in DEMO_PHOTOS), "--model", "mobilenet_v2", "--method",
                   DEMO_METHODS, "--out", str(work / "demo"), *device)
    query, match = photos["imagenet_00_243"], photos["imagenet_03_990"]
    visionlens("explain-pair", str(query), str(match), "--method", "sfam,gradcam,relevance-cam", "--out",
               str(work / "pair"), "--device", "cpu")
    gallery = work / "gallery"
    gallery.mkdir()
    for stem in list(photos)[:8]:
        shutil.copy(photos[stem], gallery / photos[stem].name)
    visionlens("retrieve", str(gallery / query.name), "--gallery", str(gallery), "--top", "3", "--method",
               "sfam,gradcam", "--no-cache", "--out", str(work / "retrieve"), *device)
    visionlens("evaluate", "--models", "world-cnn", "--methods", "gradcam,eigencam,cam", "--data", "world:test",
               "--n", "12", "--batch-size", "4", "--step", "1024", "--metrics",
               "deletion,insertion,pointing-game,relevance-mass", "--out", str(work / "report"), *device)
    return {name: work / name / "index.html" for name in ("demo", "pair", "retrieve", "report")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/screenshots", help="folder of the PNG screenshots")
    parser.add_argument("--full-demo", action="store_true", help="run `visionlens demo` itself (slow)")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("error: no chromium found; install Debian's with `apt-get install -y chromium`")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="visionlens-screens-") as tmp:
        pages = make_pages(Path(tmp), args.full_demo)
        missing = [str(p) for p in pages.values() if not p.is_file()]
        if missing:
            sys.exit(f"error: pages not written (is Jinja2 installed? pip install 'visionlens[cli]'): {', '.join(missing)}")
        for name, page in pages.items():
            # the report card's curves are under its tables and overlays: a taller window shows them
            screenshot(browser, page, out / f"{name}.png", height=2600 if name == "report" else 1000)
            print(f"  {name}: content width {page_width(browser, page, 1400)} px in a 1400 px window")
        screenshot(browser, pages["pair"], out / "pair-900.png", width=900)
        print(f"  pair: content width {page_width(browser, pages['pair'], 900)} px in a 900 px window")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
