"""The built-in sample dataset: handwritten digits pasted on photographs.

Real detection data cannot ship with the library and nothing may be downloaded, so
:func:`make_sample` composes a small COCO-format dataset from image content that is
already installed with scikit-learn:

* objects: the UCI handwritten digits (``sklearn.datasets.load_digits``, 8×8 grey
  scans), classes 0–5 only (six classes). Each digit is upscaled bicubically to its
  object size, its intensity becomes the alpha of a random saturated colour, and it is
  pasted onto the background. The box is the tight box of the visible ink (alpha >
  ``INK_THRESHOLD``). Train and val use disjoint digit scans (the first / last
  ``VAL_FRACTION`` of each class), so val measures generalisation to new handwriting.
* backgrounds: random square crops (random flip) of scikit-learn's two bundled
  photographs (``china.jpg``, ``flower.jpg``, 427×640), resized to ``image_size`` —
  real texture, edges and colour, so the detector must learn shapes, not "anything
  that is not flat".

Defaults (``make_sample(out_dir)``): 480 train and 120 val images of 256×256; each
image holds 1–6 digits (about 5% hold none: negatives); digits may overlap up to IoU
0.3 (later ones drawn on top); no crowd annotations. Category ids are non-contiguous
(1, 3, ..., 11, names "zero".."five") so that the label ↔ category mapping is
exercised. With seed 0 this gives 1646 train objects (25 empty images) and 389 val
objects (7 empty), about 270 per class in train; box heights 10–128 px, widths 3–122
px (a "one" is thin), log-uniform sizes, so COCO small/medium/large = 868/702/76 in
train. Generation takes ~4.5 s on one CPU core (PNG encoding dominates) and writes
~65 MB. It is deterministic: the same seed gives byte-identical files (each image
draws from its own RNG seeded by ``(seed, split, index)``, so split sizes do not
interact), given the same Pillow/zlib build.

The size is chosen for the design target: a small FCOS+ATSS (ResNet-18, 64–128 FPN
channels, 256–320 px inputs) should learn visibly within about 15 minutes on 2 CPU
cores (a few epochs of 480 images at roughly 0.1–0.2 s per image per step).

Layout::

    out_dir/train/000000.png ...      out_dir/annotations/train.json
    out_dir/val/000000.png ...        out_dir/annotations/val.json
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hcral.fileio import atomic_write_text

__all__ = ["CATEGORY_IDS", "CLASS_NAMES", "make_sample"]

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five")
CATEGORY_IDS = (1, 3, 5, 7, 9, 11)
INK_THRESHOLD = 0.25  # alpha above which a pixel counts as visible ink for the box
VAL_FRACTION = 0.2  # last fraction of each class's digit scans, reserved for val
MAX_OVERLAP_IOU = 0.3
EMPTY_IMAGE_PROB = 0.05
SAMPLE_VERSION = 1  # bump when the generator's output changes
_SPLIT_CODES = {"train": 0, "val": 1}


def _load_sources() -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """Photos ``(H, W, 3)`` uint8, and per split a list per class of ``(K, 8, 8)`` digits."""
    from sklearn.datasets import load_digits, load_sample_images

    photos = [np.asarray(p, dtype=np.uint8) for p in load_sample_images().images]
    digits = load_digits()
    pools: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for c in range(len(CLASS_NAMES)):
        scans = digits.images[digits.target == c].astype(np.float32) / 16.0
        cut = int(round(len(scans) * (1 - VAL_FRACTION)))
        pools["train"].append(scans[:cut])
        pools["val"].append(scans[cut:])
    return photos, pools


def _background(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
    """A random square crop of a random photo, resized to ``(size, size, 3)`` float32."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side])
    crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.float32)


