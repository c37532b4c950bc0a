"""The explorer in a real browser (headless Debian chromium driven by Playwright): the page loads,
an upload shows Grad-CAM with a colour bar and an opacity slider, the flow slider steps through
DAAM's blocks, a results folder opens, and a traversal path and an oversized upload are refused.

Skips when Playwright or chromium is missing, saying which; with VISIONLENS_REQUIRE_BROWSER=1 (for
CI) that is a failure instead."""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import EVAL_IMAGES, UPLOAD_BYTES

REQUIRED = os.environ.get("VISIONLENS_REQUIRE_BROWSER") == "1"  # CI: a missing browser fails, not skips


def missing(reason: str):
    """Skip the browser tests, or fail them where the browser is required."""
    if REQUIRED:
        pytest.fail(f"VISIONLENS_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from playwright import sync_api
except ImportError:
    missing("playwright is not installed: pip install playwright (it drives Debian's chromium; no browser download)")

TIMEOUT_MS = 30_000


def chromium_path() -> str | None:
    """``$VISIONLENS_CHROMIUM``, or Debian's chromium on the PATH."""
    return os.environ.get("VISIONLENS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def live_url(explorer):
    """The explorer's app served by uvicorn on a free port of 127.0.0.1 for this module."""
    import uvicorn

    from visionlens.serve.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(explorer), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the explorer did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        missing("chromium not found: install Debian's chromium (apt-get install -y chromium) or set VISIONLENS_CHROMIUM")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, live_url):
    """A fresh page with the explorer loaded (models and layers listed)."""
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    opened.goto(live_url)
    opened.wait_for_function("document.querySelectorAll('#layer option').length > 1")
    yield opened
    context.close()


def set_range(page, selector: str, value) -> None:
    """Move a slider as a user does (the value, then an ``input`` event)."""
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(value))


def upload(page, photo) -> None:
    page.set_input_files("#upload", str(photo))
    page.wait_for_function("document.querySelectorAll('#top5 tr').length === 5")


def test_page_loads_with_models_layers_and_images(browser, live_url):
    context = browser.new_context()
    page = context.new_page()
    start = time.monotonic()
    page.goto(live_url)
    page.wait_for_function("document.querySelectorAll('#picked option').length > 1 "
                           "&& document.querySelectorAll('#layer option').length > 1", timeout=TIMEOUT_MS)
    loaded = time.monotonic() - start
    assert page.title() == "visionlens explorer"
    assert page.eval_on_selector_all("#model option", "els => els.map(e => e.value)") == ["mobilenet_v2", "world-vit"]
    layers = page.eval_on_selector_all("#layer option", "els => els.map(e => e.textContent)")
    assert any(text.startswith("features.13") and "14×14" in text for text in layers)
    assert page.locator("#methods input[value=gradcam]").is_checked()
    assert loaded < 15, f"the page took {loaded:.1f} s"
    context.close()


def test_upload_shows_a_gradcam_map_with_colour_bar_and_opacity(page, imagenet_photos):
    upload(page, imagenet_photos[0])
    label = imagenet_photos[0].stem.rsplit("_", 1)[1]
    assert label in page.eval_on_selector_all("#target option", "els => els.map(e => e.value)")
    page.click("#run")
    heat = page.wait_for_selector(".card img.heat")
    assert page.inner_text(".card h3") == "gradcam @ features"
    assert heat.get_attribute("src").startswith("data:image/png;base64,")
    assert page.evaluate("document.querySelector('.card img.heat').naturalWidth") == 224
    assert "linear-gradient" in page.eval_on_selector(".card .bar", "el => el.style.background")
    set_range(page, "#opacity", 0.2)
    assert page.eval_on_selector(".card img.heat", "el => el.style.opacity") == "0.2"
    href = page.eval_on_selector(".card a.png", "a => a.href")  # absolute
    assert "alpha=0.2" in href
    download = page.request.get(href)
    assert download.status == 200 and download.headers["content-type"] == "image/png"
    npz = page.request.get(page.eval_on_selector("#npz", "a => a.href"))
    assert npz.status == 200 and np.load(io.BytesIO(npz.body()))["gradcam_map"].shape == (224, 224)


def test_several_uploads_are_listed_to_switch_between(page, imagenet_photos):
    page.set_input_files("#upload", [str(p) for p in imagenet_photos[:2]])
    page.wait_for_function("document.querySelectorAll('#top5 tr').length === 5")
    labels = page.eval_on_selector_all("#picked option", "els => els.map(e => e.textContent)")
    assert [f"uploaded: {p.name}" for p in imagenet_photos[:2]] == [t for t in labels if t.startswith("uploaded")]
    first_top = page.eval_on_selector("#top5 tr:first-child", "row => row.textContent")
    second = page.eval_on_selector_all("#picked option", "els => els.map(e => e.value)")[-1]
    page.select_option("#picked", second)
    page.wait_for_function(f"document.querySelector('#top5 tr:first-child').textContent !== {first_top!r}")
    assert page.get_attribute("#preview", "src").startswith("blob:")  # the browser's own copy, not a served file


