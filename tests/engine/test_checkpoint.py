"""Checkpoints: round trip, atomic writes under failure and SIGKILL, safe loading, export."""

from __future__ import annotations

import builtins
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hcral.engine import checkpoint as ck
from hcral.losses._state import RunningStat


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.stat = RunningStat(momentum=0.5)


def _state(value: float) -> dict:
    return {"format": ck.FORMAT_VERSION, "weights": torch.full((4,), value), "epoch": int(value)}


def test_round_trip_with_model_optimizer_and_loss_state(tmp_path):
    net = _Net()
    net.stat.update(torch.tensor(3.0), 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.fc(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {
        "format": ck.FORMAT_VERSION,
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": ck.get_rng_state(),
        "config": {"train": {"lr": 0.1, "lr_steps": [8, 11]}, "model": {"pretrained": None}},
    }
    ck.save_checkpoint(state, tmp_path / "epoch_1.pt")
    back = ck.load_checkpoint(tmp_path / "epoch_1.pt")
    other = _Net()
    other.load_state_dict(back["model"])
    assert other.stat.value.item() == 3.0 and bool(other.stat.initialized)
    torch.testing.assert_close(other.fc.weight, net.fc.weight)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(back["optimizer"])
    torch.testing.assert_close(
        opt2.state[opt2.param_groups[0]["params"][0]]["momentum_buffer"],
        opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"],
    )
    assert opt2.param_groups[0]["lr"] == 0.1
    assert back["config"] == state["config"]


def test_rng_state_restores_every_generator(tmp_path):
    saved = ck.get_rng_state()
    first = (torch.rand(3), random.random(), np.random.rand(2))  # noqa: NPY002
    ck.atomic_save({"rng": saved}, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    ck.set_rng_state(loaded)
    again = (torch.rand(3), random.random(), np.random.rand(2))  # noqa: NPY002
    torch.testing.assert_close(first[0], again[0])
    assert first[1] == again[1]
    np.testing.assert_array_equal(first[2], again[2])


def test_last_points_at_the_newest_checkpoint(tmp_path):
    ck.save_checkpoint(_state(1.0), tmp_path / "epoch_1.pt")
    assert ck.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    ck.save_checkpoint(_state(2.0), tmp_path / "epoch_2.pt")
    assert ck.load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert ck.load_checkpoint(tmp_path / "epoch_1.pt")["epoch"] == 1  # untouched
    ck.save_checkpoint(_state(3.0), tmp_path / "last.pt")  # an interrupted run's checkpoint
    assert ck.load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert ck.load_checkpoint(tmp_path / "epoch_2.pt")["epoch"] == 2  # not written through
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pt", "epoch_2.pt", "last.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ck.save_checkpoint(_state(1.0), tmp_path / "epoch_1.pt")
    real_save = torch.save

    def half_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(f.tell() // 2)
        f.truncate()
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(_state(2.0), tmp_path / "epoch_1.pt")
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(_state(2.0), tmp_path / "epoch_2.pt")
    monkeypatch.undo()
    assert ck.load_checkpoint(tmp_path / "epoch_1.pt")["epoch"] == 1
    assert ck.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pt", "last.pt"]  # no debris


_WRITER = """
import sys, torch
from hcral.engine.checkpoint import FORMAT_VERSION, save_checkpoint
path = sys.argv[1]
for i in range(1, 10_000):
    state = {"format": FORMAT_VERSION, "i": i, "w": torch.full((3_000_000,), float(i))}
    save_checkpoint(state, path)
    print(i, flush=True)
"""


def test_sigkill_during_writes_never_leaves_a_bad_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete checkpoint exists
        time.sleep(0.3)  # ... and the next writes are under way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    state = ck.load_checkpoint(path)
    assert state["i"] >= 1
    assert torch.equal(state["w"], torch.full((3_000_000,), float(state["i"])))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_crafted_pickle_is_refused_without_running_code(tmp_path, writer):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    payload = {"format": ck.FORMAT_VERSION, "model": _Evil(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ck.CheckpointError, match="refusing to load"):
        ck.load_checkpoint(path)
    assert not marker.exists()


def test_missing_truncated_and_foreign_files_are_named(tmp_path):
    with pytest.raises(ck.CheckpointError, match="nope.pt"):
        ck.load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ck.CheckpointError, match="not a hcral training checkpoint"):
        ck.load_checkpoint(tmp_path / "foreign.pt")
    ck.atomic_save(_state(1.0), tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="cut.pt"):
        ck.load_checkpoint(tmp_path / "cut.pt")


def test_export_weights_to_safetensors(tmp_path):
    net = _Net()
    net.stat.update(torch.tensor(2.0), 1)
    path = ck.export_weights(net, tmp_path / "model.safetensors", metadata={"name": "tiny"})
    other = ck.load_weights(_Net(), path)
    torch.testing.assert_close(other.fc.bias, net.fc.bias)
    assert other.stat.value.item() == 2.0
    with pytest.raises(ValueError, match="safetensors"):
        ck.export_weights(net, tmp_path / "model.pt")


def test_export_handles_tied_weights(tmp_path):
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    net[1].weight = net[0].weight
    ck.export_weights(net, tmp_path / "tied.safetensors")
    from safetensors.torch import load_file

    state = load_file(tmp_path / "tied.safetensors")
    torch.testing.assert_close(state["0.weight"], state["1.weight"])
