"""Transforms: resize math, flip math, multi-scale choice and seeded determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hcral.data.transforms import (
    DetectionTransform,
    build_transforms,
    hflip_boxes,
    resized_shape,
    to_tensor,
)


@pytest.mark.parametrize(
    ("h", "w", "min_size", "max_size", "expected"),
    [
        (480, 640, 800, 1333, (800, 1067, 800 / 480)),  # shorter side wins
        (427, 640, 800, 1000, (667, 1000, 1000 / 640)),  # longer side capped
        (640, 427, 800, 1000, (1000, 667, 1000 / 640)),  # portrait
        (256, 256, 320, 512, (320, 320, 1.25)),
        (1000, 500, 250, 2000, (500, 250, 0.5)),  # downscaling
    ],
)
def test_resized_shape_hand_values(h, w, min_size, max_size, expected):
    new_h, new_w, scale = resized_shape(h, w, min_size, max_size)
    assert (new_h, new_w) == expected[:2]
    assert scale == pytest.approx(expected[2])


def test_resized_shape_properties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 3000, 2))
        min_size = int(rng.integers(1, 1000))
        max_size = int(rng.integers(min_size, 2000))
        new_h, new_w, scale = resized_shape(h, w, min_size, max_size)
        assert max(new_h, new_w) <= max_size
        # Either the shorter side hits min_size or the longer side hits max_size.
        assert min(new_h, new_w) == min_size or max(new_h, new_w) == max_size
        assert abs(new_h - h * scale) <= 0.5 and abs(new_w - w * scale) <= 0.5


@pytest.mark.parametrize("args", [(0, 5, 10, 10), (5, 5, 0, 10), (5, 5, 10, -1)])
def test_resized_shape_rejects_non_positive(args):
    with pytest.raises(ValueError):
        resized_shape(*args)


def test_hflip_boxes_hand_values_and_involution():
    boxes = torch.tensor([[1.0, 2.0, 4.0, 5.0], [0.0, 0.0, 10.0, 1.0]])
    flipped = hflip_boxes(boxes, 10)
    torch.testing.assert_close(flipped, torch.tensor([[6.0, 2.0, 9.0, 5.0], [0.0, 0.0, 10.0, 1.0]]))
    torch.testing.assert_close(hflip_boxes(flipped, 10), boxes)


def test_to_tensor_values_and_layout():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    tensor = to_tensor(Image.fromarray(pixels))
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[2, 1, 0].item() == pytest.approx(pixels[1, 0, 2] / 255)
    grey = to_tensor(Image.fromarray(pixels[..., 0], mode="L"))
    assert grey.shape == (3, 2, 3)


def _white_box_image() -> tuple[Image.Image, dict]:
    """A 20×30 black image with a white block covering the box [2, 3, 8, 7] (xyxy)."""
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[3:7, 2:8] = 255
    target = {"boxes": torch.tensor([[2.0, 3.0, 8.0, 7.0]]), "labels": torch.tensor([0])}
    return Image.fromarray(pixels), target


@pytest.mark.parametrize("flip", [False, True])
def test_resize_and_flip_move_boxes_with_the_content(flip):
    image, target = _white_box_image()
    transform = DetectionTransform([40], 1000, flip_prob=1.0 if flip else 0.0)
    tensor, out = transform(image, target)
    assert tensor.shape == (3, 40, 60)
    assert out["size"] == (40, 60) and out["scale"] == 2.0
    expected = [44.0, 6.0, 56.0, 14.0] if flip else [4.0, 6.0, 16.0, 14.0]
    torch.testing.assert_close(out["boxes"], torch.tensor([expected]))
    x1, y1, x2, y2 = (int(v) for v in expected)
    assert tensor[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 0.9  # content inside the box
    assert tensor[:, :, : x1 - 1].max() < 0.1 and tensor[:, :, x2 + 1 :].max() < 0.1
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 3.0, 8.0, 7.0]]))  # untouched


def test_scaled_boxes_are_clipped_to_the_rounded_size():
    image = Image.new("RGB", (10, 7))
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 7.0]])}
    _, out = DetectionTransform([5], 100)(image, target)
    assert out["size"] == (5, 7)  # 10 * 5/7 = 7.14 rounds to 7
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 0.0, 7.0, 5.0]]))


def _draws(seed: int, n: int = 60) -> list[tuple[tuple[int, int], bool]]:
    transform = build_transforms(
        True, [8, 12, 16], 100, 0.5, generator=torch.Generator().manual_seed(seed)
    )
    image = Image.new("RGB", (4, 4))
    image.putpixel((0, 0), (255, 255, 255))  # the flip moves this pixel to the right edge
    results = []
    for _ in range(n):
        tensor, target = transform(image, {"boxes": torch.zeros(0, 4)})
        results.append((target["size"], bool(tensor[0, 0, -1] > tensor[0, 0, 0])))
    return results


def test_multiscale_choice_within_list_and_flip_rate():
    draws = _draws(0, n=200)
    assert {size for size, _ in draws} == {(8, 8), (12, 12), (16, 16)}
    assert 0.35 < np.mean([flipped for _, flipped in draws]) < 0.65


def test_seeded_generator_is_deterministic():
    assert _draws(1) == _draws(1)
    assert _draws(1) != _draws(2)


def test_global_rng_used_without_generator():
    transform = build_transforms(True, [8, 12, 16], 100, 0.5)
    image = Image.new("RGB", (4, 4))

    def sizes():
        return [transform(image, {"boxes": torch.zeros(0, 4)})[1]["size"] for _ in range(20)]

    torch.manual_seed(3)
    first = sizes()
    torch.manual_seed(3)
    assert sizes() == first


def test_eval_transform_uses_largest_size_and_never_flips():
    transform = build_transforms(False, [256, 320, 288], 512, flip_prob=1.0)
    image, target = _white_box_image()
    for _ in range(3):
        _, out = transform(image, target)
        assert out["size"] == (320, 480)
        assert out["boxes"][0, 0] == pytest.approx(2 * 16)  # not flipped


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": [], "max_size": 10},
        {"min_size": [0], "max_size": 10},
        {"min_size": [5, -2], "max_size": 10},
        {"min_size": [5], "max_size": 0},
        {"min_size": [5], "max_size": 10, "flip_prob": 1.5},
    ],
)
def test_build_transforms_rejects_bad_arguments(kwargs):
    for train in (True, False):
        with pytest.raises(ValueError):
            build_transforms(train, **kwargs)
