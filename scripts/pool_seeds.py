"""One AP table from finished runs and from per-seed APs recorded in docs/results.md.

Several sections of docs/results.md compare new runs with cells whose run folders are
gone (lost with an earlier machine) and survive only as the per-seed APs the section
lists. This prints the table `hcral compare --report-only` would write if those runs
were still there (AP only, Welch and paired intervals, `hcral.compare`'s statistics):

    python scripts/pool_seeds.py runs/tuned_baseline/tuned_baseline --reference ATSS \\
        --recorded "ATSS=0:6.31,1:6.30,2:7.25" --order "ATSS,ATSS focal α0.36 w1.17"

A study folder holds ``<cell>/seed_<k>/metrics.json`` (an `hcral compare` output). A seed
both recorded and run must agree to the recorded two decimals: that checks that a rerun
on this machine repeats the recorded run (docs/results.md §18 on machines). The paired
column pairs every seed two cells share; seed k is the same draw only on one machine, so
pool seeds from one machine when that column is to mean anything (§22 and §23 say which).
``--seeds 8`` (with ``--first-seed``, as in `hcral compare`) pools seeds 0–7 only: a
section's table from before more seeds joined the same folder (§24 against §25).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from hcral.compare import render_markdown, seed_range, summarize_study

TOLERANCE = 0.005 + 1e-9  # the recorded APs carry two decimals


def parse_recorded(text: str) -> tuple[str, dict[int, float]]:
    """``"CELL=0:6.31,1:6.30"`` → ``("CELL", {0: 6.31, 1: 6.30})``."""
    cell, sep, pairs = text.rpartition("=")
    try:
        if not (sep and cell and pairs):
            raise ValueError
        seeds = {int(k): float(v) for k, v in (p.split(":") for p in pairs.split(","))}
    except ValueError:
        raise ValueError(f"--recorded {text!r}: expected CELL=SEED:AP,SEED:AP,...") from None
    return cell, seeds


def finished_runs(study_dir: Path) -> dict[str, dict[int, dict]]:
    """Cell → seed → metrics.json of every finished run under ``study_dir``."""
    if not study_dir.is_dir():
        raise FileNotFoundError(
            f"{study_dir}: not a folder (expected OUT/<study> of hcral compare)"
        )
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(study_dir.glob("*/seed_*/metrics.json")):
        metrics = json.loads(path.read_text())
        if "cell" not in metrics or "seed" not in metrics or "AP" not in metrics:
            raise ValueError(f"{path}: no 'cell', 'seed' or 'AP' (not written by hcral compare)")
        runs.setdefault(metrics["cell"], {})[int(metrics["seed"])] = metrics
    return runs


def parse_all_recorded(texts: list[str]) -> dict[str, dict[int, float]]:
    """Every ``--recorded`` value by cell; a cell given twice is an error, not a merge."""
    recorded: dict[str, dict[int, float]] = {}
    for text in texts:
        cell, seeds = parse_recorded(text)
        if cell in recorded:
            raise ValueError(f"--recorded: cell {cell!r} given twice")
        recorded[cell] = seeds
    return recorded


def pool(runs: dict[str, dict[int, dict]], recorded: dict[str, dict[int, float]]) -> dict:
    """Cell → per-seed metric dicts in seed order; raises where a run and a record differ."""
    pooled = {}
    for cell in {**runs, **recorded}:
        seeds = {
            k: {"AP": ap, "seed": k, "wall_time_s": math.nan}
            for k, ap in recorded.get(cell, {}).items()
        }
        for k, metrics in runs.get(cell, {}).items():
            if k in seeds and abs(seeds[k]["AP"] - metrics["AP"]) > TOLERANCE:
                raise ValueError(
                    f"cell {cell!r} seed {k}: recorded AP {seeds[k]['AP']:.2f}, "
                    f"the run has {metrics['AP']:.4f}"
                )
            seeds[k] = metrics
        pooled[cell] = [seeds[k] for k in sorted(seeds)]
    return pooled


def keep_seeds(pooled: dict[str, list[dict]], seeds: range) -> dict[str, list[dict]]:
    """The pooled runs of ``seeds`` only; a cell left with none is an error."""
    kept = {cell: [r for r in runs if r["seed"] in seeds] for cell, runs in pooled.items()}
    empty = sorted(cell for cell, runs in kept.items() if not runs)
    if empty:
        raise ValueError(f"seeds {seeds.start}–{seeds.stop - 1}: no seed left for {empty}")
    return kept


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path, nargs="?", help="an hcral compare study folder")
    parser.add_argument("--reference", required=True, help="the cell the others are compared with")
    parser.add_argument(
        "--recorded", action="append", default=[], help="CELL=SEED:AP,... (repeatable)"
    )
    parser.add_argument("--order", help="comma-separated cells, in table order (default: sorted)")
    parser.add_argument(
        "--seeds", type=int, help="pool this many seeds only (default: every seed found)"
    )
    parser.add_argument("--first-seed", type=int, default=0, help="with --seeds: the first (0)")
    parser.add_argument("--title", default="pooled")
    parser.add_argument("--png", type=Path, help="also draw the AP bars (hcral.viz.plot_ap_bars)")
    args = parser.parse_args(argv)
    runs = finished_runs(args.study_dir) if args.study_dir else {}
    pooled = pool(runs, parse_all_recorded(args.recorded))
    if args.seeds is not None:  # e.g. a section's table from before more seeds joined
        pooled = keep_seeds(pooled, seed_range(args.seeds, args.first_seed))
    order = args.order.split(",") if args.order else sorted(pooled)
    if sorted(order) != sorted(pooled):  # each cell once: a repeat must not hide a missing one
        raise SystemExit(f"--order {order} does not list the cells found, {sorted(pooled)}")
    table = summarize_study(
        args.title, args.reference, {c: pooled[c] for c in order}, metrics=("AP",)
    )
    text = render_markdown(table, digits=2)
    if args.png:
        from hcral.viz import plot_ap_bars

        plot_ap_bars(table, args.png)
    print(text)
    return text


if __name__ == "__main__":
    main()
