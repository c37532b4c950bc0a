"""`visionlens bank` from a folder: class folders and CSV labels matched to the model's classes as
`evaluate` matches them (case, index, WordNet ID, alias; a mix refused, none: sorted folder order
with a warning), a progress bar over the embedded images, and `--out` checked before any work."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visionlens.data.bank as bank_module
from visionlens.core.memory_bank import MemoryBank
from visionlens.data.bank import build_bank, save_bank
from visionlens.outputs import check_out_file
from visionlens.errors import InputError, VisionlensWarning
from visionlens.models import Preprocess, load_model
from visionlens.models.zoo import imagenet_classes

from helpers import TinyGapNet, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def imagenet_tiny():
    """A 1,000-class tiny CNN with ImageNet's class names (so WordNet IDs and aliases apply), 32 px."""
    torch.manual_seed(0)
    return load_model(TinyGapNet(classes=1000).eval(), preprocess=Preprocess(resize=32, crop=32),
                      class_names=imagenet_classes())


def _tree(root: Path, folders: list[str], per_folder: int = 1) -> Path:
    seed = 0
    for name in folders:
        (root / name).mkdir(parents=True)
        for i in range(per_folder):
            seed += 1
            rgb = np.random.default_rng(seed).integers(0, 256, (36, 40, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / name / f"img{i}.png")
    return root


def _no_warning(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisionlensWarning)
        return fn()


# ---- class folders ---------------------------------------------------------------------------


def test_folders_keep_the_model_class_indices_however_they_are_spelled(tmp_path, imagenet_tiny):
    # 'Goldfish' has a capital: sorted first, and used to turn the bank into a 2-class one in folder order
    bank = _no_warning(lambda: build_bank(imagenet_tiny, images=_tree(tmp_path / "a", ["tench", "Goldfish"])))
    assert bank.labels.tolist() == [1, 0] and bank.num_classes == 1000
    assert bank.class_names == tuple(imagenet_classes())


def test_an_index_and_a_name_of_one_class_are_one_class(tmp_path, imagenet_tiny):
    bank = _no_warning(lambda: build_bank(imagenet_tiny, images=_tree(tmp_path / "a", ["0", "tench"])))
    assert bank.labels.tolist() == [0, 0] and bank.num_classes == 1000


def test_wordnet_ids_aliases_and_separators_match(tmp_path, imagenet_tiny):
    root = _tree(tmp_path / "a", ["n01443537", "tiger_shark", "Great-White-Shark", "tabby"])
    bank = _no_warning(lambda: build_bank(imagenet_tiny, images=root))
    # sorted folders: Great-White-Shark, n01443537, tabby, tiger_shark
    assert bank.labels.tolist() == [2, 1, 281, 3]


def test_a_folder_that_names_no_class_among_folders_that_do_is_refused(tmp_path, imagenet_tiny):
    root = _tree(tmp_path / "a", ["tench", "Cats"])
    with pytest.raises(InputError, match=r"--images .*folder 'Cats' is none of the classes"):
        build_bank(imagenet_tiny, images=root)


def test_a_folder_index_beyond_the_model_classes_is_refused(tmp_path, imagenet_tiny):
    with pytest.raises(InputError, match=r"folder '1000' is not a class index .*\(0-999\)"):
        build_bank(imagenet_tiny, images=_tree(tmp_path / "a", ["tench", "1000"]))


def test_folders_that_name_no_class_take_folder_order_with_a_warning(tmp_path, imagenet_tiny):
    root = _tree(tmp_path / "a", ["dogs", "cats"])
    with pytest.warns(VisionlensWarning, match="sorted folder order"):
        bank = build_bank(imagenet_tiny, images=root)
    assert bank.labels.tolist() == [0, 1] and bank.num_classes == 2 and bank.class_names == ("cats", "dogs")


def test_hidden_and_empty_folders_are_not_classes(tmp_path, imagenet_tiny):
    root = _tree(tmp_path / "a", ["tench", ".cache"])
    (root / "empty").mkdir()
    bank = _no_warning(lambda: build_bank(imagenet_tiny, images=root))
    assert bank.labels.tolist() == [0]


def test_a_digit_that_is_no_number_is_a_name(tmp_path, imagenet_tiny):
    with pytest.raises(InputError, match="folder '\u00b2' is none of the classes"):  # superscript two
        build_bank(imagenet_tiny, images=_tree(tmp_path / "a", ["tench", "\u00b2"]))


def test_a_model_without_class_names_keeps_folder_indices_or_folder_order(tmp_path):
    torch.manual_seed(0)
    plain = load_model(TinyGapNet(classes=8).eval(), preprocess=Preprocess(resize=32, crop=32))
    by_index = _no_warning(lambda: build_bank(plain, images=_tree(tmp_path / "a", ["7", "3"])))
    assert by_index.labels.tolist() == [3, 7] and by_index.num_classes == 8 and by_index.class_names is None
    by_name = _no_warning(lambda: build_bank(plain, images=_tree(tmp_path / "b", ["dogs", "cats"])))
    assert by_name.labels.tolist() == [0, 1] and by_name.class_names == ("cats", "dogs")


def test_the_cli_names_the_folder_that_matches_no_class(tmp_path, capsys):
    from visionlens.cli import main

    root = _tree(tmp_path / "a", ["Lantern", "cats"])  # world-dino: lantern is its class 0
    assert main(["bank", "--model", "world-dino", "--device", "cpu", "--images", str(root),
                 "--out", str(tmp_path / "b.pt")]) == 2
    one_error_line(capsys.readouterr().err, "'cats'", "world-dino")
    assert not (tmp_path / "b.pt").exists()


def test_the_cli_warns_on_one_line_when_no_folder_names_a_class(tmp_path, capsys):
    from visionlens.cli import main

    root = _tree(tmp_path / "a", ["cats", "dogs"])
    assert main(["bank", "--model", "world-dino", "--device", "cpu", "--images", str(root),
                 "--out", str(tmp_path / "b.pt")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: ") and "sorted folder order" in err[0], err
    assert MemoryBank.load(tmp_path / "b.pt").num_classes == 2


# ---- a labels CSV -----------------------------------------------------------------------------


def _flat(root: Path, count: int) -> Path:
    _tree(root, ["x"], per_folder=count)
    return root / "x"


def test_csv_labels_match_names_like_folders_and_read_a_bom(tmp_path, imagenet_tiny):
    folder = _flat(tmp_path, 3)
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"\xef\xbb\xbffile,label\nimg0.png,Goldfish\nimg1.png,n01440764\nimg2.png,3\n")
    bank = build_bank(imagenet_tiny, images=folder, labels=labels)
    assert bank.labels.tolist() == [1, 0, 3] and bank.num_classes == 1000


def test_csv_header_names_the_label_column(tmp_path, imagenet_tiny):
    folder = _flat(tmp_path, 2)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,wnid,class_index,name\nimg0.png,n01443537,1,goldfish\nimg1.png,n01440764,0,tench\n")
    assert build_bank(imagenet_tiny, images=folder, labels=labels).labels.tolist() == [1, 0]


@pytest.mark.parametrize("rows, message", [
    ("file,label\n,3\n", "line 2: empty file name"),
    ("file,label\nimg0.png\n", "line 2: missing label"),
    ("file,label\nimg0.png,\n", "line 2: missing label"),
    ("file,label\nimg0.png,0\n\nimg1.png,Cats\n", "line 4: label 'Cats' is not a class index or a class name"),
    ("file,label\nimg0.png,-1\n", "line 2: label '-1' is not a class index"),
    ("file,label\nimg0.png,1000\n", r"line 2: class index 1000 is not a class of the model \(0-999\)"),
    ("file,label\n", "lists no images"),
    # a listed file that is not there: refused before any work, as evaluate refuses its labels.csv
    ("file,label\nimg0.png,0\nnope.png,1\nimg1.png,1\ngone.png,2\n",
     r"lists 2 file\(s\) that are not in .*, first 'nope.png' \(line 3\); fix the CSV"),
])
def test_csv_errors_name_the_line(tmp_path, imagenet_tiny, rows, message):
    folder = _flat(tmp_path, 2)
    labels = tmp_path / "labels.csv"
    labels.write_text(rows)
    with pytest.raises(InputError, match=message):
        build_bank(imagenet_tiny, images=folder, labels=labels)


def test_labels_without_images_is_refused(tmp_path, imagenet_tiny):
    (tmp_path / "labels.csv").write_text("file,label\na.png,0\n")
    with pytest.raises(InputError, match="--labels .*--images"):
        build_bank(imagenet_tiny, labels=tmp_path / "labels.csv")


# ---- progress ---------------------------------------------------------------------------------


class _Recorder:
    made: list["_Recorder"] = []

    def __init__(self, total, label="", stream=None, enabled=True, unit="img"):
        self.total, self.enabled, self.done, self.closed = total, enabled, 0, False
        _Recorder.made.append(self)

    def update(self, n=1):
        self.done += n

    def close(self):
        self.closed = True


@pytest.mark.parametrize("source", ["world", "folder"])
def test_the_embedding_loop_reports_progress(tmp_path, monkeypatch, source):
    monkeypatch.setattr(bank_module, "Progress", _Recorder)
    _Recorder.made = []
    dino = load_model("world-dino")
    if source == "world":
        build_bank(dino, n=10, batch_size=4, progress=True)
        total = 10
    else:
        root = _tree(tmp_path / "a", ["lantern", "beacon"], per_folder=3)
        (root / "beacon" / "broken.png").write_bytes(b"not an image")
        unreadable: list[str] = []
        build_bank(dino, images=root, batch_size=2, unreadable=unreadable, progress=True)
        total = 7  # the unreadable one counts as done (left out)
    (bar,) = _Recorder.made
    assert bar.enabled and bar.total == total and bar.done == total and bar.closed


def test_no_progress_unless_asked(monkeypatch):
    monkeypatch.setattr(bank_module, "Progress", _Recorder)
    _Recorder.made = []
    build_bank(load_model("world-dino"), n=4)
    assert all(not bar.enabled for bar in _Recorder.made)


# ---- --out --------------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_an_out_where_no_file_can_be_written_is_refused_before_any_work():
    # /proc passes a permission check (as root) but takes no new file
    with pytest.raises(InputError, match=r"--out /proc/vlx\.pt: cannot write in /proc"):
        check_out_file("/proc/vlx.pt")
    with pytest.raises(InputError, match=r"--out /proc/no/such/vlx\.pt: cannot write in /proc"):
        check_out_file("/proc/no/such/vlx.pt")


def test_check_out_file_keeps_the_existing_checks(tmp_path):
    check_out_file(tmp_path / "new" / "deeper" / "b.pt")  # folders that saving creates
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # the probe is gone
    (tmp_path / "b.pt").write_bytes(b"x")
    with pytest.raises(InputError, match="already exists"):
        check_out_file(tmp_path / "b.pt")
    check_out_file(tmp_path / "b.pt", force=True)
    with pytest.raises(InputError, match="is a folder"):
        check_out_file(tmp_path)


def test_a_failed_write_names_the_out_path(tmp_path, monkeypatch):
    bank = MemoryBank(torch.ones(2, 3), torch.tensor([0, 1]), 2, None, "m")

    def fail(self, path):
        raise FileNotFoundError(2, "No such file or directory", str(Path(path).parent / ".b.pt.x1y2.pt"))

    monkeypatch.setattr(MemoryBank, "save", fail)
    with pytest.raises(InputError, match=r"--out .*b\.pt: cannot write the bank \(No such file or directory\)") as err:
        save_bank(bank, tmp_path / "b.pt")
    assert ".x1y2" not in str(err.value)
