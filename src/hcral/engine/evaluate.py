"""COCO evaluation of a detector over a dataset, single- or multi-process.

Each rank predicts its shard of the dataset (a ``DistributedSampler`` without shuffle),
maps boxes back to original-image pixels and labels back to COCO category ids, and the
main process gathers everything, scores it with pycocotools and shares the metrics with
every rank, so all ranks return the same dict (metrics in percent, 0-100).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from hcral.boxes import clip_boxes
from hcral.config import Config
from hcral.engine.distributed import all_gather_object, get_world_size, is_main_process
from hcral.evaluation import coco_evaluate
from hcral.fileio import atomic_write_text

log = logging.getLogger(__name__)


def to_coco_detections(
    det: Mapping[str, Tensor], target: Mapping[str, Any], label_to_cat_id: Mapping[int, int]
) -> list[dict[str, Any]]:
    """One image's detections in COCO results format (original-image pixels).

    Args:
        det: ``boxes`` (K, 4) xyxy in resized-image pixels, ``scores`` (K,), ``labels``
            (K,) int64 in 0..C-1.
        target: the dataset target: ``image_id``, ``scale`` (resized / original) and
            ``orig_size`` (h, w).
        label_to_cat_id: contiguous label -> COCO category id.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.
    """
    boxes = det["boxes"].detach().float().cpu() / float(target["scale"])  # (K, 4)
    # Resize rounding can push a box a fraction of a pixel past the original border.
    boxes = clip_boxes(boxes, tuple(target["orig_size"]))
    xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
    scores = det["scores"].detach().float().cpu().tolist()
    labels = det["labels"].detach().cpu().tolist()
    image_id = int(target["image_id"])
    return [
        {"image_id": image_id, "category_id": int(label_to_cat_id[l]), "bbox": b, "score": s}
        for b, s, l in zip(xywh, scores, labels)
    ]


def _loader(dataset: Dataset, cfg: Config) -> DataLoader:
    from hcral.data.collate import collate

    sampler = None
    if get_world_size() > 1:
        # Padding repeats a few images on the last ranks; the gather de-duplicates them.
        sampler = DistributedSampler(dataset, shuffle=False, drop_last=False)
    return DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=partial(collate, size_divisibility=cfg.data.size_divisibility),
    )


@torch.no_grad()
def predict_dataset(
    model: nn.Module, loader: DataLoader, label_to_cat_id: Mapping[int, int], device: torch.device
) -> tuple[list[dict[str, Any]], list[int]]:
    """Run the model over ``loader``; returns COCO detections and the image ids seen."""
    detections: list[dict[str, Any]] = []
    image_ids: list[int] = []
    amp = device.type == "cuda"
    for batch in loader:
        images = batch.images.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp):
            outputs = model(images, batch.image_sizes)
        for det, target in zip(outputs, batch.targets):
            detections += to_coco_detections(det, target, label_to_cat_id)
            image_ids.append(int(target["image_id"]))
    return detections, image_ids


def _merge(parts: Sequence[tuple[list[dict], list[int]]]) -> tuple[list[dict], list[int]]:
    """Concatenate per-rank results, keeping each image once (sampler padding)."""
    seen: set[int] = set()
    detections: list[dict] = []
    for dets, ids in parts:
        new = set(ids) - seen
        detections += [d for d in dets if d["image_id"] in new]
        seen |= new
    return detections, sorted(seen)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    cfg: Config,
    device: str | torch.device,
    output_json: str | Path | None = None,
) -> dict[str, float]:
    """COCO box AP of ``model`` on ``dataset`` (every rank gets the same metrics).

    Args:
        model: a detector (or its DDP wrapper) whose eval forward is
            ``model(images, image_sizes) -> list of {boxes, scores, labels}``.
        dataset: a :class:`hcral.data.CocoDetection` with evaluation transforms; its
            ``ann_file`` is the ground truth and ``label_to_cat_id`` maps labels back.
        cfg: uses ``eval.batch_size``, ``eval.max_images`` (> 0: that prefix only),
            ``data.num_workers`` and ``data.size_divisibility``.
        device: where the model runs; autocast is used on CUDA.
        output_json: if given, the main process writes the detections there in COCO
            results format.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in percent.
    """
    device = torch.device(device)
    base = dataset
    missing = [a for a in ("ann_file", "label_to_cat_id") if not hasattr(base, a)]
    if missing:
        raise ValueError(
            f"dataset: {type(base).__name__} lacks {missing}; evaluate needs a CocoDetection"
        )
    if cfg.eval.max_images > 0:
        dataset = Subset(dataset, range(min(cfg.eval.max_images, len(dataset))))
    bare = getattr(model, "module", model)  # DDP's forward would sync buffers for nothing
    was_training = bare.training
    bare.eval()
    try:
        local = predict_dataset(bare, _loader(dataset, cfg), base.label_to_cat_id, device)
    finally:
        bare.train(was_training)
    parts = all_gather_object(local)
    metrics = None
    if is_main_process():
        detections, image_ids = _merge(parts)
        if output_json is not None:
            atomic_write_text(output_json, json.dumps(detections))
        metrics = coco_evaluate(base.ann_file, detections, image_ids=image_ids)
        log.info("evaluated %d images, %d detections", len(image_ids), len(detections))
    # all_gather_object doubles as a broadcast from rank 0.
    return all_gather_object(metrics)[0]
