"""Image loading: odd but valid images work; broken files give one-line errors naming the file."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionlens.data import load_image
from visionlens.errors import ImageLoadError


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


def _rgb(h=40, w=60):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "make",
    [
        lambda p: _save(p / "gray.png", _rgb().convert("L")),
        lambda p: _save(p / "bw.png", _rgb().convert("1")),
        lambda p: _save(p / "rgba.png", _rgb().convert("RGBA")),
        lambda p: _save(p / "la.png", _rgb().convert("LA")),
        lambda p: _save(p / "palette.png", _rgb().convert("P")),
        lambda p: _save(p / "palette.gif", _rgb().convert("P")),
        lambda p: _save(p / "cmyk.jpg", _rgb().convert("CMYK")),
        lambda p: _save(p / "gray16.png", Image.fromarray(np.arange(2400, dtype=np.uint16).reshape(40, 60) * 27)),
        lambda p: _save(p / "float.tif", Image.fromarray(np.linspace(0, 1, 2400, dtype=np.float32).reshape(40, 60))),
        lambda p: _save(p / "tiny.png", _rgb(1, 1)),
        lambda p: _save(p / "photo.webp", _rgb()),
        lambda p: _save(p / "photo.bmp", _rgb()),
    ],
)
def test_odd_images_load_as_rgb(tmp_path, make):
    img = load_image(make(tmp_path))
    assert img.mode == "RGB" and img.size[0] >= 1


def test_sixteen_bit_keeps_its_range(tmp_path):
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    img = np.asarray(load_image(_save(tmp_path / "g16.png", Image.fromarray(arr))))
    assert img[0, 0].tolist() == [0, 0, 0] and img[1, 1].tolist() == [255, 255, 255]


def test_transparent_pixels_become_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(load_image(_save(tmp_path / "t.png", rgba)))[0, 0].tolist() == [255, 255, 255]


def _write(path, data):
    path.write_bytes(data)
    return path


def _truncated(p):
    buf = io.BytesIO()
    _rgb(200, 200).save(buf, format="JPEG")
    (p / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return p / "cut.jpg"


def _corrupt(p):
    buf = io.BytesIO()
    _rgb().save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[60:200] = bytes(140)
    (p / "corrupt.png").write_bytes(bytes(data))
    return p / "corrupt.png"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.jpg", "no such file"),
        (lambda p: _write(p / "empty.jpg", b""), "file is empty"),
        (lambda p: _write(p / "notes.jpg", b"not an image"), "not a readable image"),
        (_truncated, "truncated or corrupt"),
        (_corrupt, "truncated or corrupt"),
        (lambda p: p, "is a directory"),
        (lambda p: _save(p / "nan.tif", Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32))), "NaN"),
    ],
)
def test_broken_files_give_one_line_errors(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


@pytest.mark.parametrize("make", ["/dev/zero", "/dev/urandom", "fifo"])
def test_devices_and_fifos_are_not_regular_files(tmp_path, make):
    import os

    path = make
    if make == "fifo":
        path = tmp_path / "pipe.png"
        os.mkfifo(path)  # opening it for reading would block forever
    elif not os.path.exists(make):
        pytest.skip(f"{make} does not exist here")
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(path)


def test_a_newline_in_a_name_stays_on_one_line(tmp_path):
    with pytest.raises(ImageLoadError) as info:
        load_image(tmp_path / "bro\nken.png")
    assert "\n" not in str(info.value) and "ken.png" in str(info.value)


def test_an_image_over_the_pixel_limit_says_to_resize_it(tmp_path, monkeypatch):
    path = _save(tmp_path / "wide.png", _rgb(40, 60))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2,400 pixels: over twice the limit
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    text = str(info.value)
    assert str(path) in text and "decompression-bomb limit of 2,000 pixels" in text and "resize it first" in text


def test_an_image_between_pillows_limit_and_twice_it_loads(tmp_path, monkeypatch):
    """Pillow warns above 89.5 MP and refuses above twice that; a 108 MP phone photo (12000 x 9000)
    was refused. As 2,400 pixels under a limit of 1,500: it loads, without a warning."""
    import warnings

    path = _save(tmp_path / "big.png", _rgb(40, 60))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == (60, 40)


def test_a_float_image_in_eight_bit_units_keeps_its_brightness(tmp_path):
    """A float TIFF with values 0-255 was divided by 65535 (nearly black)."""
    arr = np.linspace(0, 255, 2400, dtype=np.float32).reshape(40, 60)
    img = np.asarray(load_image(_save(tmp_path / "f.tif", Image.fromarray(arr))))
    assert abs(float(img[..., 0].mean()) - float(arr.mean())) < 1.0


def test_a_file_named_twice_is_one_input_in_first_place(tmp_path, monkeypatch):
    from visionlens.data.images import image_files

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        _save(folder / name, _rgb())
    (tmp_path / "link.png").symlink_to(folder / "b.png")
    monkeypatch.chdir(tmp_path)
    given = ["photos/b.png", "./photos/b.png", str(folder), "link.png"]
    assert image_files(given) == [Path("photos/b.png"), folder / "a.png"]
