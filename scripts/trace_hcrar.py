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


PANELS = [
    ([("loss", "HCRAR loss")], {"yscale": "log"}),
    (
        [("r_batch", "batch mean r"), ("r_bar", "r̄ (EMA)"), ("rt_max", "max r̃")],
        {"yscale": "log"},
    ),
    (
        [
            ("top1_share", "top-1 share"),
            ("top5_share", "top-5 share"),
            ("frac_u_lt_0.1", "IoU < 0.1"),
        ],
        {},
    ),
]


def _check(cfg) -> None:
    if cfg.model.reg_loss != "hcrar":
        raise SystemExit(f"model.reg_loss is {cfg.model.reg_loss!r}, not 'hcrar'")


def main(argv: list[str] | None = None) -> None:
    from hcral.engine.trace import trace_script
    from hcral.losses.hcrar import HCRARLoss

    description = __doc__.split("\n\n")[0]
    is_hcrar = lambda m: isinstance(m, HCRARLoss)  # noqa: E731
    trace_script(argv, description, is_hcrar, _stats, PANELS, default_iters=160, check=_check)


if __name__ == "__main__":
    main()
