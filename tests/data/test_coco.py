"""CocoDetection: id mapping, crowd/negative images, and every validation error."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from hcral.data.coco import CocoDetection, DatasetError

H, W = 20, 30  # every test image is 20 high, 30 wide


def _png(path: Path, seed: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _coco() -> dict[str, Any]:
    """Three images (id 5 with two objects, id 6 with a crowd box, id 9 without any)."""
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in (5, 6, 9)],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 40, "bbox": [1, 2, 3, 4], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 7, "bbox": [10, 0, 20, 20]},
            {"id": 3, "image_id": 6, "category_id": 2, "bbox": [0, 0, 30, 20], "iscrowd": 1},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 40, "name": "o"}],
    }


def _write(tmp_path: Path, coco: Any, text: str | None = None) -> tuple[Path, Path]:
    ann = tmp_path / "ann.json"
    ann.write_text(text if text is not None else json.dumps(coco))
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for i in (5, 6, 9):
        if not (images / f"{i}.png").exists():
            _png(images / f"{i}.png", seed=i)
    return ann, images


def _by_id(ds: CocoDetection) -> dict[int, dict[str, Any]]:
    return {t["image_id"]: t for t in (ds[i][1] for i in range(len(ds)))}


def test_noncontiguous_category_ids_map_to_contiguous_labels_and_back(tmp_path):
    ds = CocoDetection(*_write(tmp_path, _coco()))
    assert ds.cat_ids == [2, 7, 40]
    assert ds.class_names == ["dog", "cat", "o"]
    assert ds.num_classes == 3
    assert [ds.label_to_cat_id[ds.cat_id_to_label[c]] for c in (2, 7, 40)] == [2, 7, 40]
    targets = _by_id(ds)
    assert targets[5]["labels"].tolist() == [2, 1]  # category 40 → label 2, 7 → 1
    assert targets[5]["labels"].dtype == torch.int64


def test_boxes_are_converted_from_xywh_to_xyxy(tmp_path):
    targets = _by_id(CocoDetection(*_write(tmp_path, _coco())))
    expected = torch.tensor([[1.0, 2.0, 4.0, 6.0], [10.0, 0.0, 30.0, 20.0]])
    torch.testing.assert_close(targets[5]["boxes"], expected)


def test_crowd_kept_and_images_without_annotations_kept(tmp_path):
    ds = CocoDetection(*_write(tmp_path, _coco()))
    assert sorted(ds.image_ids) == [5, 6, 9]
    targets = _by_id(ds)
    assert targets[6]["iscrowd"].tolist() == [True]
    assert targets[5]["iscrowd"].tolist() == [False, False]  # missing iscrowd means 0
    assert targets[9]["boxes"].shape == (0, 4)
    assert targets[9]["labels"].shape == (0,)
    assert targets[9]["iscrowd"].dtype == torch.bool


def test_without_transforms_yields_unscaled_float_image(tmp_path):
    ann, images = _write(tmp_path, _coco())
    pixels = _png(images / "5.png", seed=123)
    ds = CocoDetection(ann, images)
    index = ds.image_ids.index(5)
    image, target = ds[index]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert target["orig_size"] == target["size"] == (H, W)
    assert target["scale"] == 1.0


def test_transforms_receive_pil_image_and_target(tmp_path):
    seen = {}

    def transform(image, target):
        seen["size"] = image.size
        return torch.zeros(3, 2, 2), {**target, "size": (2, 2), "scale": 0.1}

    ds = CocoDetection(*_write(tmp_path, _coco()), transforms=transform)
    image, target = ds[0]
    assert seen["size"] == (W, H) and image.shape == (3, 2, 2) and target["scale"] == 0.1


def test_box_mostly_inside_is_clipped(tmp_path):
    coco = _coco()
    coco["annotations"][0]["bbox"] = [-1, 15, 10, 10]  # 9x5 of 10x10 inside: 45% → error
    with pytest.raises(DatasetError, match="outside"):
        CocoDetection(*_write(tmp_path, coco))
    coco["annotations"][0]["bbox"] = [-1, 12, 10, 10]  # 9x8 inside: 72% → clipped
    ds = CocoDetection(*_write(tmp_path, coco))
    assert ds.num_clipped == 1
    torch.testing.assert_close(_by_id(ds)[5]["boxes"][0], torch.tensor([0.0, 12.0, 9.0, 20.0]))


def _set(section: str, index: int, key: str, value: Any):
    def mutate(coco):
        if value is _DELETE:
            del coco[section][index][key]
        else:
            coco[section][index][key] = value

    return mutate


_DELETE = object()

# name: (mutation of _coco(), counter key under skip_bad, fragments the error must name)
BROKEN = {
    "missing bbox": (_set("annotations", 0, "bbox", _DELETE), "bad_annotation", ["5", "'bbox'"]),
    "bad iscrowd": (_set("annotations", 0, "iscrowd", 2), "bad_annotation", ["5", "'iscrowd'"]),
    "unknown category": (
        _set("annotations", 0, "category_id", 3),
        "unknown_category_id",
        ["image id 5", "'category_id'", "3"],
    ),
    "unknown image": (
        _set("annotations", 0, "image_id", 77),
        "unknown_image_id",
        ["image id 77", "'image_id'"],
    ),
    "bbox of 3": (_set("annotations", 0, "bbox", [1, 2, 3]), "bad_bbox", ["image id 5", "'bbox'"]),
    "bbox text": (_set("annotations", 0, "bbox", [1, 2, "a", 3]), "bad_bbox", ["5", "'bbox'"]),
    "zero width": (
        _set("annotations", 0, "bbox", [1, 2, 0, 4]),
        "degenerate_box",
        ["image id 5", "'bbox'", "<= 0"],
    ),
    "negative height": (
        _set("annotations", 0, "bbox", [1, 2, 3, -4]),
        "degenerate_box",
        ["image id 5", "'bbox'"],
    ),
    "entirely outside": (
        _set("annotations", 0, "bbox", [31, 2, 3, 4]),
        "box_outside_image",
        ["image id 5", "'bbox'", "30x20"],
    ),
    "missing file": (
        _set("images", 0, "file_name", "nope.png"),
        "missing_file",
        ["image id 5", "'file_name'", "nope.png"],
    ),
    "missing width": (_set("images", 0, "width", _DELETE), "bad_image", ["image id 5", "'width'"]),
    "zero height": (_set("images", 0, "height", 0), "bad_image", ["image id 5", "'height'"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_entry_raises_naming_image_and_field(tmp_path, case):
    mutate, kind, fragments = BROKEN[case]
    coco = _coco()
    mutate(coco)
    ann, images = _write(tmp_path, coco)
    with pytest.raises(DatasetError) as err:
        CocoDetection(ann, images)
    for fragment in [str(ann), *fragments]:
        assert fragment in str(err.value)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_entry_skipped_and_counted(tmp_path, case):
    mutate, kind, _ = BROKEN[case]
    coco = _coco()
    mutate(coco)
    with pytest.warns(UserWarning, match=kind) as record:
        ds = CocoDetection(*_write(tmp_path, coco), skip_bad=True)
    assert len(record) == 1  # one summary warning, not one per entry
    image_dropped = kind in ("missing_file", "bad_image")
    assert dict(ds.skipped) == ({kind: 1, "of_skipped_image": 2} if image_dropped else {kind: 1})
    targets = _by_id(ds)
    assert sorted(targets) == ([6, 9] if image_dropped else [5, 6, 9])
    if not image_dropped:  # only the broken annotation is gone
        torch.testing.assert_close(targets[5]["boxes"], torch.tensor([[10.0, 0, 30, 20]]))
    assert targets[6]["iscrowd"].tolist() == [True]


def test_clean_dataset_warns_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoDetection(*_write(tmp_path, _coco()), skip_bad=True)
    assert not ds.skipped


def test_duplicate_image_id_is_an_error_even_when_skipping(tmp_path):
    coco = _coco()
    coco["images"][1]["id"] = 5
    with pytest.raises(DatasetError, match="duplicate image id 5"):
        CocoDetection(*_write(tmp_path, coco), skip_bad=True)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"images": [', "malformed JSON at line 1"),
        ("[1, 2]", "top level must be an object"),
        ('{"images": [], "categories": [{"id": 1}]}', "missing top-level key 'annotations'"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
        ('{"images": [], "annotations": [], "categories": []}', "'categories' is empty"),
        (
            '{"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 1}]}',
            "duplicate category id 1",
        ),
        ('{"images": [], "annotations": [], "categories": [{"id": "a"}]}', r"categories\[0\]"),
    ],
)
def test_malformed_file_errors_name_the_file(tmp_path, text, match):
    ann, images = _write(tmp_path, None, text=text)
    with pytest.raises(DatasetError, match=match) as err:
        CocoDetection(ann, images, skip_bad=True)
    assert str(ann) in str(err.value)


def test_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        CocoDetection(tmp_path / "missing.json", tmp_path)


def test_empty_dataset_is_an_error(tmp_path):
    coco = _coco()
    coco["images"], coco["annotations"] = [], []
    with pytest.raises(DatasetError, match="no usable images"):
        CocoDetection(*_write(tmp_path, coco))


def test_dataset_with_every_image_skipped_is_an_error(tmp_path):
    coco = _coco()
    for img in coco["images"]:
        img["file_name"] = "gone.png"
    with pytest.raises(DatasetError, match="no usable images"):
        CocoDetection(*_write(tmp_path, coco), skip_bad=True)


def _corrupt(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"this is not a png" * 10)
    else:  # truncated: a valid PNG of noise cut in half
        _png(path, size=(64, 64))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_image_error_names_the_file(tmp_path, how):
    ann, images = _write(tmp_path, _coco())
    _corrupt(images / "6.png", how)
    ds = CocoDetection(ann, images)
    index = ds.image_ids.index(6)
    with pytest.raises(DatasetError, match="6.png"):
        ds[index]


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_image_skipped_serves_next_and_counts(tmp_path, how):
    ann, images = _write(tmp_path, _coco())
    _corrupt(images / "6.png", how)
    ds = CocoDetection(ann, images, skip_bad=True)
    index = ds.image_ids.index(6)
    with pytest.warns(UserWarning, match="6.png"):
        _, target = ds[index]
    assert target["image_id"] == ds.image_ids[(index + 1) % len(ds)]
    assert ds.skipped["corrupt_image"] == 1
    ds[index]  # a known-bad image is not retried or counted twice
    assert ds.skipped["corrupt_image"] == 1


def test_image_size_disagreeing_with_json_is_an_error(tmp_path):
    ann, images = _write(tmp_path, _coco())
    _png(images / "9.png", size=(W, H))  # transposed
    ds = CocoDetection(ann, images)
    with pytest.raises(DatasetError, match=r"image id 9 is 20x30 .* say 30x20"):
        ds[ds.image_ids.index(9)]


def test_index_out_of_range(tmp_path):
    ds = CocoDetection(*_write(tmp_path, _coco()))
    with pytest.raises(IndexError):
        ds[3]
    assert ds[-1][1]["image_id"] == ds.image_ids[-1]
