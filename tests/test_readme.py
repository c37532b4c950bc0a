"""The README stays a front door: short, its quick start runs as written, its links lead somewhere,
and its two set-up commands are the ones scripts/ provides."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETUP_COMMANDS = [
    "bash scripts/demo.sh visionlens-demo   # 1. create .venv, install, fetch weights + photos, explain the sample photos",
    "bash scripts/test.sh                   # 2. the whole test suite (this is what CI runs)",
]


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced code blocks tagged with ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def relative_links(text: str) -> list[str]:
    """Targets of Markdown links and images that are not URLs or in-page anchors."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_fits_one_or_two_screens():
    size = len(README.read_bytes())
    assert 2_000 < size <= 12_000, f"README.md is {size} bytes"


def test_every_relative_link_points_to_an_existing_file():
    links = relative_links(readme_text())
    assert len(links) >= 10  # the gallery, the method pages, the guides
    missing = [t for t in links if not (ROOT / t.split("#", 1)[0]).is_file()]
    assert not missing, f"README links to missing files: {missing}"


def test_the_two_setup_commands_are_there_and_exist():
    text = readme_text()
    for line in SETUP_COMMANDS:
        assert line in text
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert (ROOT / script).is_file()


def test_the_method_table_links_a_docs_page_per_method():
    table = [line for line in readme_text().splitlines() if line.startswith("| ") and "docs/" in line]
    assert len(table) >= 14
    for row in table:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 5 and all(cells), row


def test_the_method_table_lists_every_registered_method_with_its_class():
    from visionlens.methods import METHODS

    table = [line for line in readme_text().splitlines() if line.startswith("| ") and "docs/" in line]
    listed = {}
    for row in table:
        _, _, cls, cli_names, _ = [c.strip() for c in row.strip("|").split("|")]
        for name in re.findall(r"`([^`]+)`", cli_names):
            listed[name] = cls
    missing = [name for name in METHODS if name not in listed]
    assert not missing, f"methods missing from the README table: {missing}"
    for name, cls in METHODS.items():
        assert listed[name] == f"`{cls.__name__}`", (name, listed[name])


def test_quick_start_runs_as_written(tmp_path, monkeypatch, mobilenet, all_photos):
    """Exec the README's Python block in an empty folder: it explains a sample photo and writes the
    overlay there (the fixtures make sure the zoo model and the photos are present)."""
    blocks = code_blocks(readme_text(), "python")
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_quick_start"}
    exec(compile(blocks[0], "README.md quick start", "exec"), namespace)
    import visionlens
    from visionlens.data import sample_images

    # the map of the file as `visionlens explain` computes it (the quick start once preprocessed twice)
    cli = visionlens.explain([sample_images("skimage")[0]], mobilenet, "gradcam")
    np.testing.assert_allclose(namespace["exp"].maps.numpy(), cli.maps.numpy(), atol=1e-4)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["chelsea.gradcam.png"]
    from PIL import Image

    with Image.open(tmp_path / "chelsea.gradcam.png") as img:
        assert img.size[0] >= 224 and img.size[1] >= 224
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 1000  # a photo with a heat map, not a flat image


def load_gallery_script():
    spec = importlib.util.spec_from_file_location("make_gallery", ROOT / "scripts" / "make_gallery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gallery_command_named_in_the_readme_exists_and_keeps_existing_files(tmp_path, capsys):
    assert "python scripts/make_gallery.py docs/gallery.png" in readme_text()
    assert (ROOT / "docs" / "gallery.png").is_file()
    dest = tmp_path / "mine.png"
    dest.write_bytes(b"a user's file")
    assert load_gallery_script().main([str(dest)]) == 2  # refused before any work without --force
    assert dest.read_bytes() == b"a user's file"
    assert "--force" in capsys.readouterr().err


def test_a_gallery_row_has_the_photo_and_one_overlay_per_method(mobilenet, all_photos):
    gallery = load_gallery_script()
    photo = gallery.pick_photos(gallery.PHOTOS[:1])
    label, tiles = gallery.explain_row(mobilenet, photo[0])
    assert len(tiles) == 1 + len(gallery.METHODS) and "%" in label
    view = np.asarray(tiles[0], dtype=np.float32)
    for tile in tiles[1:]:  # each overlay is the photo tinted by a map, not the photo itself
        assert tile.size == tiles[0].size
        assert np.abs(np.asarray(tile, dtype=np.float32) - view).mean() > 5
    titles = ["photo"] + [name for name, _, _ in gallery.METHODS]
    sheet = gallery.compose([(label, tiles)] * 2, titles)
    assert sheet.size == (len(titles) * gallery.TILE, gallery.CAPTION + 2 * (gallery.TILE + gallery.CAPTION))


def test_the_docs_getting_started_page_has_the_same_quick_start():
    (quick_start,) = code_blocks(readme_text(), "python")
    assert quick_start in (ROOT / "docs" / "index.md").read_text(encoding="utf-8")


TABLE_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def broken_tables(text: str) -> list[str]:
    """Table rows that Markdown renders as plain text: a row right after a paragraph line (a
    paragraph dropped between two rows splits the table there), or a table with no ``|---|`` line
    under its first row."""
    lines, problems, fenced, previous = text.splitlines(), [], False, ""
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced, previous = not fenced, ""
            continue
        if not fenced and line.startswith("|") and not previous.startswith("|"):
            if previous.strip():
                problems.append(f"line {number}: a table row right after a paragraph line")
            elif number >= len(lines) or not TABLE_SEPARATOR.match(lines[number]):
                problems.append(f"line {number}: a table without a |---| line under its first row")
        previous = line
    return problems


def test_every_markdown_table_renders_as_a_table():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "systems").glob("*/README.md"))]
    problems = [f"{page.relative_to(ROOT)} {p}" for page in pages for p in broken_tables(page.read_text(encoding="utf-8"))]
    assert not problems, problems
    assert broken_tables("| a |\n|---|\n| 1 |\ntext\n| 2 |") == ["line 5: a table row right after a paragraph line"]
    assert broken_tables("| a |\n|---|\n\n| 2 |") == ["line 4: a table without a |---| line under its first row"]
