"""collate / Batch: padding to a stride multiple, content placement, device moves."""

from __future__ import annotations

import functools
import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from hcral.data.collate import Batch, collate, padded_size


def _samples():
    a = torch.rand(3, 5, 7) + 0.1  # strictly positive, so padding zeros are distinguishable
    b = torch.rand(3, 10, 3) + 0.1
    ta = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([1]), "image_id": 4}
    tb = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 9}
    return [(a, ta), (b, tb)]


@pytest.mark.parametrize(
    ("div", "expected"), [(4, (12, 8)), (5, (10, 10)), (1, (10, 7)), (0, (10, 7))]
)
def test_padded_size(div, expected):
    assert padded_size([(5, 7), (10, 3)], div) == expected


def test_collate_pads_with_zeros_and_keeps_content():
    samples = _samples()
    batch = collate(samples, size_divisibility=4)
    assert batch.images.shape == (2, 3, 12, 8)
    assert batch.image_sizes == [(5, 7), (10, 3)]
    assert len(batch) == 2
    for out, (img, _), (h, w) in zip(batch.images, samples, batch.image_sizes):
        torch.testing.assert_close(out[:, :h, :w], img)
        assert out[:, h:, :].abs().sum() == 0 and out[:, :, w:].abs().sum() == 0
    assert batch.targets[0] is samples[0][1] and batch.targets[1]["image_id"] == 9


def test_default_divisibility_is_128():
    batch = collate(_samples())
    assert batch.images.shape[-2:] == (128, 128)


@pytest.mark.parametrize(
    ("samples", "kwargs", "match"),
    [
        ([], {}, "empty"),
        ([(torch.zeros(1, 4, 4), {})], {}, r"sample 0 image must be \(3, H, W\)"),
        ([(torch.zeros(3, 4), {})], {}, "sample 0"),
        ([(torch.zeros(3, 4, 4), {})], {"size_divisibility": -1}, "size_divisibility"),
    ],
)
def test_collate_rejects_bad_input(samples, kwargs, match):
    with pytest.raises(ValueError, match=match):
        collate(samples, **kwargs)


def test_batch_to_moves_every_tensor(device):
    moved = collate(_samples(), size_divisibility=8).to(device)
    assert isinstance(moved, Batch)
    assert moved.images.device.type == device.type
    for t in moved.targets:
        assert t["boxes"].device.type == device.type and t["labels"].device.type == device.type
    assert [t["image_id"] for t in moved.targets] == [4, 9]
    assert moved.image_sizes == [(5, 7), (10, 3)]


def test_partial_collate_in_a_dataloader_and_picklable():
    fn = functools.partial(collate, size_divisibility=32)
    pickle.dumps(fn)  # workers receive collate_fn by pickling under spawn
    loader = DataLoader(_samples(), batch_size=2, collate_fn=fn)
    (batch,) = list(loader)
    assert batch.images.shape == (2, 3, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs CUDA")
def test_pin_memory():
    batch = collate(_samples()).pin_memory()
    assert batch.images.is_pinned() and batch.targets[0]["boxes"].is_pinned()
