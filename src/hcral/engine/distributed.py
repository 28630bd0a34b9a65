"""Process-group set-up from torchrun's environment, small collectives, fail-fast errors.

A run is distributed when ``WORLD_SIZE`` > 1 (torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Every helper here also works when
torch.distributed is not initialised, as a world of one, so the training loop has a
single code path.

A failing rank must not leave the others hanging in a collective: :func:`fail_fast`
logs the exception with its rank and exits the process non-zero; torchrun then tears
the other workers down, and every collective carries a bounded timeout
(``HCRAL_DIST_TIMEOUT`` seconds, default 120) in case the launcher does not.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank among ``world_size`` and the device it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def timeout_from_env(default: float = DEFAULT_TIMEOUT_S) -> float:
    """Collective timeout in seconds from ``HCRAL_DIST_TIMEOUT`` (``default`` if unset)."""
    value = os.environ.get("HCRAL_DIST_TIMEOUT", "")
    try:
        timeout = float(value) if value else default
    except ValueError:
        raise ValueError(f"HCRAL_DIST_TIMEOUT must be a number of seconds, got {value!r}") from None
    if timeout <= 0:
        raise ValueError(f"HCRAL_DIST_TIMEOUT must be > 0 seconds, got {timeout}")
    return timeout


def init_distributed(
    device: str | torch.device | None = None, timeout_s: float | None = None
) -> DistInfo:
    """Initialise torch.distributed from torchrun's env vars when ``WORLD_SIZE`` > 1.

    Args:
        device: ``"cuda"``/``"cpu"``; default CUDA when available. Under CUDA each rank
            takes GPU ``LOCAL_RANK``.
        timeout_s: collective timeout; default :func:`timeout_from_env`.

    Returns:
        The :class:`DistInfo` of this process (rank 0 of 1 when not distributed).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world_size > 1 else (dev.index or 0))
        if dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"rank {rank} (LOCAL_RANK={local_rank}) needs GPU {dev.index}, but this "
                f"machine shows {torch.cuda.device_count()}: start at most that many "
                "processes per node (torchrun --nproc_per_node), or train on CPU "
                "(CUDA_VISIBLE_DEVICES=)"
            )
        torch.cuda.set_device(dev)
    if world_size > 1 and not is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s or timeout_from_env())
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
        log.info("rank %d/%d initialised (%s, timeout %s)", rank, world_size, backend, timeout)
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup() -> None:
    """Destroy the process group if this process created one.

    A barrier first: without it a rank that finishes early closes its gloo sockets while
    a peer is still tearing down the last collective, which can abort the peer (seen once
    in nine 2-rank CPU runs as SIGABRT at exit, after all the work was done).
    """
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (bounded by the process-group timeout); a no-op alone."""
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank; ``[obj]`` when not distributed."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_dict(values: dict[str, Tensor], average: bool = True) -> dict[str, Tensor]:
    """Sum (or average) scalar tensors over ranks, all in one all-reduce.

    Args:
        values: name -> scalar tensor; every rank must pass the same keys.
        average: divide the sums by the world size.

    Returns:
        A new dict with the same keys, detached (float32 when distributed).
    """
    world = get_world_size()
    if world == 1 or not values:
        return {k: v.detach() for k, v in values.items()}
    names = sorted(values)  # the same order on every rank
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])
    dist.all_reduce(stacked)
    if average:
        stacked /= world
    return dict(zip(names, stacked.unbind(0)))


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Turn an exception on one rank of a distributed run into a quick, clear exit.

    Alone (world of one) the exception propagates unchanged. Under a process group the
    traceback is logged as ``[rank r/w] failed: ...`` and the process exits with status
    1 at once, without running collectives in clean-up code that would wait on the
    failed peer; torchrun then stops the other workers.
    """
    try:
        yield
    except BaseException as e:
        if get_world_size() == 1 or isinstance(e, SystemExit) and e.code in (0, None):
            raise
        rank, world = get_rank(), get_world_size()
        msg = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        sys.stderr.write(f"[rank {rank}/{world}] failed: {type(e).__name__}: {e}\n{msg}")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