def test_a_bad_file_among_several_uploads_keeps_its_error_shown(page, imagenet_photos):
    good = {"name": "good.jpg", "mimeType": "image/jpeg", "buffer": imagenet_photos[0].read_bytes()}
    bad = {"name": "bad.png", "mimeType": "image/png", "buffer": b"not an image"}
    page.set_input_files("#upload", [bad, good])
    page.wait_for_function("document.querySelectorAll('#top5 tr').length === 5")  # the good one was chosen
    page.wait_for_function("document.querySelector('#error').textContent.length > 0")
    assert page.inner_text("#error").startswith("error: bad.png: upload: not a readable image")


def test_picked_image_with_two_methods_side_by_side(page):
    refs = page.eval_on_selector_all("#picked option", "els => els.map(e => e.value).filter(Boolean)")
    assert all(ref.startswith("file:") for ref in refs)
    page.select_option("#picked", refs[0])
    page.wait_for_function("document.querySelectorAll('#top5 tr').length === 5")
    page.check("#methods input[value='gradcam++']")
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('.card').length === 2")
    assert page.eval_on_selector_all(".card h3", "els => els.map(e => e.textContent)") == [
        "gradcam @ features", "gradcam++ @ features"]


def test_flow_slider_steps_through_daam_blocks(page, imagenet_photos):
    upload(page, imagenet_photos[1])
    page.click("header button[data-view=flow]")
    page.select_option("#flow-model", "world-vit")
    page.select_option("#flow-method", "daam")
    page.click("#flow-run")
    page.wait_for_function("document.querySelector('#flow-layer').textContent.includes('/')")
    blocks = int(page.get_attribute("#flow-slider", "max")) + 1
    assert page.inner_text("#flow-layer") == f"blocks.{blocks - 1} ({blocks}/{blocks})"
    last = page.get_attribute("#flow-heat", "src")
    set_range(page, "#flow-slider", 0)
    assert page.inner_text("#flow-layer") == f"blocks.0 (1/{blocks})"
    assert page.get_attribute("#flow-heat", "src") != last


def test_results_folder_opens_with_sortable_scores_and_curves(page):
    page.click("header button[data-view=results]")
    page.select_option("#runs", "run-world")
    assert page.frame_locator("#report").locator("h1").inner_text() == "visionlens report card"
    page.wait_for_function(f"document.querySelectorAll('#scores tr').length === {EVAL_IMAGES + 1}")
    page.click("#scores th[data-col='metric:deletion']")
    column = page.eval_on_selector_all("#scores tr", "rows => rows.slice(1).map(r => Number(r.cells[5].textContent))")
    assert column == sorted(column)
    page.click("#scores th[data-col='metric:deletion']")
    column = page.eval_on_selector_all("#scores tr", "rows => rows.slice(1).map(r => Number(r.cells[5].textContent))")
    assert column == sorted(column, reverse=True)
    page.click("#scores tr:nth-child(2)")
    assert page.eval_on_selector_all("#curves polyline.curve", "els => els.map(e => e.dataset.name)") == [
        "deletion", "insertion"]


def test_traversal_path_is_refused(page, live_url, served):
    for path in ("/files/images/..%2Fsecret.txt", "/files/images/link.png", "/files/results/..%2Fsecret.txt"):
        response = page.request.get(live_url + path)
        assert response.status == 404 and "not for the browser" not in response.text()
    page.goto(live_url + "/files/images/%2e%2e/secret.txt")
    assert "not for the browser" not in page.content()


def test_oversized_upload_is_refused_with_one_line(page):
    noise = np.random.default_rng(1).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert buffer.tell() > UPLOAD_BYTES
    page.set_input_files("#upload", {"name": "noise.png", "mimeType": "image/png", "buffer": buffer.getvalue()})
    page.wait_for_function("document.querySelector('#error').textContent.length > 0")
    assert page.inner_text("#error").startswith("error: noise.png: upload: ") and "over the limit" in page.inner_text("#error")
    assert page.is_hidden("#preview")


def test_bad_target_shows_the_cli_error_line(page, imagenet_photos):
    upload(page, imagenet_photos[0])
    page.fill("#target-text", "not a class")
    page.click("#run")
    page.wait_for_function("document.querySelector('#error').textContent.length > 0")
    assert page.inner_text("#error").startswith("error: unknown class 'not a class' for mobilenet_v2")


