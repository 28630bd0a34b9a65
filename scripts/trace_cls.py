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

import functools


def _stats(module, args, kwargs, output) -> dict[str, float]:
    """One row of the trace from one criterion call: logits (P, C), labels (P,) in 0..C."""
    import torch

    from hcral.losses._reduce import one_hot_targets

    logits, labels = args[0].detach().float(), args[1]
    own = one_hot_targets(labels, logits.shape[1]).bool()
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
    return isinstance(module, _cls_criteria())


@functools.cache
def _cls_criteria() -> tuple[type, ...]:
    """The classes of ``hcral.losses.CLS_LOSSES``, resolved once: the global hook asks
    for every module of every forward pass."""
    from hcral.losses import CLS_LOSSES, loss_class

    return tuple(loss_class(CLS_LOSSES, name) for name in CLS_LOSSES)


PANELS = [
    ([("loss", "classification loss")], {"yscale": "log"}),
    (
        [
            ("bg_gt_0.05", "background entries > 0.05"),
            ("bg_gt_0.3", "background entries > 0.3"),
            ("bg_mean", "mean background score"),
            ("pos_mean", "mean positive score"),
        ],
        {"ylim": (0, 1)},
    ),
]


def main(argv: list[str] | None = None) -> None:
    from hcral.engine.trace import trace_script

    description = __doc__.split("\n\n")[0]
    trace_script(argv, description, _is_cls_criterion, _stats, PANELS, default_iters=360)


if __name__ == "__main__":
    main()
