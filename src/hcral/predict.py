"""Inference on image files: detections drawn onto PNGs plus one JSON of all boxes.

Weights come from a training checkpoint (``.pt``, loaded with ``weights_only=True``) or a
``.safetensors`` export. The model config and class names are read from the file:
checkpoints store ``config`` (``Config.to_dict()``) and, when the trainer saved them,
``class_names``; safetensors exports carry both as JSON strings in their metadata.
Where the class names are missing they are read from the ``categories`` of
``data.train_json`` named in the config (sorted by id, as :class:`CocoDetection`
numbers them), and as a last resort the labels are printed as numbers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hcral.boxes import clip_boxes
from hcral.config import Config, ConfigError, config_from_dict
from hcral.fileio import atomic_write_text

log = logging.getLogger(__name__)

# Distinct, readable box colours; class k gets PALETTE[k % len(PALETTE)].
PALETTE = [
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231",
    "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
]  # fmt: skip


def _read_weights(
    path: Path, which: str = "auto"
) -> tuple[dict[str, Tensor], dict[str, Any] | None, list | None]:
    """State dict, stored config dict and class names of a checkpoint or export."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        if not path.is_file():
            raise ValueError(f"checkpoint: weights file {str(path)!r} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        config = json.loads(meta["config"]) if "config" in meta else None
        names = json.loads(meta["class_names"]) if "class_names" in meta else None
        return load_file(str(path)), config, names
    from hcral.engine.checkpoint import inference_weights, load_checkpoint

    state = load_checkpoint(path)
    weights = inference_weights(state, which, repr(str(path)))
    return weights, state.get("config"), state.get("class_names")


def class_names_from_json(ann_file: str | Path) -> list[str] | None:
    """Category names of a COCO json in label order (sorted ids); None if unreadable."""
    try:
        cats = json.loads(Path(ann_file).read_text())["categories"]
        return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_detector(
    checkpoint: str | Path, cfg: Config | None = None, weights: str = "auto"
) -> tuple[nn.Module, Config, list[str]]:
    """Build the detector a checkpoint was trained as and load its weights (eval mode).

    Args:
        checkpoint: ``.pt`` training checkpoint or ``.safetensors`` export.
        cfg: overrides the config stored in the file (required if there is none).
        weights: ``"auto"`` (EMA weights if the run kept them), ``"ema"`` or ``"raw"``
            (the trained weights); see :func:`hcral.engine.checkpoint.inference_weights`.

    Returns:
        ``(model, cfg, class_names)``, the model on the CPU.
    """
    from hcral.models import build_model

    path = Path(checkpoint)
    state, stored, names = _read_weights(path, weights)
    if cfg is None:
        if stored is None:
            raise ConfigError(f"{path}: carries no config; pass one (hcral predict --config)")
        cfg = config_from_dict(stored, where=f"{path}: stored config")
    names = names or class_names_from_json(cfg.data.train_json)
    if cfg.model.num_classes <= 0:
        if not names:
            raise ConfigError(f"{path}: model.num_classes is 0 and no class names are known")
        cfg.model.num_classes = len(names)
    if not names or len(names) != cfg.model.num_classes:
        names = [str(i) for i in range(cfg.model.num_classes)]
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit model {cfg.model.name}: {e}"
        ) from e
    return model.eval(), cfg, names


def draw_detections(image: Tensor, det: dict[str, Tensor], class_names: Sequence[str]) -> Tensor:
    """Boxes with "name score" captions drawn on a ``(3, H, W)`` uint8 image."""
    from torchvision.utils import draw_bounding_boxes

    if len(det["boxes"]) == 0:
        return image
    labels = det["labels"].tolist()
    captions = [f"{class_names[l]} {s:.2f}" for l, s in zip(labels, det["scores"].tolist())]
    colors = [PALETTE[l % len(PALETTE)] for l in labels]
    return draw_bounding_boxes(image, det["boxes"], labels=captions, colors=colors, width=2)


def _to_original(
    det: dict[str, Tensor], scale: float, size: tuple[int, int], score_thresh: float
) -> dict[str, Tensor]:
    """Detections above ``score_thresh``, boxes in original pixels of an image of ``size``."""
    keep = det["scores"] >= score_thresh
    out = {k: v[keep].detach().float().cpu() for k, v in det.items()}
    out["labels"] = out["labels"].long()
    # Rounding of the resized size can reach a fraction of a pixel past the border.
    out["boxes"] = clip_boxes(out["boxes"] / scale, size)
    return out


@torch.no_grad()
def predict(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    score_thresh: float = 0.3,
    device: str | torch.device = "cpu",
    config: Config | None = None,
    weights: str = "auto",
) -> Path:
    """Detect objects in image files; draws them into PNGs and lists them in one JSON.

    Each image gives ``NNNN_<stem>.png`` (NNNN its index, so equal stems cannot clash).

    Args:
        checkpoint: ``.pt`` checkpoint or ``.safetensors`` export.
        images: image files readable by PIL.
        out_dir: output folder (created).
        score_thresh: detections below this score are neither drawn nor listed.
        device: where the model runs.
        config: config to use instead of the one stored with the weights.
        weights: which weights of a training checkpoint (:func:`load_detector`).

    Returns:
        The path of ``detections.json``: per image, its file, the drawn PNG and a list of
        ``{"label", "class_id", "score", "bbox": [x1, y1, x2, y2]}`` in original pixels.
    """
    from PIL import Image

    from hcral.data.coco import load_image
    from hcral.data.collate import collate
    from hcral.data.transforms import build_transforms, to_tensor

    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
    device = torch.device(device)
    model, cfg, names = load_detector(checkpoint, config, weights)
    model.to(device)
    transform = build_transforms(False, cfg.data.min_size, cfg.data.max_size, flip_prob=0.0)
    batchify = partial(collate, size_divisibility=cfg.data.size_divisibility)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, file in enumerate(images):
        pil = load_image(file)
        tensor, target = transform(pil, {"boxes": torch.zeros(0, 4)})
        batch = batchify([(tensor, target)])
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            det = model(batch.images.to(device), batch.image_sizes)[0]
        det = _to_original(det, float(target["scale"]), (pil.height, pil.width), score_thresh)
        drawn = draw_detections((to_tensor(pil) * 255).round().byte(), det, names)
        png = out_dir / f"{i:04d}_{Path(file).stem}.png"
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(png)
        results.append(_record(file, png, det, names))
    out = out_dir / "detections.json"
    atomic_write_text(out, json.dumps(results, indent=1))
    return out


def _record(file: str | Path, png: Path, det: dict[str, Tensor], names: Sequence[str]) -> dict:
    dets = [
        {"label": names[l], "class_id": l, "score": round(s, 5), "bbox": [round(v, 2) for v in b]}
        for b, s, l in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())
    ]
    return {"image": str(file), "drawn": png.name, "detections": dets}
