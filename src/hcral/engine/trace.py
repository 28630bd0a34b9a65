"""Record what chosen modules compute at every call during a run (e.g. a loss's weights).

``scripts/trace_hcrar.py`` and ``scripts/trace_cls.py`` wrap :func:`hcral.engine.train`
in :func:`record_calls`: a *global* forward hook, so the traced run builds and seeds its
model exactly as ``hcral train`` does and is the same run as an untraced one.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn
from torch.nn.modules.module import register_module_forward_hook

Stats = Callable[[nn.Module, tuple, dict, Any], dict[str, float]]


@contextmanager
def record_calls(select: Callable[[nn.Module], bool], stats: Stats) -> Iterator[list[dict]]:
    """Yield a list that gets one row per training-mode call of a module ``select`` accepts.

    Each row is ``{"iter": k, **stats(module, args, kwargs, output)}`` with ``k`` counting
    from 1 (a criterion called once per iteration gives one row per iteration). Calls in
    eval mode are skipped. The hook is removed on exit, also after an error.
    """
    rows: list[dict] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if module.training and select(module):
            rows.append({"iter": len(rows) + 1, **stats(module, args, kwargs, output)})

    handle = register_module_forward_hook(hook, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


def write_rows(rows: Sequence[dict], path: str | Path) -> None:
    """CSV of ``rows`` with the union of their keys as header (missing cells empty)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
