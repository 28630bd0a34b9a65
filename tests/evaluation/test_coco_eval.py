"""coco_evaluate against hand-made ground truth with hand-computed AP."""

from __future__ import annotations

import copy
import json
import math

import pytest
from pycocotools.coco import COCO

from hcral.evaluation import METRICS, coco_evaluate


def _gt_dict() -> dict:
    """Two images, two classes; every box is large (area > 96²) except one medium box."""
    return {
        "images": [
            {"id": 1, "width": 200, "height": 200, "file_name": "a.png"},
            {"id": 2, "width": 200, "height": 200, "file_name": "b.png"},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [100, 100, 50, 50]},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [50, 50, 120, 110]},
        ],
    }


def _coco() -> COCO:
    coco = COCO()
    coco.dataset = _gt_dict()
    coco.createIndex()
    return coco


def _perfect() -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in _gt_dict()["annotations"]
    ]


def test_perfect_detections_give_100():
    metrics = coco_evaluate(_coco(), _perfect())
    assert metrics["AP"] == pytest.approx(100.0)
    assert metrics["AP50"] == pytest.approx(100.0)
    assert metrics["APm"] == pytest.approx(100.0)  # the 50×50 dog
    assert math.isnan(metrics["APs"])  # no small ground truth: undefined, not -1


def test_empty_detections_give_zeros_without_crashing():
    metrics = coco_evaluate(_coco(), [], per_class=True)
    assert set(METRICS) <= set(metrics)
    assert all(v == 0.0 for v in metrics.values())
    assert {"AP/cat", "AP/dog"} <= set(metrics)


def test_higher_scored_false_positive_halves_precision():
    # One cat GT on image 1 only; an FP (score .9) ranks above the TP (score .8):
    # precision at recall 1 is 1/2, so the interpolated AP is 50 at every IoU.
    dets = [
        {"image_id": 1, "category_id": 3, "bbox": [150, 150, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100], "score": 0.8},
    ]
    metrics = coco_evaluate(_coco(), dets, image_ids=[1], per_class=True)
    # dog has a GT on image 1 but no detection: AP 0; mean over classes = 25.
    assert metrics["AP/cat"] == pytest.approx(50.0)
    assert metrics["AP/dog"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(25.0)


def test_half_recall_gives_51_of_101_recall_points():
    # cat has 2 GTs (images 1 and 2); detecting one perfectly reaches recall .5 at
    # precision 1: COCO's 101-point AP is 51/101.
    dets = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100], "score": 0.5}]
    metrics = coco_evaluate(_coco(), dets, per_class=True)
    assert metrics["AP/cat"] == pytest.approx(100 * 51 / 101)


def test_iou_062_counts_at_three_of_ten_thresholds():
    # IoU([0,0,100,100], [0,0,100,62]) = 0.62 passes 0.50, 0.55, 0.60 only.
    dets = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 62], "score": 0.5}]
    metrics = coco_evaluate(_coco(), dets, image_ids=[1], per_class=True)
    assert metrics["AP/cat"] == pytest.approx(30.0)
    dets.append({"image_id": 1, "category_id": 7, "bbox": [100, 100, 50, 50], "score": 0.5})
    metrics = coco_evaluate(_coco(), dets, image_ids=[1])
    assert metrics["AP50"] == pytest.approx(100.0)
    assert metrics["AP75"] == pytest.approx(50.0)  # dog only


def test_image_ids_restricts_evaluation():
    dets = [d for d in _perfect() if d["image_id"] == 1]
    assert coco_evaluate(_coco(), dets, image_ids=[1])["AP"] == pytest.approx(100.0)
    assert coco_evaluate(_coco(), dets)["AP"] < 100.0  # image 2's cat is missed


def test_detections_not_mutated_and_path_input(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_gt_dict()))
    dets = _perfect()
    before = copy.deepcopy(dets)
    assert coco_evaluate(path, dets)["AP"] == pytest.approx(100.0)
    assert dets == before


def test_quiet_unless_verbose(capsys):
    coco = _coco()
    capsys.readouterr()
    coco_evaluate(coco, _perfect())
    assert capsys.readouterr().out == ""
    coco_evaluate(coco, _perfect(), verbose=True)
    assert "Average Precision" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("det", "field"),
    [
        ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}, "score"),
        ({"image_id": 9, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}, "image_id"),
        ({"image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1], "score": 1.0}, "category_id"),
        ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 1], "score": 1.0}, "bbox"),
    ],
)
def test_bad_detection_names_the_field(det, field):
    with pytest.raises(ValueError, match=field):
        coco_evaluate(_coco(), [det])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(_coco(), [], iou_type="keypoints")
    with pytest.raises(ValueError, match="missing.json"):
        coco_evaluate(tmp_path / "missing.json", [])
