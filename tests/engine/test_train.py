"""The training loop on a toy detector: exact resume, non-finite steps, signals, outputs."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.engine._fakes import ToyDataset, ToyDetector, toy_config

from hcral.engine.checkpoint import load_checkpoint
from hcral.engine.logging import read_csv
from hcral.engine.train import NonFiniteLossError, train

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, resume=None, model=None, **train_kw) -> dict:
    cfg = toy_config(str(out), **train_kw)
    torch.manual_seed(0)  # the caller builds (initialises) the model, so seed here
    return train(cfg, resume=resume, model=model or ToyDetector(), train_set=ToyDataset())


@pytest.mark.parametrize("stop_at", [4, 3], ids=["mid_epoch", "epoch_boundary"])
def test_resume_continues_bit_for_bit(tmp_path, stop_at):
    full = _run(tmp_path / "full")
    first = _run(tmp_path / "cut", max_iters=stop_at)
    assert first["iterations"] == stop_at
    resumed_model = ToyDetector()
    resumed = _run(tmp_path / "cut", resume=True, model=resumed_model)
    assert resumed["iterations"] == full["iterations"] == 9

    rows_full, rows_cut = read_csv(tmp_path / "full/log.csv"), read_csv(tmp_path / "cut/log.csv")
    assert [r["iter"] for r in rows_cut] == [float(i) for i in range(1, 10)]  # no duplicates
    for a, b in zip(rows_full, rows_cut):
        for key in ("loss", "loss_cls", "loss_reg", "lr"):
            assert b[key] == pytest.approx(a[key], abs=1e-6, rel=0), (key, a["iter"])
    full_state = load_checkpoint(tmp_path / "full/last.pt")["model"]
    for name, value in resumed_model.state_dict().items():  # loss-state buffers included
        # .cpu(): train() moved the model to CUDA where there is one; the file is on CPU
        torch.testing.assert_close(value.cpu(), full_state[name], atol=1e-6, rtol=0, msg=name)
    assert "cls_stat.value" in full_state


def test_resume_matches_with_evaluation_between_epochs(tmp_path):
    def evaluate_drawing_rng(model, dataset, cfg, device, output_json=None):
        return {"AP": float(torch.rand(())) + random.random()}

    def run(out, resume=None, **kw):
        cfg = toy_config(str(out), eval_every=1, **kw)
        torch.manual_seed(0)
        data = dict(train_set=ToyDataset(), val_set=ToyDataset(2))
        return train(cfg, resume, model=ToyDetector(), evaluate_fn=evaluate_drawing_rng, **data)

    run(tmp_path / "full")
    run(tmp_path / "cut", max_iters=3)  # stops right after epoch 1's checkpoint
    run(tmp_path / "cut", resume=True)
    a, b = read_csv(tmp_path / "full/log.csv"), read_csv(tmp_path / "cut/log.csv")
    assert [x["loss"] for x in a] == pytest.approx([y["loss"] for y in b], abs=1e-6, rel=0)


def test_resumed_losses_differ_without_rng_restore(tmp_path, monkeypatch):
    # guards the test above: if RNG state did not matter, it could pass by accident
    _run(tmp_path / "full")
    _run(tmp_path / "cut", max_iters=4)
    monkeypatch.setattr("hcral.engine.train.set_rng_state", lambda state: None)
    _run(tmp_path / "cut", resume=True)
    a, b = read_csv(tmp_path / "full/log.csv"), read_csv(tmp_path / "cut/log.csv")
    assert any(abs(x["loss"] - y["loss"]) > 1e-6 for x, y in zip(a[4:], b[4:]))


def test_nonfinite_stop_names_terms_and_images(tmp_path):
    with pytest.raises(NonFiniteLossError) as err:
        _run(tmp_path, model=ToyDetector(nan_image_ids=(105,)))
    message = str(err.value)
    assert "loss_cls=nan" in message and "loss_reg" not in message
    assert "105" in message and "image ids" in message
    assert not (tmp_path / "last.pt").exists()  # nothing written for the failed run


def test_nonfinite_skip_counts_and_continues(tmp_path):
    model = ToyDetector(nan_image_ids=(105,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _run(tmp_path, model=model, on_nonfinite="skip")
    assert result["skipped_steps"] == 3  # image 105 is in one batch per epoch
    assert result["iterations"] == 9
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert not torch.equal(before["head.weight"], model.head.weight.detach().cpu())
    assert math.isfinite(result["final_loss"])
    rows = read_csv(tmp_path / "log.csv")
    assert rows[-1]["skipped"] == 3 and all(math.isfinite(r["loss"]) for r in rows)


def test_outputs_checkpoints_and_evaluation(tmp_path):
    calls = []

    def fake_evaluate(model, dataset, cfg, device, output_json=None):
        calls.append((model.training, output_json))
        return {"AP": 10.0 * len(calls), "AP50": 20.0}

    cfg = toy_config(str(tmp_path), checkpoint_every=2, eval_every=1)
    result = train(
        cfg,
        model=ToyDetector(),
        train_set=ToyDataset(),
        val_set=ToyDataset(4),
        evaluate_fn=fake_evaluate,
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {"epoch_2.pt", "epoch_3.pt", "last.pt", "log.csv", "config.yaml", "metrics.json"} <= set(
        names
    )
    assert "epoch_1.pt" not in names
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 9
    assert load_checkpoint(tmp_path / "epoch_2.pt")["iteration"] == 6
    assert len(calls) == 3 and calls[-1][1] == tmp_path / "detections_val.json"
    assert [
        json.loads(line)["epoch"] for line in (tmp_path / "eval.jsonl").read_text().splitlines()
    ] == [1, 2]
    assert result["AP"] == 30.0 and result["iterations"] == 9 and result["epochs_completed"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["AP"] == 30.0
    assert set(read_csv(tmp_path / "log.csv")[0]) >= {"iter", "epoch", "lr", "loss_cls", "time"}


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="train.on_nonfinite"):
        _run(tmp_path, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="last.pt"):
        _run(tmp_path / "empty", resume=True)


def test_sigterm_writes_a_loadable_checkpoint_and_exits_cleanly(tmp_path):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    cmd = [
        sys.executable,
        "-m",
        "tests.engine._fakes",
        str(tmp_path),
        "--epochs",
        "100",
        "--sleep",
        "0.1",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = tmp_path / "log.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:  # header + 2 steps
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result["interrupted"] is True and 2 <= result["iterations"] < 300
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["iteration"] == result["iterations"]
    assert ckpt["step_in_epoch"] == result["iterations"] % 3
    assert "got signal" in err


def test_deterministic_mode_is_scoped_to_the_run():
    from hcral.engine.train import deterministic_algorithms

    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
    with deterministic_algorithms(False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]


def test_checkpoint_carries_the_training_class_names(tmp_path):
    class Named(ToyDataset):
        class_names = ["cat", "dog"]

    cfg = toy_config(str(tmp_path), max_iters=2)
    train(cfg, model=ToyDetector(), train_set=Named())
    assert load_checkpoint(tmp_path / "last.pt")["class_names"] == ["cat", "dog"]
    _run(tmp_path / "plain", max_iters=1)  # a dataset without names stores none
    assert load_checkpoint(tmp_path / "plain/last.pt")["class_names"] == []
