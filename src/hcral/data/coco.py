"""COCO-format detection dataset with up-front validation.

The annotation file is parsed and checked once, in the constructor, so a broken
dataset fails before training starts rather than hours in. Every error is a
:class:`DatasetError` (a ``ValueError``) naming the file, the image id and the field.

Policy for each problem (``skip_bad=False`` raises, ``skip_bad=True`` drops the entry,
counts it under the key shown in :attr:`CocoDetection.skipped` and emits one summary
warning):

====================================  =================================  ================
problem                                what is dropped                   counter key
====================================  =================================  ================
image entry lacks/invalid id, name,   the image and its annotations     ``bad_image``
width or height
image file missing                     the image and its annotations     ``missing_file``
annotation lacks/invalid field         the annotation                    ``bad_annotation``
annotation's image id unknown          the annotation                    ``unknown_image_id``
annotation of a dropped image          the annotation                    ``of_skipped_image``
category id not in ``categories``      the annotation                    ``unknown_category_id``
bbox not 4 finite numbers              the annotation                    ``bad_bbox``
bbox width or height ≤ 0               the annotation                    ``degenerate_box``
bbox mostly (> half) outside image     the annotation                    ``box_outside_image``
corrupt/truncated image (on load)      the image (next one is served)    ``corrupt_image``
====================================  =================================  ================

A box partly outside the image but with at least half of its area inside is clipped
to the image (COCO boxes often overhang by a fraction of a pixel); the number clipped
is :attr:`CocoDetection.num_clipped`. Structural problems are always errors: the file
is unreadable or not JSON, ``images``/``annotations``/``categories`` is missing or
not a list, categories are malformed or duplicated, image ids are duplicated (the
annotations could not be attributed), or no image is left.

Category ids may be any distinct integers; they are sorted and mapped to contiguous
labels ``0..C-1`` (:attr:`cat_ids`, :attr:`label_to_cat_id`, :attr:`class_names`), so
predictions map back with ``label_to_cat_id[label]``. Crowd annotations are kept with
``iscrowd=True`` so that assigners can ignore the priors they cover; images without
annotations are kept as negatives.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from hcral.data.transforms import to_tensor

__all__ = ["CocoDetection", "DatasetError", "load_image"]

# A clipped box must keep at least this fraction of its area inside the image.
MIN_INSIDE_FRACTION = 0.5


class DatasetError(ValueError):
    """A dataset file or entry is malformed; the message names file, image id and field."""


@dataclass
class _ImageRecord:
    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray  # (M, 4) float32 xyxy, original pixels
    labels: np.ndarray  # (M,) int64 contiguous labels
    iscrowd: np.ndarray  # (M,) bool


class _Problems:
    """Raises on a bad entry, or counts it when skipping is allowed."""

    def __init__(self, ann_file: Path, skip_bad: bool) -> None:
        self.ann_file = ann_file
        self.skip_bad = skip_bad
        self.skipped: Counter[str] = Counter()

    def fatal(self, msg: str) -> DatasetError:
        return DatasetError(f"{self.ann_file}: {msg}")

    def bad(self, kind: str, msg: str) -> None:
        if not self.skip_bad:
            raise DatasetError(f"{self.ann_file}: {msg} (pass skip_bad=True to skip: '{kind}')")
        self.skipped[kind] += 1


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_json(ann_file: Path) -> dict[str, Any]:
    try:
        text = ann_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{ann_file}: cannot read annotation file: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{ann_file}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from e
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: top level must be an object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{ann_file}: missing top-level key '{key}'")
        if not isinstance(data[key], list):
            raise DatasetError(
                f"{ann_file}: '{key}' must be a list, got {type(data[key]).__name__}"
            )
    return data


def _parse_categories(cats: list[Any], problems: _Problems) -> dict[int, str]:
    """Returns ``{category id: name}``; any malformed category is fatal."""
    if not cats:
        raise problems.fatal("'categories' is empty; at least one category is needed")
    names: dict[int, str] = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise problems.fatal(f"categories[{i}]: field 'id' must be an integer, got {cat!r}")
        if cat["id"] in names:
            raise problems.fatal(f"categories[{i}]: duplicate category id {cat['id']}")
        name = cat.get("name", str(cat["id"]))
        if not isinstance(name, str):
            raise problems.fatal(f"categories[{i}] (id {cat['id']}): field 'name' must be a string")
        names[cat["id"]] = name
    return names


def _image_field_error(img: Any) -> str | None:
    if not isinstance(img, dict):
        return f"entry must be an object, got {type(img).__name__}"
    for key in ("id", "file_name", "width", "height"):
        if key not in img:
            return f"missing field '{key}'"
    if not _is_int(img["id"]):
        return f"field 'id' must be an integer, got {img['id']!r}"
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        return f"field 'file_name' must be a non-empty string, got {img['file_name']!r}"
    for key in ("width", "height"):
        if not _is_int(img[key]) or img[key] <= 0:
            return f"field '{key}' must be a positive integer, got {img[key]!r}"
    return None


def _parse_images(
    images: list[Any], image_dir: Path, problems: _Problems
) -> tuple[dict[int, dict[str, Any]], set[int]]:
    """Returns the valid image entries by id and the ids of dropped images."""
    kept: dict[int, dict[str, Any]] = {}
    dropped: set[int] = set()
    seen: set[int] = set()
    for i, img in enumerate(images):
        image_id = img.get("id") if isinstance(img, dict) else None
        if _is_int(image_id):
            if image_id in seen:
                raise problems.fatal(f"images[{i}]: duplicate image id {image_id} in field 'id'")
            seen.add(image_id)
        error = _image_field_error(img)
        if error is not None:
            problems.bad("bad_image", f"images[{i}] (image id {image_id}): {error}")
            if _is_int(image_id):
                dropped.add(image_id)
            continue
        path = image_dir / img["file_name"]
        if not path.is_file():
            problems.bad(
                "missing_file",
                f"image id {image_id}: field 'file_name' names a missing file {path}",
            )
            dropped.add(image_id)
            continue
        kept[image_id] = img
    return kept, dropped


def _check_box(bbox: Any, width: int, height: int) -> tuple[str, str] | list[float]:
    """Validates a COCO ``[x, y, w, h]`` box; returns xyxy clipped, or (kind, message)."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return "bad_bbox", f"field 'bbox' must be [x, y, w, h], got {bbox!r}"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return "bad_bbox", f"field 'bbox' must hold numbers, got {bbox!r}"
    if not all(math.isfinite(v) for v in bbox):
        return "bad_bbox", f"field 'bbox' must be finite, got {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return "degenerate_box", f"field 'bbox' has width/height <= 0: {bbox!r}"
    cx1, cy1 = max(x, 0.0), max(y, 0.0)
    cx2, cy2 = min(x + w, float(width)), min(y + h, float(height))
    inside = max(cx2 - cx1, 0.0) * max(cy2 - cy1, 0.0)
    if inside < MIN_INSIDE_FRACTION * w * h:
        return "box_outside_image", (
            f"field 'bbox' {bbox!r} lies mostly outside the {width}x{height} image "
            f"({inside / (w * h):.0%} inside)"
        )
    return [cx1, cy1, cx2, cy2]


