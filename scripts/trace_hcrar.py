"""Trace HCRAR's weights during the first iterations of a training run.

Trains ``CONFIG`` (``reg_loss: hcrar``) for ``--iters`` iterations and records, at every
call of the HCRAR criterion, what its weight ``r̃ · CF_reg`` is made of:

    python scripts/trace_hcrar.py configs/retinanet_hcral.yaml --iters 160 \\
        --set train.lr_steps=[4,5] --out runs/trace/retinanet

writes ``OUT/trace.csv`` (one row per iteration) and ``OUT/trace.png``. Columns:

* ``r_batch``, ``r_bar``: this batch's mean of r and the EMA r̄ it is divided by
  (``r_batch / r_bar`` > 1: r̄ lags behind rising scores);
* ``rt_max``: the largest r̃ = r / r̄ of the batch;
* ``top1_share``, ``top5_share``: the share of the batch's loss Σ w (1 − GIoU) carried
  by its 1 and 5 largest terms (1 / n_pos if all were equal);
* ``frac_u_lt_0.1``: positives whose predicted box has IoU < 0.1 with its target;
* ``score_mean``, ``iou_mean``: mean s and u of the positives; ``loss``: the criterion.

It answers whether a jump of ``loss_reg`` comes from r̄ lagging (``r_batch / r_bar``
high, shares low) or from a few outliers with IoU ≈ 0 (``rt_max`` and the shares high),
which SPEC's optional clamp ``r_max`` is for.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path


def _stats(module, args, kwargs, output) -> dict[str, float]:
    """One row of the trace from one HCRAR call (after its r̄ update)."""
    from hcral.losses.hcrar import hcrar_loss, iou_and_centre_ratio, rci_coefficient

    pred, target = args[0].detach().float(), args[1].detach().float()
    scores = kwargs["scores"].detach().float()
    n = pred.shape[0]
    row = {"n_pos": n, "r_bar": float(module.r_mean.value), "loss": float(output.detach())}
    if n == 0:
        return row
    ious, _ = iou_and_centre_ratio(pred, target)
    r = rci_coefficient(scores, ious, module.alpha, module.ep, module.r_max)
    # Each positive's term r̃ · CF_reg · (1 - GIoU) · weight, by the criterion's pure twin.
    terms = hcrar_loss(
        pred, target, scores, r_mean=module.r_mean.value, alpha=module.alpha, ep=module.ep,
        gamma=module.gamma, delta=module.delta, focusing=module.focusing,
        centre=module.centre, r_max=module.r_max, weight=kwargs.get("weight"),
        reduction="none",
    ).sort(descending=True).values  # fmt: skip
    total = terms.sum().clamp(min=1e-12)
    row.update(
        r_batch=float(r.mean()),
        rt_max=float((r / module.r_mean.value).max()),
        top1_share=float(terms[0] / total),
        top5_share=float(terms[:5].sum() / total),
        **{"frac_u_lt_0.1": float((ious < 0.1).float().mean())},
        score_mean=float(scores.mean()),
        iou_mean=float(ious.mean()),
    )
    return row


def trace(config: str, overrides: list[str], iters: int, out: Path) -> list[dict[str, float]]:
    """Train ``iters`` iterations of ``config`` and return one trace row per iteration."""
    from hcral.config import load_config
    from hcral.engine.trace import record_calls
    from hcral.engine.train import build_datasets, train
    from hcral.losses.hcrar import HCRARLoss

    overrides = [*overrides, f"train.max_iters={iters}", f"train.output_dir={out / 'run'}"]
    cfg = load_config(config, overrides)
    if cfg.model.reg_loss != "hcrar":
        raise SystemExit(f"{config}: model.reg_loss is {cfg.model.reg_loss!r}, not 'hcrar'")
    with record_calls(lambda m: isinstance(m, HCRARLoss), _stats) as rows:
        # Only the training set: no validation pass at the end (the model is untrained).
        train(cfg, train_set=build_datasets(cfg)[0])
    return rows


def _plot(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iter"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True)
    axes[0].plot(it, [r["loss"] for r in rows], label="HCRAR loss")
    axes[0].set_yscale("log")
    axes[1].plot(it, [r.get("r_batch", float("nan")) for r in rows], label="batch mean r")
    axes[1].plot(it, [r["r_bar"] for r in rows], label="r̄ (EMA)")
    axes[1].plot(it, [r.get("rt_max", float("nan")) for r in rows], label="max r̃", alpha=0.6)
    axes[1].set_yscale("log")
    axes[2].plot(it, [r.get("top1_share", float("nan")) for r in rows], label="top-1 share")
    axes[2].plot(it, [r.get("top5_share", float("nan")) for r in rows], label="top-5 share")
    axes[2].plot(it, [r.get("frac_u_lt_0.1", float("nan")) for r in rows], label="IoU < 0.1")
    axes[2].set_xlabel("iteration")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--iters", type=int, default=160)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", help="figure title (default: the config and --set values)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from hcral.engine.trace import write_rows

    rows = trace(args.config, args.overrides, args.iters, args.out)
    write_rows(rows, args.out / "trace.csv")
    title = args.title or textwrap.fill(f"{args.config} {' '.join(args.overrides)}", 110)
    _plot(rows, args.out / "trace.png", title)
    print(f"wrote {args.out / 'trace.csv'} and trace.png ({len(rows)} iterations)")


if __name__ == "__main__":
    main()
