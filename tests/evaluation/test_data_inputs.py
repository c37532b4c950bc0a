"""The data of `evaluate`, read as users write it: (image, label) pairs that mix class names and
indices (one InputError, not a bare StopIteration) and a labels.csv saved by Excel (a UTF-8
byte-order mark) or with a bad row (a message that says what is wrong, on which line)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visionlens.cli import main
from visionlens.data.datasets import match_classes, pairs
from visionlens.errors import InputError
from visionlens.evaluation import evaluate
from visionlens.evaluation.data import parse_data
from visionlens.models import Preprocess

from helpers import TinyGapNet, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (36, 40, 3), dtype=np.uint8))


# ---- (image, label) pairs ----------------------------------------------------------------------


def test_pairs_that_mix_names_and_indices_are_one_input_error(tmp_path):
    _image().save(tmp_path / "a.png")
    with pytest.raises(InputError, match=r"must all be class indices \(int\) or all class names \(str\), not a mix: "
                                         r"item 0 has the name 'bird' and item 1 the index 1"):
        pairs([(_image(), "bird"), (str(tmp_path / "a.png"), 1)], None)


def test_evaluate_with_mixed_labels_raises_the_input_error(tmp_path):
    torch.manual_seed(0)
    module = TinyGapNet(classes=3).eval()
    module.preprocess = Preprocess(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    module.class_names = ("cat", "big dog", "bird")
    with pytest.raises(InputError, match="not a mix"):
        evaluate({"tiny": module}, ["gradcam"], data=[(_image(), "bird"), (_image(1), 1)], out=tmp_path / "out",
                 device="cpu", progress=False, metrics=["deletion"], step=256)
    assert not (tmp_path / "out").exists()


def test_pairs_name_a_label_of_another_type():
    with pytest.raises(InputError, match=r"item 1 has the label 1\.5"):
        pairs([(_image(), 0), (_image(1), 1.5)], None)


def test_pairs_take_numpy_integer_labels():
    found = pairs([(_image(), np.int64(2)), (_image(1), np.int32(0))], None)
    assert [lab for _, _, lab in found.items] == [2, 0] and found.classes is None
    assert all(type(lab) is int for _, _, lab in found.items)


def test_match_classes_names_the_flag_and_the_kind_of_name():
    assert match_classes(["Big_Dog", "0"], ("cat", "big dog"), "m", "d") == [1, 0]
    with pytest.raises(InputError, match=r"^--images root: folder 'cow' is none of the classes of model 'm'"):
        match_classes(["cat", "cow"], ("cat", "big dog"), "m", "root", flag="--images", noun="folder")


def test_a_model_without_class_names_reads_numbers_as_indices_only_when_every_class_is_one():
    assert match_classes(["0", "2", "7"], None, "m", "d") == [0, 2, 7]
    assert match_classes(["apple", "pear"], None, "m", "d") == [0, 1]
    # '1' and 'apple' used to be class 1 both: a mix takes the folder order, as ImageFolder does
    assert match_classes(["1", "apple"], None, "m", "d") == [0, 1]


# ---- labels.csv ----------------------------------------------------------------------------------


def _folder(tmp_path, text: bytes):
    folder = tmp_path / "data"
    folder.mkdir()
    _image().save(folder / "a.png")
    _image(1).save(folder / "b.png")
    (folder / "labels.csv").write_bytes(text)
    return folder


def test_labels_csv_with_a_byte_order_mark_is_read(tmp_path):
    folder = _folder(tmp_path, b"\xef\xbb\xbffile,class_index\r\na.png,0\r\nb.png,3\r\n")
    parsed = parse_data(str(folder))
    assert [(key, lab) for key, _, lab in parsed["items"]] == [("a.png", 0), ("b.png", 3)]


@pytest.mark.parametrize("text, message", [
    (b"file,class_index\n,3\n", "labels.csv line 2: empty file name"),
    (b"file,class_index\na.png,0\n  ,3\n", "labels.csv line 3: empty file name"),
    (b"file,class_index\na.png\n", "labels.csv line 2: missing class_index"),
    (b"file,class_index\na.png,\n", "labels.csv line 2: missing class_index"),
    (b"file,class_index\na.png,0\n\nb.png,x\n", "labels.csv line 4: class_index 'x' is not a whole number"),
    (b"file,class_index\n", "labels.csv lists no images"),
    (b"", "labels.csv needs the columns file,class_index (it is empty)"),
    (b"name,label\na.png,0\n", "labels.csv needs the columns file,class_index (its first line: name,label)"),
])
def test_labels_csv_errors_say_what_is_wrong(tmp_path, text, message):
    folder = _folder(tmp_path, text)
    with pytest.raises(InputError) as err:
        parse_data(str(folder))
    assert message in str(err.value), str(err.value)


def test_the_cli_reports_a_bad_labels_row_on_one_line(tmp_path, capsys):
    folder = _folder(tmp_path, b"\xef\xbb\xbffile,class_index\na.png\n")
    code = main(["evaluate", "--models", "mobilenet_v2", "--methods", "gradcam", "--data", str(folder),
                 "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 2
    one_error_line(capsys.readouterr().err, "labels.csv line 2: missing class_index")
