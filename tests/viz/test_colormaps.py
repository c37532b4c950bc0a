"""Colormaps and overlays: perceptual maps rise in lightness, diverging maps put zero at a neutral
centre and treat +x and -x alike, unknown names give one line, colour-bar strips on PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visionlens.errors import InputError
from visionlens.viz.colormaps import CMAPS, apply, check_cmap, colorize, css_gradient, positions, table
from visionlens.viz.overlay import jet, overlay, with_colorbar


def lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB colours (uint8, ``(..., 3)``)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > 216 / 24389, 116 * np.cbrt(y) - 16, y * 24389 / 27)


@pytest.mark.parametrize("name", ["viridis", "inferno", "magma"])
def test_perceptual_maps_rise_monotonically_in_lightness(name):
    light = lightness(table(name))
    assert light.shape == (256,)
    assert np.diff(light).min() > -0.5  # never darker from one entry to the next (uint8 rounding aside)
    assert light[-1] - light[0] > 60  # and a wide range from low to high


def test_jet_is_still_there_and_is_not_monotone_in_lightness():
    assert "jet" in CMAPS
    ends = jet(np.array([0.0, 1.0]))
    assert ends[0, 2] > 100 and ends[0, 0] < 20  # blue low
    assert ends[1, 0] > 100 and ends[1, 2] < 20  # red high
    assert np.diff(lightness(table("jet"))).min() < -1  # why it is no longer the default


@pytest.mark.parametrize("name", ["rdbu", "coolwarm"])
def test_diverging_centre_is_neutral_and_zero_lands_on_it(name):
    centre = apply(np.array(0.5), name).astype(int)
    assert centre.max() - centre.min() < 25  # a grey, no hue
    assert lightness(centre) > 75  # and light
    zero = colorize(np.zeros((4, 4), np.float32), name, signed=True)
    assert np.abs(zero.astype(int) - centre).max() <= 1


def test_signed_map_is_symmetric_around_zero():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(16, 16)).astype(np.float32)
    assert np.allclose(positions(-v, "rdbu", True), 1.0 - positions(v, "rdbu", True), atol=1e-6)
    pos, neg = colorize(v, signed=True).astype(int), colorize(-v, signed=True).astype(int)
    assert np.abs(lightness(pos) - lightness(neg)).max() < 6  # +x and -x equally light
    strong = np.abs(v) > 1.0
    sign = np.sign(v)[strong]
    red_minus_blue = (pos[..., 0] - pos[..., 2])[strong]
    assert np.all(red_minus_blue * sign > 0)  # positive red, negative blue
    assert positions(v, "rdbu", True).min() >= 0 and positions(v, "rdbu", True).max() <= 1


def test_signed_maps_get_a_diverging_map_whatever_the_chosen_one():
    v = np.array([[-1.0, 0.0, 1.0]], np.float32)
    assert np.array_equal(colorize(v, "viridis", signed=True), colorize(v, "rdbu", signed=True))
    assert not np.array_equal(colorize(v, "coolwarm", signed=True), colorize(v, "rdbu", signed=True))


def test_unknown_colormap_is_one_line_naming_the_choices():
    with pytest.raises(InputError) as err:
        check_cmap("rainbow")
    text = str(err.value)
    assert "\n" not in text and "rainbow" in text and all(name in text for name in CMAPS)
    assert check_cmap(" Viridis ") == "viridis"


def test_css_gradient_runs_from_the_first_to_the_last_colour():
    low, high = table("viridis")[0], table("viridis")[-1]
    gradient = css_gradient("viridis")
    assert gradient.startswith("linear-gradient(to right, #%02x%02x%02x" % tuple(low))
    assert gradient.endswith("#%02x%02x%02x)" % tuple(high))


def test_signed_overlay_colours_by_sign_and_leaves_zero_as_the_photo():
    photo = Image.new("RGB", (64, 64), (128, 128, 128))
    raw = np.zeros((8, 8), np.float32)
    raw[:, :2], raw[:, -2:] = 1.0, -1.0  # positive left, negative right, zero in the middle
    out = np.asarray(overlay(photo, raw, signed=True), dtype=int)
    assert out.shape == (64, 64, 3)  # the map is resized to the photo
    left, right, middle = out[:, :4].mean((0, 1)), out[:, -4:].mean((0, 1)), out[:, 28:36].mean((0, 1))
    assert left[0] - left[2] > 40 and right[2] - right[0] > 40
    assert np.abs(middle - 128).max() < 3


def test_overlay_default_is_viridis_and_cmap_changes_it():
    photo = Image.new("RGB", (32, 32), (0, 0, 0))
    ones = np.ones((32, 32), np.float32)
    top = np.asarray(overlay(photo, ones, alpha=1.0))[0, 0]
    assert np.abs(top.astype(int) - table("viridis")[-1]).max() <= 1
    assert np.abs(np.asarray(overlay(photo, ones, alpha=1.0, cmap="inferno"))[0, 0].astype(int)
                  - table("inferno")[-1]).max() <= 1
    with pytest.raises(InputError):
        overlay(photo, ones, cmap="nope")


@pytest.mark.parametrize("signed", [False, True])
def test_colorbar_strip_under_a_saved_overlay(signed):
    photo = Image.new("RGB", (96, 96), (200, 200, 200))
    picture = overlay(photo, np.linspace(0, 1, 96 * 96, dtype=np.float32).reshape(96, 96))
    with_bar = with_colorbar(picture, signed=signed)
    assert with_bar.width == 96 and with_bar.height > 96 + 15
    assert np.array_equal(np.asarray(with_bar)[:96], np.asarray(picture))
    bar_row = np.asarray(with_bar)[96 + 6].astype(int)
    first, last = table("rdbu" if signed else "viridis")[[0, -1]]
    assert np.abs(bar_row[5] - first).max() < 12 and np.abs(bar_row[-6] - last).max() < 12
    assert overlay(photo, np.zeros((96, 96), np.float32), colorbar=True).size == with_bar.size


def test_overlay_takes_a_tensor_as_it_comes_from_a_method():
    import torch

    photo = Image.new("RGB", (32, 24), (90, 120, 150))
    values = torch.rand(24, 32, dtype=torch.float64)
    expected = np.asarray(overlay(photo, values.numpy()))
    for given in (values.clone().requires_grad_(), values.float(), values.half()):  # exp.maps[0] as it is
        assert np.abs(np.asarray(overlay(photo, given), dtype=int) - expected).max() <= 1


def test_overlay_takes_numpy_images_and_keeps_the_photo_size_for_a_small_map():
    """pytorch-grad-cam's show_cam_on_image takes a float (H, W, 3) array in [0, 1]; a layer's raw
    map (7 x 7) was drawn by shrinking the photo to 7 x 7 (before: AttributeError for the array)."""
    rng = np.random.default_rng(0)
    photo = rng.random((64, 48, 3)).astype(np.float32)
    small = rng.random((7, 7)).astype(np.float32)
    as_pil = overlay(Image.fromarray(np.round(photo * 255).astype(np.uint8)), small)
    assert as_pil.size == (48, 64)
    for image in (photo, np.round(photo * 255).astype(np.uint8)):
        assert np.array_equal(np.asarray(overlay(image, small)), np.asarray(as_pil))
    assert overlay(photo[..., 0], small, signed=True).size == (48, 64)  # grayscale (H, W)
    for bad, message in ((photo * 2, r"values in \[0, 1\]"), (photo[None], "an \\(H, W, 3\\) array")):
        with pytest.raises(InputError, match=message):
            overlay(bad, small)
