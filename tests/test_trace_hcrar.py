"""scripts/trace_hcrar.py: its per-iteration numbers by hand, and that it traces the real run."""

from __future__ import annotations

import pytest
import torch
import yaml
from tests._scripts import load_script, run_trace, tiny_config

from hcral.config import Config
from hcral.losses.hcrar import HCRARLoss


@pytest.fixture(scope="module")
def script():
    return load_script("trace_hcrar")


def test_stats_by_hand(script):
    # Target 10×10; two half boxes (u = 0.5, 1 - GIoU = 0.5) and one disjoint box beside
    # it (u = 0, GIoU = -1/3). Same score 0.4 everywhere: r = 0.501 / (u + 0.001).
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(3, 1)
    pred = torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 5.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    scores = torch.full((3,), 0.4)
    crit = HCRARLoss(focusing=False, centre=False).train()
    kwargs = {"scores": scores, "avg_factor": 3.0}
    out = crit(pred, target, **kwargs)
    row = script._stats(crit, (pred, target), kwargs, out)

    r = torch.tensor([1.0, 1.0, 0.501 / 0.001], dtype=torch.float64)
    terms = r * torch.tensor([0.5, 0.5, 4 / 3], dtype=torch.float64)  # r̄ cancels in shares
    assert row["n_pos"] == 3
    assert row["r_batch"] == pytest.approx(float(r.mean()), rel=1e-5)
    assert row["r_bar"] == pytest.approx(float(r.mean()), rel=1e-5)  # first batch sets r̄
    assert row["rt_max"] == pytest.approx(float(r.max() / r.mean()), rel=1e-5)
    assert row["top1_share"] == pytest.approx(float(terms.max() / terms.sum()), rel=1e-5)
    assert row["top5_share"] == pytest.approx(1.0)
    assert row["frac_u_lt_0.1"] == pytest.approx(1 / 3)
    assert row["iou_mean"] == pytest.approx(1 / 3, rel=1e-5)
    assert row["loss"] == pytest.approx(float(terms.sum() / r.mean() / 3), rel=1e-5)


def test_stats_without_positives(script):
    crit = HCRARLoss().train()
    empty = torch.zeros(0, 4)
    kwargs = {"scores": torch.zeros(0), "avg_factor": 1.0}
    row = script._stats(crit, (empty, empty), kwargs, crit(empty, empty, **kwargs))
    assert row == {"n_pos": 0, "r_bar": 1.0, "loss": 0.0}


def test_trace_records_the_run_it_trains(script, tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.model.reg_loss = "hcrar"
    rows, logged = run_trace(script, cfg, tmp_path)
    assert [int(r["iter"]) for r in rows] == [1, 2, 3] == [int(r["iter"]) for r in logged]
    # The hook saw the criterion of the very steps that were logged (loss_weight 1).
    for row, log_row in zip(rows, logged):
        assert float(row["loss"]) == pytest.approx(log_row["loss_reg"], rel=1e-5)


def test_rejects_a_config_without_hcrar(script, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(Config().to_dict()))
    with pytest.raises(SystemExit, match="not 'hcrar'"):
        script.main([str(config), "--out", str(tmp_path / "trace")])