def _digit_alpha(scan: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upscales an 8×8 scan in [0, 1] to ``(height, width)`` alpha in [0, 1]."""
    img = Image.fromarray(scan, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def _tight_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """xyxy (exclusive end) of the pixels above ``INK_THRESHOLD``; None when there are none."""
    ys, xs = np.nonzero(alpha > INK_THRESHOLD)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _place_digit(
    rng: np.random.Generator, scan: np.ndarray, size: int, taken: list[tuple[int, ...]]
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int, int, int]] | None:
    """Draws a size and position whose ink box overlaps no earlier box by > MAX_OVERLAP_IOU.

    Returns ``(alpha (h, w), (x, y) of the patch, ink box xyxy in the image)`` or None.
    """
    # Ink fills ~0.8 of the patch, so these patch heights give ~8..128 px boxes.
    lo, hi = 10.0, min(128.0, 0.5 * size)
    for _ in range(20):
        h = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
        w = min(size, max(4, int(round(h * rng.uniform(0.8, 1.25)))))
        x, y = int(rng.integers(size - w + 1)), int(rng.integers(size - h + 1))
        alpha = _digit_alpha(scan, h, w)
        box = _tight_box(alpha)
        if box is None:
            continue
        box = (box[0] + x, box[1] + y, box[2] + x, box[3] + y)
        if all(_iou(box, t) <= MAX_OVERLAP_IOU for t in taken):
            return alpha, (x, y), box
    return None


def _compose(
    rng: np.random.Generator, photos: list[np.ndarray], pool: list[np.ndarray], size: int
) -> tuple[np.ndarray, list[tuple[tuple[int, int, int, int], int]]]:
    """One image ``(size, size, 3)`` uint8 and its objects ``[(xyxy box, class), ...]``."""
    canvas = _background(rng, photos, size)
    count = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(1, 7))
    objects: list[tuple[tuple[int, int, int, int], int]] = []
    for _ in range(count):
        cls = int(rng.integers(len(pool)))
        scan = pool[cls][rng.integers(len(pool[cls]))]
        placed = _place_digit(rng, scan, size, [o[0] for o in objects])
        if placed is None:
            continue
        alpha, (x, y), box = placed
        region = canvas[y : y + alpha.shape[0], x : x + alpha.shape[1]]
        a = alpha[..., None]
        region[...] = region * (1 - a) + _random_colour(rng) * a
        objects.append((box, cls))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def _write_split(
    out_dir: Path,
    split: str,
    num_images: int,
    seed: int,
    image_size: int,
    photos: list[np.ndarray],
    pool: list[np.ndarray],
) -> dict[str, Any]:
    """Writes ``out_dir/split/*.png`` and returns the split's COCO dict."""
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
        pixels, objects = _compose(rng, photos, pool, image_size)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(out_dir / split / file_name, format="PNG", compress_level=1)
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for (x1, y1, x2, y2), cls in objects:
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[cls],
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations}


def _sample_params(out_dir: Path) -> dict[str, Any] | None:
    """The generation parameters recorded in an existing sample, {} if foreign, None if none."""
    ann = out_dir / "annotations" / "train.json"
    if not ann.exists():
        return None
    try:
        info = json.loads(ann.read_text()).get("info", {})
    except (OSError, ValueError, AttributeError):
        return {}
    params = info.get("hcral_sample") if isinstance(info, dict) else None
    return params if isinstance(params, dict) else {}


def _is_complete(out_dir: Path, params: dict[str, Any]) -> bool:
    return all(
        (out_dir / "annotations" / f"{split}.json").is_file()
        and all((out_dir / split / f"{i:06d}.png").is_file() for i in range(params[f"num_{split}"]))
        for split in _SPLIT_CODES
    )


def _check_positive(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"make_sample: {name} must be an integer >= {minimum}, got {value!r}")


def make_sample(
    out_dir: str | Path,
    seed: int = 0,
    num_train: int = 480,
    num_val: int = 120,
    image_size: int = 256,
    overwrite: bool = False,
) -> dict[str, str]:
    """Writes the sample dataset (see the module docstring) under ``out_dir``.

    Args:
        out_dir: destination; ``train/``, ``val/`` and ``annotations/`` are created in it.
        seed: generation seed; the same seed gives byte-identical files.
        num_train, num_val: number of images per split (≥ 1 each).
        image_size: side of the square images in pixels (≥ 32).
        overwrite: replace a sample with other parameters, or a foreign dataset, that is
            already at ``out_dir``. Without it such a call is an error, while an
            identical complete sample is kept as is (the call returns at once).

    Returns:
        Paths keyed like the ``data`` config fields: ``train_json``, ``train_images``,
        ``val_json``, ``val_images``.
    """
    _check_positive("seed", seed, 0)
    _check_positive("num_train", num_train, 1)
    _check_positive("num_val", num_val, 1)
    _check_positive("image_size", image_size, 32)
    out = Path(out_dir)
    params = {
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "version": SAMPLE_VERSION,
    }
    paths = {f"{s}_json": str(out / "annotations" / f"{s}.json") for s in _SPLIT_CODES}
    paths.update({f"{s}_images": str(out / s) for s in _SPLIT_CODES})
    existing = _sample_params(out)
    if existing == params and _is_complete(out, params) and not overwrite:
        return paths
    if existing is not None and existing != params and not overwrite:
        raise ValueError(
            f"make_sample: {out} already holds a dataset made with {existing or 'unknown'} "
            f"parameters, not {params}; pass overwrite=True or choose another directory"
        )
    _write_all(out, params)
    return paths


def _write_all(out: Path, params: dict[str, Any]) -> None:
    photos, pools = _load_sources()
    categories = [
        {"id": cid, "name": name, "supercategory": "digit"}
        for cid, name in zip(CATEGORY_IDS, CLASS_NAMES)
    ]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / "train.json").unlink(missing_ok=True)  # the "complete" marker
    splits = {}
    for split in _SPLIT_CODES:
        for stale in (out / split).glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):
            stale.unlink()
        num = params[f"num_{split}"]
        size = params["image_size"]
        splits[split] = _write_split(out, split, num, params["seed"], size, photos, pools[split])
    # train.json goes last: an interrupted run leaves none and the next call starts over.
    for split in ("val", "train"):
        coco = {
            "info": {"description": f"hcral sample dataset ({split})", "hcral_sample": params},
            "licenses": [],
            "categories": categories,
            **splits[split],
        }
        atomic_write_text(out / "annotations" / f"{split}.json", json.dumps(coco, indent=1) + "\n")
