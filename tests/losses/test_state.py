"""RunningStat: first-batch init, momentum convention, eval mode, state_dict, ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hcral.losses._state import RunningStat, reduce_mean


def test_first_batch_initialises_then_blends():
    s = RunningStat(momentum=0.25, init=1.0)
    assert s.update(torch.tensor(6.0), 3).item() == pytest.approx(2.0)  # not 0.75*1 + 0.25*2
    assert s.update(torch.tensor(12.0), 2).item() == pytest.approx(0.75 * 2.0 + 0.25 * 6.0)


def test_counts_mode_and_empty_batch():
    s = RunningStat(shape=(3,), momentum=0.5, init=0.0)
    torch.testing.assert_close(s.update(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([1.0, 2, 3]))
    m = RunningStat(momentum=0.5, init=7.0)
    assert m.update(torch.tensor(0.0), 0).item() == 7.0  # no data: unchanged, not initialised
    assert not bool(m.initialized)
    assert m.update(torch.tensor(4.0), 1).item() == 4.0


def test_eval_mode_does_not_update_and_state_round_trips():
    s = RunningStat(momentum=0.1)
    s.update(torch.tensor(5.0), 1)
    s.eval()
    assert s.update(torch.tensor(100.0), 1).item() == 5.0
    t = RunningStat(momentum=0.1)
    t.load_state_dict(s.state_dict())
    assert t.value.item() == 5.0 and bool(t.initialized)


def test_bad_momentum():
    with pytest.raises(ValueError, match="momentum"):
        RunningStat(momentum=0.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    s = RunningStat(momentum=0.5)
    # rank 0 holds samples {1, 2}, rank 1 holds {6}: the global mean is 3
    total, count = (torch.tensor(3.0), 2) if rank == 0 else (torch.tensor(6.0), 1)
    out[rank] = (s.update(total, count).item(), reduce_mean(torch.tensor(float(rank))).item())
    dist.destroy_process_group()


def test_two_ranks_see_the_global_statistic():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2)
    assert out[0] == out[1] == (pytest.approx(3.0), pytest.approx(0.5))
