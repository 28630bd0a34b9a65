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

from hcral.fileio import atomic_path

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
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def traced_run(
    config: str,
    overrides: list[str],
    iters: int,
    out: Path,
    select: Callable[[nn.Module], bool],
    stats: Stats,
    check: Callable[[Any], None] | None = None,
) -> list[dict]:
    """Train ``iters`` iterations of ``config`` (with ``overrides``) into ``out/run`` and
    return the rows :func:`record_calls` made; ``check(cfg)`` may refuse the config first.

    Only the training set is loaded: there is no validation pass at the end.
    """
    from hcral.config import load_config
    from hcral.engine.train import build_datasets, train

    overrides = [*overrides, f"train.max_iters={iters}", f"train.output_dir={out / 'run'}"]
    cfg = load_config(config, overrides)
    if check is not None:
        check(cfg)
    with record_calls(select, stats) as rows:
        train(cfg, train_set=build_datasets(cfg)[0])
    return rows


def trace_script(
    argv: list[str] | None,
    description: str,
    select: Callable[[nn.Module], bool],
    stats: Stats,
    panels: Sequence[tuple[Sequence[tuple[str, str]], dict[str, Any]]],
    default_iters: int,
    check: Callable[[Any], None] | None = None,
) -> None:
    """The command line of the ``scripts/trace_*.py``: ``CONFIG [--iters N] [--set K=V]
    --out DIR [--title T]``. Trains with :func:`traced_run`, writes the rows to
    ``DIR/trace.csv`` and draws ``panels`` of them to ``DIR/trace.png``
    (:func:`hcral.viz.plot_trace`)."""
    import argparse
    import textwrap

    from hcral.viz import plot_trace

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config")
    parser.add_argument("--iters", type=int, default=default_iters)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", help="figure title (default: the config and --set values)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = traced_run(args.config, args.overrides, args.iters, args.out, select, stats, check)
    write_rows(rows, args.out / "trace.csv")
    title = args.title or textwrap.fill(f"{args.config} {' '.join(args.overrides)}", 110)
    plot_trace(rows, panels, args.out / "trace.png", title)
    print(f"wrote {args.out / 'trace.csv'} and trace.png ({len(rows)} iterations)")
