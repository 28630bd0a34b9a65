"""scripts/cls_gradients.py: the positive/background split by hand, and a real run."""

from __future__ import annotations

import math

import pytest
import torch
from tests._scripts import load_script, tiny_config

from hcral.engine.train import build_datasets, train


@pytest.fixture(scope="module")
def script():
    return load_script("cls_gradients")


def test_entry_gradients_split_by_hand(script):
    # A linear "loss" Σ w·x has gradient w. Priors: class 1, background (label 2), class 0.
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0]])
    labels = torch.tensor([1, 2, 0])
    pos, bg = script.entry_gradients(
        lambda x, *_: (w * x).sum(), torch.zeros(3, 2), labels, None, 1
    )
    assert pos == pytest.approx(2.0 + 5.0)  # (0, 1) and (2, 0)
    assert bg == pytest.approx(1.0 + 3.0 + 4.0 + 6.0)


def test_entry_gradients_of_focal_loss(script):
    from torchvision.ops import sigmoid_focal_loss

    from hcral.losses import build_cls_loss

    logits, labels = torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([0, 2])
    x = logits.clone().requires_grad_()
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    (grad,) = torch.autograd.grad(sigmoid_focal_loss(x, target, 0.25, 2.0, "sum") / 4.0, x)
    focal = build_cls_loss("focal", **script.LOSSES["focal"])
    pos, bg = script.entry_gradients(focal, logits, labels, torch.zeros(2), 4.0)
    assert pos == pytest.approx(float(grad[0, 0].abs()), rel=1e-5)
    assert bg == pytest.approx(float(grad.abs().sum() - grad[0, 0].abs()), rel=1e-5)


def test_measure_a_trained_run(script, tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.train.max_iters = 1
    cfg.train.output_dir = str(tmp_path / "run")
    train(cfg, train_set=build_datasets(cfg)[0])  # a run folder: config.yaml + last.pt
    got = script.measure(tmp_path / "run", batches=2)
    assert script.measure(tmp_path / "run", batches=2) == got  # same batches, same flips
    assert set(got) == {"focal", "ghm", "hcrac"}
    for pos, bg in got.values():
        assert math.isfinite(pos) and math.isfinite(bg) and pos > 0 and bg > 0
