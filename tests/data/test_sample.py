"""The built-in sample dataset: determinism, validity as COCO, and its documented shape."""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from hcral.data.coco import CocoDetection
from hcral.data.sample import (
    CATEGORY_IDS,
    _compose,
    _iou,
    _load_sources,
    _tight_box,
    make_sample,
)

SMALL = {"num_train": 24, "num_val": 6, "image_size": 256}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    make_sample(out, seed=0, **SMALL)
    return out


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes(sample, tmp_path):
    make_sample(tmp_path, seed=0, **SMALL)
    digest = _digest(tmp_path)
    assert len(digest) == 2 + SMALL["num_train"] + SMALL["num_val"]
    assert digest == _digest(sample)


def test_other_seed_gives_other_data(sample, tmp_path):
    make_sample(tmp_path, seed=1, **SMALL)
    ours, theirs = _digest(tmp_path), _digest(sample)
    assert ours["train/000000.png"] != theirs["train/000000.png"]
    assert ours["annotations/train.json"] != theirs["annotations/train.json"]


def test_images_do_not_depend_on_split_sizes(sample, tmp_path):
    make_sample(tmp_path, seed=0, num_train=3, num_val=1, image_size=256)
    small, full = _digest(tmp_path), _digest(sample)
    for name in ("train/000000.png", "train/000002.png", "val/000000.png"):
        assert small[name] == full[name]


def test_returned_paths_load_without_warnings(sample):
    paths = make_sample(sample, seed=0, **SMALL)  # identical sample: kept as is
    for split in ("train", "val"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = CocoDetection(paths[f"{split}_json"], paths[f"{split}_images"])
        assert len(ds) == SMALL[f"num_{split}"] and not ds.skipped and ds.num_clipped == 0
        assert ds.cat_ids == list(CATEGORY_IDS) and len(ds.class_names) >= 5
        image, target = ds[0]
        assert image.shape == (3, 256, 256)


def test_pycocotools_loads_it_and_boxes_lie_inside(sample):
    coco = COCO(str(sample / "annotations" / "train.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= SMALL["num_train"]  # 1–6 per image on average ~3.5
    for ann in anns:
        x, y, w, h = ann["bbox"]
        img = coco.imgs[ann["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
        assert w > 0 and h > 0 and ann["area"] == w * h and ann["iscrowd"] == 0
    assert len({a["category_id"] for a in anns}) >= 5


def test_object_sizes_span_small_to_large(sample):
    anns = json.loads((sample / "annotations" / "train.json").read_text())["annotations"]
    heights = np.array([a["bbox"][3] for a in anns])
    assert heights.min() >= 8 and heights.max() <= 128
    sides = np.sqrt([a["area"] for a in anns])
    assert (sides < 32).any() and (sides > 64).any()


def test_objects_overlap_at_most_the_documented_iou(sample):
    anns = json.loads((sample / "annotations" / "train.json").read_text())["annotations"]
    for _, group in itertools.groupby(anns, key=lambda a: a["image_id"]):
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in group)]
        for a, b in itertools.combinations(boxes, 2):
            assert _iou(a, b) <= 0.3


def test_some_images_have_no_objects():
    photos, pools = _load_sources()
    counts = [
        len(_compose(np.random.default_rng([7, i]), photos, pools["train"], 64)[1])
        for i in range(120)
    ]
    assert 0 in counts and max(counts) <= 6


def test_train_and_val_use_disjoint_digit_scans():
    _, pools = _load_sources()
    for train, val in zip(pools["train"], pools["val"]):
        assert 0.15 < len(val) / (len(train) + len(val)) < 0.25
        train_set = {scan.tobytes() for scan in train}
        assert sum(scan.tobytes() in train_set for scan in val) <= 1  # the UCI set has few repeats


def test_tight_box_and_iou_hand_values():
    alpha = np.zeros((6, 8), dtype=np.float32)
    alpha[1:4, 2:7] = 1.0
    alpha[5, 0] = 0.2  # below the ink threshold
    assert _tight_box(alpha) == (2, 1, 7, 4)
    assert _tight_box(np.zeros((3, 3), dtype=np.float32)) is None
    assert _iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(2 / 6)


def test_existing_sample_with_other_parameters_needs_overwrite(tmp_path):
    make_sample(tmp_path, num_train=3, num_val=1, image_size=64)
    with pytest.raises(ValueError, match="overwrite=True"):
        make_sample(tmp_path, num_train=2, num_val=1, image_size=64)
    make_sample(tmp_path, num_train=2, num_val=1, image_size=64, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["000000.png", "000001.png"]
    coco = json.loads((tmp_path / "annotations" / "train.json").read_text())
    assert len(coco["images"]) == 2


def test_incomplete_sample_is_regenerated(tmp_path):
    make_sample(tmp_path, num_train=2, num_val=1, image_size=64)
    before = _digest(tmp_path)
    (tmp_path / "train" / "000001.png").unlink()
    make_sample(tmp_path, num_train=2, num_val=1, image_size=64)
    assert _digest(tmp_path) == before


def test_foreign_dataset_is_not_overwritten(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="already holds a dataset"):
        make_sample(tmp_path, num_train=1, num_val=1, image_size=64)


@pytest.mark.parametrize(
    "kwargs", [{"num_train": 0}, {"num_val": -1}, {"image_size": 16}, {"seed": 1.5}]
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_sample(tmp_path, **kwargs)