def _annotation_error(ann: Any, images: dict[int, Any], dropped: set[int]) -> tuple[str, str]:
    """Classifies an annotation that cannot be used; ("", "") when it is usable so far."""
    if not isinstance(ann, dict):
        return "bad_annotation", f"entry must be an object, got {type(ann).__name__}"
    for key in ("image_id", "category_id", "bbox"):
        if key not in ann:
            return "bad_annotation", f"missing field '{key}'"
    if _is_int(ann["image_id"]) and ann["image_id"] in dropped:
        return "of_skipped_image", "its image was skipped"
    if not _is_int(ann["image_id"]) or ann["image_id"] not in images:
        return "unknown_image_id", f"field 'image_id' {ann['image_id']!r} names no image"
    if ann.get("iscrowd", 0) not in (0, 1):
        return "bad_annotation", f"field 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}"
    return "", ""


def _parse_annotations(
    anns: list[Any],
    images: dict[int, dict[str, Any]],
    dropped: set[int],
    cat_id_to_label: dict[int, int],
    problems: _Problems,
) -> tuple[dict[int, list[tuple[list[float], int, bool]]], int]:
    """Returns ``{image id: [(xyxy, label, iscrowd), ...]}`` and the number of clipped boxes."""
    per_image: dict[int, list[tuple[list[float], int, bool]]] = {i: [] for i in images}
    num_clipped = 0
    for i, ann in enumerate(anns):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        where = f"annotations[{i}] (image id {image_id})"
        kind, msg = _annotation_error(ann, images, dropped)
        if kind == "" and (
            not _is_int(ann["category_id"]) or ann["category_id"] not in cat_id_to_label
        ):
            kind = "unknown_category_id"
            msg = f"field 'category_id' {ann['category_id']!r} is not in 'categories'"
        if kind == "":
            img = images[image_id]
            box = _check_box(ann["bbox"], img["width"], img["height"])
            if isinstance(box, tuple):
                kind, msg = box
        if kind:
            problems.bad(kind, f"{where}: {msg}")
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        num_clipped += box != [x, y, x + w, y + h]
        label = cat_id_to_label[ann["category_id"]]
        per_image[image_id].append((box, label, bool(ann.get("iscrowd", 0))))
    return per_image, num_clipped