def test_similarity_view_shows_both_maps_and_the_score(page):
    page.click("header button[data-view=similarity]")
    refs = page.eval_on_selector_all("#sim-a option", "els => els.map(e => e.value).filter(Boolean)")
    page.select_option("#sim-a", refs[0])
    page.select_option("#sim-b", refs[1])
    page.click("#sim-run")
    page.wait_for_selector("#sim-maps .card.pair")
    assert re.fullmatch(r"cosine similarity -?\d\.\d{4}", page.inner_text("#sim-score"))
    heats = page.eval_on_selector_all("#sim-maps .card.pair img.heat", "els => els.map(e => e.src)")
    assert len(heats) == 2 and heats[0] != heats[1] and all(h.startswith("data:image/png;base64,") for h in heats)
    assert page.evaluate("document.querySelector('#sim-maps img.heat.b').naturalWidth") == 224
    assert "linear-gradient" in page.eval_on_selector("#sim-maps .bar", "el => el.style.background")
    assert page.inner_text("#sim-maps h3").startswith("sfam @ ")


def test_similarity_gallery_lists_the_top_matches_without_the_query(page):
    page.click("header button[data-view=similarity]")
    page.check("input[name=sim-mode][value=gallery]")
    refs = page.eval_on_selector_all("#sim-a option", "els => els.map(e => e.value).filter(Boolean)")
    page.select_option("#sim-a", refs[0])
    page.click("#sim-run")
    page.wait_for_selector("#sim-matches .match")
    titles = page.eval_on_selector_all("#sim-matches h4", "els => els.map(e => e.textContent)")
    assert len(titles) == 2 and titles[0].startswith("#1 ") and refs[0][5:] not in " ".join(titles)
    scores = page.eval_on_selector_all("#sim-matches .score", "els => els.map(e => Number(e.textContent))")
    assert scores == sorted(scores, reverse=True)
    assert "the query itself is left out" in page.inner_text("#sim-score")


def test_long_job_is_queued_then_shows_progress_and_cancel_stops_it(page, explorer, mobilenet):
    refs = page.eval_on_selector_all("#picked option", "els => els.map(e => e.value).filter(Boolean)")
    page.select_option("#picked", refs[0])
    page.wait_for_function("document.querySelectorAll('#top5 tr').length === 5")
    page.uncheck("#methods input[value=gradcam]")
    page.check("#methods input[value=scorecam]")
    lock = explorer.device_lock(mobilenet)
    lock.acquire()  # another request holds the device
    try:
        page.click("#run")
        page.wait_for_function("document.querySelector('#job-state').textContent.includes('queued')")
        assert page.is_visible("#job") and page.is_enabled("#job-cancel")
    finally:
        lock.release()
    page.wait_for_function("/running scorecam \\(method 1 of 1, forward pass [1-9]\\d*( of about \\d+)?\\)/"
                           ".test(document.querySelector('#job-state').textContent)")
    assert page.get_attribute("#job-progress", "max") == "1"
    # a share of the channel batches where their number is known, else an indeterminate bar
    assert page.eval_on_selector("#job-progress", "el => el.position === -1 || (el.value > 0 && el.value < 1)")
    page.click("#job-cancel")
    page.wait_for_function("document.querySelector('#error').textContent.length > 0")
    assert page.inner_text("#error") == "error: cancelled"
    assert page.inner_text("#job-state").endswith("cancelled") and page.is_disabled("#job-cancel")
    assert page.query_selector(".card") is None
    page.uncheck("#methods input[value=scorecam]")
    page.check("#methods input[value=gradcam]")
    page.click("#run")  # the device is free again
    page.wait_for_selector(".card img.heat")


def test_clicking_a_results_row_shows_its_maps_beside_its_curves(page):
    page.click("header button[data-view=results]")
    page.select_option("#runs", "run-world")
    page.wait_for_function(f"document.querySelectorAll('#scores tr').length === {EVAL_IMAGES + 1}")
    image = page.eval_on_selector("#scores tr:nth-child(3)", "row => row.cells[0].textContent")
    page.click("#scores tr:nth-child(3)")
    page.wait_for_selector("#record-maps .card img.heat")
    assert page.eval_on_selector_all("#record-maps h3", "els => els.map(e => e.textContent)") == ["gradcam @ layer3"]
    assert page.get_attribute("#record-maps img.heat", "src").startswith("data:image/png;base64,")
    assert image in page.inner_text("#record-note")
    assert page.eval_on_selector_all("#curves polyline.curve", "els => els.map(e => e.dataset.name)") == [
        "deletion", "insertion"]
