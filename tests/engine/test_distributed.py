"""Distributed helpers alone and under torchrun: same losses as one process, fail-fast."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hcral.engine import distributed as du
from hcral.engine.logging import read_csv

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(nproc: int, args: list[str], timeout: float, **env: str):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    cmd += ["-m", "tests.engine._fakes", *args]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    # gloo on CPU: the tests start 2 ranks, more than a 1-GPU machine has GPUs
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, CUDA_VISIBLE_DEVICES="")
    full_env.update(env)
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    return proc, time.monotonic() - start


def test_single_process_helpers_are_identities(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = du.init_distributed("cpu")
    assert (info.rank, info.world_size, info.device) == (0, 1, torch.device("cpu"))
    assert du.get_rank() == 0 and du.get_world_size() == 1 and du.is_main_process()
    du.barrier()
    assert du.all_gather_object({"a": 1}) == [{"a": 1}]
    out = du.reduce_dict({"x": torch.tensor(2.0, requires_grad=True)})
    assert out["x"].item() == 2.0 and not out["x"].requires_grad


def test_bad_environment_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        du.init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5"):
        du.init_distributed("cpu")
    monkeypatch.setenv("HCRAL_DIST_TIMEOUT", "-3")
    with pytest.raises(ValueError, match="HCRAL_DIST_TIMEOUT"):
        du.timeout_from_env()


def test_fail_fast_reraises_when_alone():
    with pytest.raises(KeyError), du.fail_fast():
        raise KeyError("alone")


def test_failing_rank_stops_every_rank_quickly(tmp_path):
    proc, seconds = _torchrun(
        2,
        [str(tmp_path), "--fail-rank", "1", "--epochs", "50"],
        timeout=120,
        HCRAL_DIST_TIMEOUT="20",
    )
    assert proc.returncode != 0
    assert seconds < 60
    assert "[rank 1/2] failed: RuntimeError: toy detector exploded on purpose" in proc.stderr
    assert "RESULT" not in proc.stdout  # rank 0 did not carry on alone


@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_same_global_batch(tmp_path):
    common = ["--no-augment", "--epochs", "2"]
    one, _ = _torchrun(1, [str(tmp_path / "one"), "--batch-size", "4", *common], timeout=300)
    two, _ = _torchrun(2, [str(tmp_path / "two"), "--batch-size", "2", *common], timeout=300)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = read_csv(tmp_path / "one/log.csv"), read_csv(tmp_path / "two/log.csv")
    assert len(a) == len(b) == 6
    for key in ("loss", "loss_cls", "loss_reg", "lr"):
        assert b[0][key] == pytest.approx(a[0][key], rel=1e-6)  # first step: same global batch
        for x, y in zip(a, b):  # later steps: same updates up to summation order
            assert y[key] == pytest.approx(x[key], rel=1e-4)
    assert json.loads(two.stdout.split("RESULT ", 1)[1])["iterations"] == 6


@pytest.mark.slow
def test_real_fcos_atss_two_ranks_first_step_matches_one_process(tmp_path):
    import torchvision

    from hcral.data.sample import make_sample

    make_sample(tmp_path / "data", num_train=8, num_val=2, image_size=128)
    # Any "pretrained" file switches the backbone to FrozenBatchNorm; with trainable
    # BatchNorm each rank would normalise its own two images (SyncBatchNorm is CUDA-only).
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    common = ["--sample", str(tmp_path / "data"), "--images", "8", "--max-iters", "2"]
    common += ["--pretrained", str(weights)]
    one, _ = _torchrun(1, [str(tmp_path / "one"), "--batch-size", "4", *common], timeout=500)
    two, _ = _torchrun(2, [str(tmp_path / "two"), "--batch-size", "2", *common], timeout=500)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_csv(tmp_path / "one/log.csv")[0], read_csv(tmp_path / "two/log.csv")[0]
    loss_keys = [k for k in a if k.startswith("loss")]
    assert len(loss_keys) >= 3  # the terms and their sum
    for key in loss_keys:
        assert b[key] == pytest.approx(a[key], rel=1e-4), key


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "64")
    monkeypatch.setenv("RANK", "63")
    monkeypatch.setenv("LOCAL_RANK", "63")
    with pytest.raises(RuntimeError, match="needs GPU 63.*nproc_per_node"):
        du.init_distributed("cuda")