def _make_record(img: dict[str, Any], image_dir: Path, objs: list[Any]) -> _ImageRecord:
    boxes = np.array([o[0] for o in objs], dtype=np.float32).reshape(-1, 4)
    return _ImageRecord(
        image_id=img["id"],
        path=image_dir / img["file_name"],
        height=img["height"],
        width=img["width"],
        boxes=boxes,
        labels=np.array([o[1] for o in objs], dtype=np.int64),
        iscrowd=np.array([o[2] for o in objs], dtype=bool),
    )


def load_image(path: str | Path) -> Image.Image:
    """Decodes an image file fully into RGB; any decoding failure names the file.

    Raises:
        DatasetError: the file is missing, not an image, corrupt or truncated.
    """
    try:
        with Image.open(path) as im:
            im.load()  # decode now: Image.open is lazy and would hide truncation
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: cannot decode image: {e}") from e


class CocoDetection(Dataset):
    """Detection dataset over a COCO-format annotation file.

    Args:
        ann_file: COCO json with ``images``, ``annotations`` and ``categories``.
        image_dir: folder the images' ``file_name`` fields are relative to.
        transforms: ``callable(PIL image, target) -> (image tensor, target)``, e.g.
            :func:`hcral.data.transforms.build_transforms`. ``None`` converts to a
            tensor without resizing (``size = orig_size``, ``scale = 1``).
        skip_bad: drop broken entries (counted in :attr:`skipped`) instead of raising.

    Items are ``(image, target)``: image ``(3, H, W)`` float in [0, 1]; target
    ``boxes`` (M, 4) float32 xyxy, ``labels`` (M,) int64 in 0..C-1, ``iscrowd`` (M,)
    bool, ``image_id`` int, ``orig_size`` (h, w), plus ``size`` (h, w) and ``scale``
    from the transforms.

    Under ``skip_bad`` a corrupt image found while loading is replaced by the next
    loadable one. With DataLoader workers the count lands in the worker's copy of
    :attr:`skipped`, so each such image also gets its own warning.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        transforms: Any = None,
        skip_bad: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.skip_bad = skip_bad
        problems = _Problems(self.ann_file, skip_bad)
        data = _read_json(self.ann_file)
        names = _parse_categories(data["categories"], problems)
        self.cat_ids: list[int] = sorted(names)
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id: dict[int, int] = dict(enumerate(self.cat_ids))
        self.class_names: list[str] = [names[c] for c in self.cat_ids]
        images, dropped = _parse_images(data["images"], self.image_dir, problems)
        per_image, self.num_clipped = _parse_annotations(
            data["annotations"], images, dropped, self.cat_id_to_label, problems
        )
        self._records = [
            _make_record(img, self.image_dir, per_image[i]) for i, img in images.items()
        ]
        if not self._records:
            raise problems.fatal(
                f"no usable images (listed: {len(data['images'])}, skipped: "
                f"{dict(problems.skipped)})"
            )
        self.skipped: Counter[str] = problems.skipped
        self._bad_indices: set[int] = set()
        if self.skipped:
            warnings.warn(
                f"{self.ann_file}: skipped broken entries {dict(self.skipped)}",
                stacklevel=2,
            )

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            if i in self._bad_indices:
                continue
            try:
                image = self._load(self._records[i])
            except DatasetError as e:
                if not self.skip_bad:
                    raise
                self._bad_indices.add(i)
                self.skipped["corrupt_image"] += 1
                warnings.warn(f"skipping image id {self._records[i].image_id}: {e}", stacklevel=2)
                continue
            return self._apply(image, self._records[i])
        raise DatasetError(f"{self.ann_file}: every image failed to load")

    def _load(self, record: _ImageRecord) -> Image.Image:
        image = load_image(record.path)
        if image.size != (record.width, record.height):
            raise DatasetError(
                f"{record.path}: image id {record.image_id} is {image.width}x{image.height} "
                f"but its fields 'width'x'height' say {record.width}x{record.height}"
            )
        return image

    def _apply(self, image: Image.Image, record: _ImageRecord) -> tuple[Tensor, dict[str, Any]]:
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(record.boxes.copy()),
            "labels": torch.from_numpy(record.labels.copy()),
            "iscrowd": torch.from_numpy(record.iscrowd.copy()),
            "image_id": record.image_id,
            "orig_size": (record.height, record.width),
        }
        if self.transforms is None:
            target["size"], target["scale"] = (record.height, record.width), 1.0
            return to_tensor(image), target
        return self.transforms(image, target)

    def __repr__(self) -> str:
        return (
            f"CocoDetection({str(self.ann_file)!r}, images={len(self)}, "
            f"classes={self.num_classes}, skipped={dict(self.skipped)})"
        )
