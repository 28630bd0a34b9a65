"""evaluate(): predictions mapped back to original pixels and COCO ids, then scored."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch import nn

from hcral.config import Config
from hcral.data.coco import CocoDetection
from hcral.data.transforms import build_transforms
from hcral.engine.evaluate import _merge, evaluate, to_coco_detections

# Non-contiguous category ids, so a label→id mix-up cannot score.
GT = {
    1: [(5, [10, 20, 30, 40]), (9, [60, 10, 30, 50])],
    2: [(9, [0, 0, 80, 60])],
    3: [],
}


@pytest.fixture
def dataset(tmp_path) -> CocoDetection:
    (tmp_path / "img").mkdir()
    images, anns = [], []
    for image_id, objs in GT.items():
        name = f"{image_id}.png"
        Image.new("RGB", (100, 80), (image_id * 40, 0, 0)).save(tmp_path / "img" / name)
        images.append({"id": image_id, "file_name": name, "width": 100, "height": 80})
        for cat, bbox in objs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    cats = [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    # min_size 40 halves the 100×80 images: predictions must be scaled back by 2.
    tf = build_transforms(train=False, min_size=[40], max_size=1000)
    return CocoDetection(path, tmp_path / "img", transforms=tf)


class ReplayModel(nn.Module):
    """Returns fixed detections in dataset order (eval runs unshuffled on one process)."""

    def __init__(self, outputs: list[dict]):
        super().__init__()
        self.outputs = outputs
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images, image_sizes):
        assert not self.training and not torch.is_grad_enabled()
        out = self.outputs[self.calls : self.calls + len(image_sizes)]
        self.calls += len(image_sizes)
        return [{k: v.to(images.device) for k, v in d.items()} for d in out]


def _oracle(ds: CocoDetection) -> list[dict]:
    outs = []
    for i in range(len(ds)):
        _, t = ds[i]
        outs.append(
            {"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
        )
    return outs


def _empty(n: int) -> list[dict]:
    return [
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "scores": torch.zeros(0),
        }
        for _ in range(n)
    ]


def _cfg(batch_size: int = 2, max_images: int = 0) -> Config:
    cfg = Config()
    cfg.eval.batch_size, cfg.eval.max_images = batch_size, max_images
    cfg.data.size_divisibility = 32
    return cfg


def test_empty_predictions_give_zero(dataset, device):
    model = ReplayModel(_empty(len(dataset))).to(device)
    metrics = evaluate(model, dataset, _cfg(), device)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(metrics)
    assert all(v == 0.0 for v in metrics.values())


def test_oracle_predictions_score_100_and_json_is_in_original_pixels(dataset, device, tmp_path):
    model = ReplayModel(_oracle(dataset)).to(device).train()
    out = tmp_path / "dets.json"
    metrics = evaluate(model, dataset, _cfg(), device, output_json=out)
    assert metrics["AP"] == pytest.approx(100.0)
    assert model.training  # mode restored
    dets = json.loads(out.read_text())
    got = sorted((d["image_id"], d["category_id"], d["bbox"]) for d in dets)
    want = sorted((i, c, b) for i, objs in GT.items() for c, b in objs)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    for (_, _, gb), (_, _, wb) in zip(got, want):
        assert gb == pytest.approx(wb, abs=1e-4)


def test_max_images_evaluates_a_prefix(dataset):
    # Only image 1 is predicted (the rest empty): AP is 100 on the 1-image prefix only.
    outs = _oracle(dataset)[:1] + _empty(len(dataset) - 1)
    assert evaluate(ReplayModel(outs), dataset, _cfg(1, max_images=1), "cpu")[
        "AP"
    ] == pytest.approx(100.0)
    assert evaluate(ReplayModel(outs), dataset, _cfg(1), "cpu")["AP"] < 100.0


def test_to_coco_detections_hand_values():
    det = {
        "boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0], [-1.0, 0.0, 60.0, 45.0]]),
        "scores": torch.tensor([0.9, 0.5]),
        "labels": torch.tensor([1, 0]),
    }
    target = {"image_id": torch.tensor(7), "scale": 0.5, "orig_size": (80, 100)}
    dets = to_coco_detections(det, target, {0: 3, 1: 11})
    assert dets[0] == {
        "image_id": 7,
        "category_id": 11,
        "bbox": [20.0, 10.0, 40.0, 40.0],
        "score": pytest.approx(0.9),
    }
    # second box: x1 -2 → 0 and x2 120 → 100 (clamped to the original 100×80 image)
    assert dets[1]["bbox"] == [0.0, 0.0, 100.0, 80.0]
    assert dets[1]["category_id"] == 3


def test_merge_drops_sampler_padding_duplicates():
    a = ([{"image_id": 1}, {"image_id": 2}], [1, 2])
    b = ([{"image_id": 3}, {"image_id": 1}], [3, 1])  # rank 1 re-did image 1
    dets, ids = _merge([a, b])
    assert ids == [1, 2, 3]
    assert sorted(d["image_id"] for d in dets) == [1, 2, 3]


def test_dataset_without_ground_truth_is_refused():
    with pytest.raises(ValueError, match="ann_file"):
        evaluate(ReplayModel([]), [(torch.zeros(3, 8, 8), {})], _cfg(), "cpu")
