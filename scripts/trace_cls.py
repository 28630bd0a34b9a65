"""Trace the classification scores a loss trains, iteration by iteration.

Trains ``CONFIG`` for ``--iters`` iterations and records, at every call of its
classification criterion (any of ``hcral.losses.CLS_LOSSES``), the sigmoid scores of the
entries it is given:

    python scripts/trace_cls.py configs/atss_focal_giou.yaml --iters 360 \\
        --set model.cls_loss=ghm --set "model.cls_loss_args={bins: 20, m_ghm: 0.75}" \\
        --out runs/trace_cls/ghm

writes ``OUT/trace.csv`` (one row per iteration) and ``OUT/trace.png``. An entry is one
(prior, class) pair of a non-ignored prior: *positive* for a positive prior's own class,
*background* otherwise. Columns:

* ``n_pos``: positive priors of the batch; ``loss``: the criterion's value;
* ``bg_mean``, ``bg_gt_0.05``, ``bg_gt_0.3``: mean background score and the share of
  background entries above 0.05 (the shipped configs' inference threshold) and 0.3;
* ``pos_mean``: mean positive score.

It shows when, during training, a loss lets the background scores rise
(docs/results.md §15: GHM-C-based losses do).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path


def _stats(module, args, kwargs, output) -> dict[str, float]:
    """One row of the trace from one criterion call: logits (P, C), labels (P,) in 0..C."""
    import torch

    logits, labels = args[0].detach().float(), args[1]
    num_classes = logits.shape[1]
    own = torch.nn.functional.one_hot(labels.long(), num_classes + 1)[:, :-1].bool()
    scores = logits.sigmoid()
    bg, pos = scores[~own], scores[own]
    loss = output.detach() if isinstance(output, torch.Tensor) else output
    row = {"n_pos": int(own.sum()), "loss": float(loss)}
    if bg.numel():
        row.update(
            bg_mean=float(bg.mean()),
            **{"bg_gt_0.05": float((bg > 0.05).float().mean())},
            **{"bg_gt_0.3": float((bg > 0.3).float().mean())},
        )
    if pos.numel():
        row["pos_mean"] = float(pos.mean())
    return row


def _is_cls_criterion(module) -> bool:
    import importlib

    from hcral.losses import CLS_LOSSES

    for entry in CLS_LOSSES.values():
        name, cls = entry.split(":")
        if isinstance(module, getattr(importlib.import_module(f"hcral.losses.{name}"), cls)):
            return True
    return False


def trace(config: str, overrides: list[str], iters: int, out: Path) -> list[dict[str, float]]:
    """Train ``iters`` iterations of ``config`` and return one trace row per iteration."""
    from hcral.config import load_config
    from hcral.engine.trace import record_calls
    from hcral.engine.train import build_datasets, train

    overrides = [*overrides, f"train.max_iters={iters}", f"train.output_dir={out / 'run'}"]
    cfg = load_config(config, overrides)
    with record_calls(_is_cls_criterion, _stats) as rows:
        # Only the training set: no validation pass at the end.
        train(cfg, train_set=build_datasets(cfg)[0])
    return rows


def _plot(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iter"] for r in rows]
    nan = float("nan")
    fig, axes = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    axes[0].plot(it, [r["loss"] for r in rows], label="classification loss")
    axes[0].set_yscale("log")
    for key, label in (
        ("bg_gt_0.05", "background entries > 0.05"),
        ("bg_gt_0.3", "background entries > 0.3"),
        ("bg_mean", "mean background score"),
        ("pos_mean", "mean positive score"),
    ):
        axes[1].plot(it, [r.get(key, nan) for r in rows], label=label)
    axes[1].set(xlabel="iteration", ylim=(0, 1))
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from hcral.engine.trace import write_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--iters", type=int, default=360)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", help="figure title (default: the config and --set values)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = trace(args.config, args.overrides, args.iters, args.out)
    write_rows(rows, args.out / "trace.csv")
    title = args.title or textwrap.fill(f"{args.config} {' '.join(args.overrides)}", 110)
    _plot(rows, args.out / "trace.png", title)
    print(f"wrote {args.out / 'trace.csv'} and trace.png ({len(rows)} iterations)")


if __name__ == "__main__":
    main()
