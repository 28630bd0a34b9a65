"""scripts/trace_cls.py: its per-iteration numbers by hand, and that it traces the real run."""

from __future__ import annotations

import pytest
import torch
from tests._scripts import load_script, run_trace, tiny_config

from hcral.losses import build_cls_loss


@pytest.fixture(scope="module")
def script():
    return load_script("trace_cls")


def test_stats_by_hand(script):
    # 3 priors × 2 classes: prior 0 positive of class 1, prior 1 positive of class 0,
    # prior 2 background (label 2). Background entries: (0, 0), (1, 1), (2, 0), (2, 1).
    p = torch.tensor([[0.02, 0.9], [0.6, 0.4], [0.1, 0.01]])
    logits = torch.logit(p)
    labels = torch.tensor([1, 0, 2])
    row = script._stats(None, (logits, labels, torch.zeros(3), 2.0), {}, torch.tensor(0.7))
    assert row["n_pos"] == 2 and row["loss"] == pytest.approx(0.7)
    assert row["bg_mean"] == pytest.approx((0.02 + 0.4 + 0.1 + 0.01) / 4, rel=1e-5)
    assert row["bg_gt_0.05"] == pytest.approx(0.5)  # 0.4 and 0.1
    assert row["bg_gt_0.3"] == pytest.approx(0.25)  # 0.4
    assert row["pos_mean"] == pytest.approx(0.75, rel=1e-5)


def test_stats_without_entries(script):
    row = script._stats(None, (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), {}, 0.0)
    assert row == {"n_pos": 0, "loss": 0.0}
    bg_only = script._stats(None, (torch.zeros(2, 3), torch.full((2,), 3)), {}, 0.0)
    assert bg_only["bg_mean"] == pytest.approx(0.5) and "pos_mean" not in bg_only


@pytest.mark.parametrize("name", ["focal", "qfl", "vfl", "ghm", "hcrac"])
def test_every_classification_loss_is_traced(script, name):
    assert script._is_cls_criterion(build_cls_loss(name))
    assert not script._is_cls_criterion(torch.nn.Identity())


def test_trace_records_the_run_it_trains(script, tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.model.cls_loss = "ghm"
    cfg.model.cls_loss_args = {}
    rows, logged = run_trace(script, cfg, tmp_path)
    assert [int(r["iter"]) for r in rows] == [1, 2, 3] == [int(r["iter"]) for r in logged]
    for row, log_row in zip(rows, logged):  # the criterion of the very steps logged
        assert float(row["loss"]) == pytest.approx(log_row["loss_cls"], rel=1e-5)
        assert 0.0 <= float(row["bg_gt_0.3"]) <= float(row["bg_gt_0.05"]) <= 1.0
