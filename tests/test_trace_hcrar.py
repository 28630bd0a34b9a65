"""scripts/trace_hcrar.py: its per-iteration numbers by hand, and that it traces the real run."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from hcral.config import Config
from hcral.data.sample import make_sample
from hcral.engine.logging import read_csv
from hcral.losses.hcrar import HCRARLoss

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "trace_hcrar.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("trace_hcrar", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    paths = make_sample(tmp_path / "data", num_train=4, num_val=1, image_size=128)
    cfg = Config()
    for key, value in paths.items():
        setattr(cfg.data, key, value)
    cfg.data.min_size, cfg.data.max_size = [128], 128
    cfg.model.fpn_channels, cfg.model.num_convs, cfg.model.reg_loss = 32, 1, "hcrar"
    cfg.train.batch_size, cfg.train.log_every = 2, 1
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))

    script.main([str(config), "--iters", "3", "--out", str(tmp_path / "trace")])
    with open(tmp_path / "trace" / "trace.csv") as f:
        rows = list(csv.DictReader(f))
    logged = read_csv(tmp_path / "trace" / "run" / "log.csv")
    assert [int(r["iter"]) for r in rows] == [1, 2, 3] == [int(r["iter"]) for r in logged]
    # The hook saw the criterion of the very steps that were logged (loss_weight 1).
    for row, log_row in zip(rows, logged):
        assert float(row["loss"]) == pytest.approx(log_row["loss_reg"], rel=1e-5)
    assert (tmp_path / "trace" / "trace.png").stat().st_size > 10_000


def test_rejects_a_config_without_hcrar(script, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(Config().to_dict()))
    with pytest.raises(SystemExit, match="not 'hcrar'"):
        script.main([str(config), "--out", str(tmp_path / "trace")])
