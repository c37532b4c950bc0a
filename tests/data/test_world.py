"""The synthetic world: determinism, exact masks, label-independent distractors, the CLI sheet."""

import numpy as np
import pytest
import torch

from visionlens.cli import main
from visionlens.data.world import (
    CLASSES, DISTRACTOR_COLOURS, MAX_PARTS, NUM_CLASSES, PART_COLOURS, PARTS, Domain, World, WorldConfig,
    WorldDataset,
)


@pytest.fixture(scope="module")
def batch():
    return World(WorldConfig(size=64, occlusion=0.3), seed=3).batch("train", range(64))


def test_same_seed_same_images_and_masks_in_any_batch():
    a = World(WorldConfig(size=48), seed=7).batch("val", range(10))
    b = World(WorldConfig(size=48), seed=7).batch("val", [4, 5, 6])
    for key in a:
        assert torch.equal(a[key][4:7], b[key]), key
    c = World(WorldConfig(size=48), seed=8).batch("val", range(10))
    assert not torch.equal(a["image"], c["image"])
    d = World(WorldConfig(size=48), seed=7).batch("test", range(10))
    assert not torch.equal(a["image"], d["image"])


def test_masks_cover_exactly_the_drawn_pixels(batch):
    img = batch["image"]
    parts, dis, obj = batch["part_masks"], batch["distractor_masks"], batch["object_mask"]
    # disjoint visible masks; the object is the union of its parts
    layers = torch.cat([parts, dis], 1).sum(1)
    assert int(layers.max()) <= 1
    assert torch.equal(obj, parts.any(1))
    # every masked pixel carries its element's exact colour
    for i in range(img.shape[0]):
        for k in range(MAX_PARTS):
            pid = int(batch["part_ids"][i, k])
            if pid < 0:
                assert not parts[i, k].any()
                continue
            colour = torch.tensor(PART_COLOURS[PARTS[pid][1]])
            pix = img[i][:, parts[i, k]]
            assert pix.shape[1] > 0 and torch.allclose(pix, colour[:, None].expand_as(pix))
    # removing object and distractors changes exactly the masked pixels
    world = World(WorldConfig(size=64, occlusion=0.3), seed=3)
    bare = world.batch("train", range(64), remove_object=True, remove_distractors=True)["image"]
    changed = (img != bare).any(1)
    assert torch.equal(changed, obj | dis.any(1))
    # boxes are tight around the visible distractor pixels
    for i in range(8):
        for k in range(dis.shape[1]):
            if dis[i, k].any():
                ys, xs = dis[i, k].nonzero(as_tuple=True)
                assert batch["distractor_boxes"][i, k].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_every_class_has_two_to_four_parts_and_every_part_is_shared():
    assert NUM_CLASSES >= 10
    uses = np.zeros(len(PARTS), dtype=int)
    for _, parts in CLASSES:
        assert 2 <= len(parts) <= 4
        for pid, *_ in parts:
            uses[pid] += 1
    assert (uses >= 2).all()
    assert len({frozenset(p[0] for p in parts) for _, parts in CLASSES}) == NUM_CLASSES
    assert not {tuple(c) for c in DISTRACTOR_COLOURS} & set(PART_COLOURS.values())


def test_label_is_independent_of_distractors():
    scenes = World(WorldConfig(size=32), seed=0).scenes("train", range(5000))
    labels = np.array([s["label"] for s in scenes])
    counts = np.array([int(s["layers"][MAX_PARTS:, 8].sum()) for s in scenes])
    table = np.zeros((NUM_CLASSES, 4))
    np.add.at(table, (labels, counts), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert chi2 < 55.48  # chi-square critical value, 27 degrees of freedom, p = 0.001
    assert (np.bincount(labels, minlength=NUM_CLASSES) > 400).all()


def test_domain_knobs_change_the_look_not_the_truth():
    base = World(WorldConfig(size=32), seed=1).batch("test", range(6))
    shifted = World(WorldConfig(size=32, domain=Domain(hue_shift=90, blur=1.0, noise=0.05)), seed=1).batch("test", range(6))
    assert torch.equal(base["object_mask"], shifted["object_mask"]) and torch.equal(base["label"], shifted["label"])
    assert (base["image"] - shifted["image"]).abs().mean() > 0.05
    assert 0 <= float(shifted["image"].min()) and float(shifted["image"].max()) <= 1


def test_views_keep_the_object_and_change_the_context():
    world = World(WorldConfig(size=32), seed=2)
    a, b = world.batch("train", range(8)), world.batch("train", range(8), view=1)
    assert torch.equal(a["label"], b["label"]) and torch.equal(a["part_ids"], b["part_ids"])
    assert not torch.equal(a["object_mask"], b["object_mask"])


def test_dataset_splits_and_items():
    train, test = WorldDataset("train", length=10), WorldDataset("test", length=10, with_masks=True)
    image, label = train[3]
    assert image.shape == (3, 64, 64) and 0 <= int(label) < NUM_CLASSES and len(train) == 10
    sample = test[0]
    assert sample["part_masks"].shape == (4, 64, 64)
    with pytest.raises(IndexError):
        train[10]
    with pytest.raises(ValueError, match="unknown split"):
        WorldDataset("holdout")


def test_contact_sheet_cli(tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["world", "--out", str(out), "--n", "4", "--size", "48", "--occlusion", "0.5"]) == 0
    from PIL import Image

    with Image.open(out) as img:
        assert img.size[0] > 3 * 48 and img.size[1] > 48
