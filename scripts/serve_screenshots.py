"""Screenshots of `visionlens serve`'s three views in headless Debian chromium (Playwright with
``executable_path``; nothing is downloaded), and the explorer's speed on this machine.

    .venv/bin/python scripts/serve_screenshots.py [--out docs/screenshots] [--repeats 5]

The explorer runs in this process on mobilenet_v2 and world-vit, with an images folder of bundled
sample photos plus four synthetic-world test images and a results folder holding a small
`visionlens evaluate` run (world-cnn, Grad-CAM and CAM, 8 images, deletion and insertion), all in a
temporary folder. It writes serve-explain.png, serve-flow.png, serve-similarity.png (two jeeps,
SFAM and both baselines), serve-similarity-gallery.png (a query against the images folder) and
serve-results.png (a clicked row's maps beside its curves) into --out, with serve-job.png (a
Score-CAM job's progress bar and Cancel button, cancelled after the picture), and prints two benchmarks
(medians over --repeats): the page load (until the layer list is filled) and a Grad-CAM map of one
photo on mobilenet_v2, from the click to the map on the page; and, measured once, the Similarity
view's pair (three methods) from the click to the maps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

PHOTOS = ("imagenet_00_243", "imagenet_01_559", "imagenet_06_609", "imagenet_07_609", "imagenet_14_129")
SHOTS = ("explain", "job", "flow", "similarity", "similarity-gallery", "results")
VIEWPORT = {"width": 1400, "height": 1000}


def make_folders(base: Path) -> tuple[Path, Path]:
    """The images folder (sample photos and world test images) and a results folder with one run."""
    from PIL import Image

    from visionlens.cli import main
    from visionlens.data.samples import sample_images
    from visionlens.data.world import World

    images = base / "images"
    images.mkdir()
    for photo in sample_images("imagenet"):
        if photo.stem in PHOTOS:
            shutil.copy(photo, images / photo.name)
    world = World().batch("test", range(4))["image"]
    for i, picture in enumerate(world):
        array = (picture.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(array).save(images / f"world_test_{i}.png")
    results = base / "results"
    code = main(["evaluate", "--models", "world-cnn", "--methods", "gradcam,cam", "--data", "world:test", "--n", "8",
                 "--metrics", "deletion,insertion", "--device", "cpu", "--out", str(results / "world-cnn"), "--quiet"])
    if code != 0:
        raise SystemExit(f"error: visionlens evaluate failed ({code})")
    return images, results


def start_server(app) -> tuple[str, object, threading.Thread]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 in a thread."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("error: the explorer did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server, thread


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def load(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#layer option').length > 1 "
                           "&& document.querySelectorAll('#picked option').length > 1")


def choose(page, name: str) -> None:
    page.select_option("#picked", "file:" + name)
    page.wait_for_function("document.querySelectorAll('#top5 tr').length === 5")


def methods(page, names: list[str]) -> None:
    for box in page.query_selector_all("#methods input"):
        box.set_checked(box.get_attribute("value") in names)


def gradcam_once(page) -> None:
    page.evaluate("document.querySelector('#maps').textContent = ''")
    page.click("#run")
    page.wait_for_selector(".card img.heat")


def job_shot(page, out: Path) -> None:
    """A Score-CAM job running (its progress and Cancel button), then cancelled."""
    methods(page, ["scorecam"])
    page.evaluate("document.querySelector('#maps').textContent = ''")
    page.click("#run")
    page.wait_for_function("/forward pass [2-9]/.test(document.querySelector('#job-state').textContent)")
    page.screenshot(path=str(out / "serve-job.png"), clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": 520})
    page.click("#job-cancel")
    page.wait_for_function("document.querySelector('#job-state').textContent.endsWith('cancelled')")


def similarity_shots(page, out: Path) -> float:
    """The Similarity view: a pair of jeeps (its time from the click to the maps), then the second
    jeep as a query against the images folder."""
    page.click("header button[data-view=similarity]")
    page.select_option("#sim-a", f"file:{PHOTOS[3]}.jpg")
    page.select_option("#sim-b", f"file:{PHOTOS[2]}.jpg")
    for box in page.query_selector_all("#sim-methods input"):
        box.set_checked(True)
    pair = timed(lambda: (page.click("#sim-run"), page.wait_for_function(
        "document.querySelectorAll('#sim-maps .card.pair').length === 3")))
    page.screenshot(path=str(out / "serve-similarity.png"), full_page=True)
    page.check("input[name=sim-mode][value=gallery]")
    for box in page.query_selector_all("#sim-methods input"):
        box.set_checked(box.get_attribute("value") == "sfam")
    page.click("#sim-run")
    page.wait_for_function("document.querySelectorAll('#sim-matches .match').length === 3")
    page.screenshot(path=str(out / "serve-similarity-gallery.png"), full_page=True)
    return pair


def shoot(page, url: str, out: Path, repeats: int) -> dict:
    """The screenshots, and the page-load and Grad-CAM timings (seconds, medians) and the
    Similarity pair's (once)."""
    loads = [timed(lambda: load(page, url)) for _ in range(repeats)]
    choose(page, PHOTOS[0] + ".jpg")
    methods(page, ["gradcam"])
    gradcam_once(page)  # the first request also warms up the method's hooks
    maps = [timed(lambda: gradcam_once(page)) for _ in range(repeats)]
    methods(page, ["gradcam", "gradcam++", "layercam", "relevance-cam"])
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('.card').length === 4")
    page.screenshot(path=str(out / "serve-explain.png"), full_page=True)
    job_shot(page, out)

    choose(page, "world_test_1.png")
    page.click("header button[data-view=flow]")
    page.select_option("#flow-model", "world-vit")
    page.select_option("#flow-method", "daam")
    page.click("#flow-run")
    page.wait_for_function("document.querySelector('#flow-layer').textContent.includes('/')")
    page.eval_on_selector("#flow-slider", "el => { el.value = 1; el.dispatchEvent(new Event('input')); }")
    page.screenshot(path=str(out / "serve-flow.png"), full_page=True)
    pair = similarity_shots(page, out)

    page.click("header button[data-view=results]")
    page.select_option("#runs", "world-cnn")
    page.wait_for_function("document.querySelectorAll('#scores tr').length > 1")
    page.click("#scores th[data-col='metric:deletion']")
    page.click("#scores tr:nth-child(2)")
    page.wait_for_function("document.querySelectorAll('#record-maps .card img.heat').length === 2")
    page.screenshot(path=str(out / "serve-results.png"), full_page=True)
    return {"page_load_s": statistics.median(loads), "gradcam_s": statistics.median(maps), "pair_s": pair}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/screenshots", help="folder of the PNG screenshots")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the page load and of a map")
    parser.add_argument("--chromium", default=os.environ.get("VISIONLENS_CHROMIUM") or shutil.which("chromium"),
                        help="the chromium executable (default: chromium on the PATH)")
    args = parser.parse_args()
    if not args.chromium:
        raise SystemExit("error: chromium not found; install Debian's chromium or pass --chromium PATH")
    from playwright.sync_api import sync_playwright

    import visionlens
    from visionlens.serve.app import create_app
    from visionlens.serve.explorer import Explorer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="visionlens-serve-shots-") as tmp:
        images, results = make_folders(Path(tmp))
        models = {name: visionlens.load_model(name) for name in ("mobilenet_v2", "world-vit")}
        url, server, thread = start_server(create_app(Explorer(models, images=images, results=results)))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
                page = browser.new_page(viewport=VIEWPORT)
                page.set_default_timeout(60_000)
                timings = shoot(page, url, out, args.repeats)
                browser.close()
        finally:
            server.should_exit = True
            thread.join(10)
    print("wrote " + ", ".join(str(out / f"serve-{name}.png") for name in SHOTS))
    print(f"page load (until the layer list is filled): {timings['page_load_s']:.2f} s (median of {args.repeats})")
    print(f"Grad-CAM on mobilenet_v2, click to map on the page: {timings['gradcam_s']:.2f} s (median of {args.repeats})")
    print(f"Similarity pair (sfam, gradcam, relevance-cam) on mobilenet_v2, click to maps: {timings['pair_s']:.2f} s (once)")


if __name__ == "__main__":
    main()
