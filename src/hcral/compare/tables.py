"""One study's runs → a :class:`StudyTable` → Markdown and JSON."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hcral.compare.stats import (
    Summary,
    compare_mark,
    difference_interval,
    paired_difference_interval,
    seeds_to_separate,
    summarize,
)

TABLE_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75")


@dataclass
class CellSummary:
    """Aggregated results of one cell: a :class:`Summary` per metric, wall time, mark."""

    name: str
    metrics: dict[str, Summary]
    wall_time_s: float  # mean over seeds
    mark: str = ""
    delta_ci: tuple[float, float] = (math.nan, math.nan)  # Welch, AP against the reference
    seeds_ap: list[float] = field(default_factory=list)  # AP of each seed, in seed order
    seeds: list[int] = field(default_factory=list)  # their train.seed; empty when not all known
    seeds_needed: int | None = None  # seeds_to_separate at the observed ΔAP, when ≈
    # paired_difference_interval on AP against the reference: (lo, hi) and common seeds
    paired_delta: float = math.nan
    paired_ci: tuple[float, float] = (math.nan, math.nan)
    paired_n: int = 0

    @property
    def ap_by_seed(self) -> dict[int, float]:
        """Seed → AP; empty unless every run recorded its seed, once."""
        return dict(zip(self.seeds, self.seeds_ap, strict=True)) if self.seeds else {}


@dataclass
class StepSummary:
    """What one rung of a ladder adds: AP of ``upper`` minus AP of ``lower``, the row above."""

    lower: str
    upper: str
    delta: float  # difference of the mean APs
    welch_ci: tuple[float, float]
    mark: str  # compare_mark(upper, lower)
    paired_delta: float = math.nan
    paired_ci: tuple[float, float] = (math.nan, math.nan)
    seed_deltas: dict[int, float] = field(default_factory=dict)  # seeds both ran, in order
    seeds_needed: int | None = None  # seeds_to_separate at delta, when the mark is ≈


@dataclass
class StudyTable:
    """One study's aggregated rows; ``reference`` names the row the marks compare with;
    ``steps`` (ladder studies only) compares each row with the row above it."""

    study: str
    reference: str
    rows: list[CellSummary] = field(default_factory=list)
    confidence: float = 0.95
    steps: list[StepSummary] = field(default_factory=list)


def summarize_study(
    study: str,
    reference: str,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Sequence[str] = TABLE_METRICS,
    confidence: float = 0.95,
    ladder: bool = False,
) -> StudyTable:
    """Aggregate per-seed metric dicts into a :class:`StudyTable`.

    Args:
        runs: cell name → list of per-seed dicts holding ``metrics`` and ``wall_time_s``;
            cells in table order; ``reference`` must be one of them.
        ladder: also compare every cell with the one before it (:func:`ladder_steps`).
    """
    if reference not in runs:
        raise ValueError(f"reference {reference!r} is not one of the cells {list(runs)}")
    rows = []
    for name, seeds in runs.items():
        summaries = {}
        for m in metrics:
            if any(m not in r for r in seeds):
                raise ValueError(f"cell {name!r}: metric {m!r} missing from a run's metrics")
            summaries[m] = summarize([float(r[m]) for r in seeds], confidence)
        wall = math.fsum(float(r.get("wall_time_s", math.nan)) for r in seeds) / len(seeds)
        ap = [float(r["AP"]) for r in seeds] if "AP" in metrics else []
        ids = _seed_ids(seeds) if ap else []
        rows.append(CellSummary(name, summaries, wall, seeds_ap=ap, seeds=ids))
    ref = next(r for r in rows if r.name == reference)
    for row in rows:
        row.mark = "ref" if row is ref else compare_mark(row.metrics["AP"], ref.metrics["AP"])
        if row is not ref:
            cell_ap, ref_ap = row.metrics["AP"], ref.metrics["AP"]
            row.delta_ci = difference_interval(cell_ap, ref_ap, confidence)
            row.paired_delta, lo, hi, row.paired_n = paired_difference_interval(
                row.ap_by_seed, ref.ap_by_seed, confidence
            )
            row.paired_ci = (lo, hi)
            if row.mark == "≈":
                delta = cell_ap.mean - ref_ap.mean
                row.seeds_needed = seeds_to_separate(delta, cell_ap.std, ref_ap.std, confidence)
    steps = ladder_steps(rows, confidence) if ladder else []
    return StudyTable(study, reference, rows, confidence, steps)


def ladder_steps(rows: Sequence[CellSummary], confidence: float = 0.95) -> list[StepSummary]:
    """AP of each row against the row above it, for a ladder whose rows each add one part.

    The reference column answers "how far is this rung from the bottom"; a ladder also
    asks "what did this rung add", which the difference of two reference deltas cannot
    answer with an interval. Welch and paired intervals as in :func:`summarize_study`.
    """
    steps = []
    for lower, upper in itertools.pairwise(rows):
        a, b = lower.metrics["AP"], upper.metrics["AP"]
        mark = compare_mark(b, a)
        by_a, by_b = lower.ap_by_seed, upper.ap_by_seed
        mean, lo, hi, _ = paired_difference_interval(by_b, by_a, confidence)
        welch = difference_interval(b, a, confidence)
        step = StepSummary(lower.name, upper.name, b.mean - a.mean, welch, mark, mean, (lo, hi))
        step.seed_deltas = {k: by_b[k] - by_a[k] for k in sorted(set(by_a) & set(by_b))}
        if mark == "≈":
            step.seeds_needed = seeds_to_separate(step.delta, a.std, b.std, confidence)
        steps.append(step)
    return steps


def _seed_ids(seeds: Sequence[Mapping[str, Any]]) -> list[int]:
    """The ``seed`` of each run, in order; empty unless every run records one, once."""
    ids = [r.get("seed") for r in seeds]
    if any(k is None for k in ids) or len(set(ids)) != len(ids):
        return []
    return [int(k) for k in ids]


def format_summary(s: Summary, digits: int = 1) -> str:
    """``"37.2 ± 0.3 [36.5, 37.9]"``, or ``"37.2 (n=1)"`` when there is no interval."""
    if s.n < 2:
        return f"{s.mean:.{digits}f} (n=1)"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f} [{s.lo:.{digits}f}, {s.hi:.{digits}f}]"


def _format_wall(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _format_ci(ci: tuple[float, float], digits: int) -> str:
    """``"[-0.3, +1.5]"``, or ``""`` when either end is not finite (no interval)."""
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _format_paired(row: CellSummary, digits: int) -> str:
    """``"+0.6 [-0.3, +1.5] (n=3)"``; ``"–"`` without two common seeds (or for the reference)."""
    ci = _format_ci(row.paired_ci, digits)
    return f"{row.paired_delta:+.{digits}f} {ci} (n={row.paired_n})" if ci else "–"


def table_digits(table: StudyTable) -> int:
    """Decimals for the table: 1 for percentages, 3 for metrics on a [0, 1] scale."""
    # COCO metrics here are percentages; a [0, 1] scale from another evaluator needs more.
    means = [abs(s.mean) for r in table.rows for s in r.metrics.values() if math.isfinite(s.mean)]
    return 3 if means and max(means) <= 1.0 else 1


def render_markdown(table: StudyTable, digits: int = 1) -> str:
    """One Markdown table: cell, n, metrics (mean ± std [CI]), ΔAP, wall time, mark."""
    metrics = list(table.rows[0].metrics) if table.rows else list(TABLE_METRICS)
    ref = next(r for r in table.rows if r.name == table.reference)
    pct = round(table.confidence * 100)
    head = ["cell", "n", *(f"{m} (mean ± std [{pct}% CI])" for m in metrics)]
    head += [f"ΔAP [{pct}% CI]", f"paired ΔAP [{pct}% CI]", "wall / run", "vs ref"]
    lines = [
        f"### {table.study}",
        "",
        f"Reference: `{table.reference}`. Mark on AP: ≈ {pct}% intervals overlap, "
        "▲/▼ interval wholly above/below the reference, – fewer than 2 seeds. "
        f"ΔAP [{pct}% CI]: Welch interval of the difference of means; one that excludes "
        "0 is a significant difference even where the mark says ≈. Paired ΔAP: the "
        "same over the seeds both cells ran, from the per-seed differences (seed k of "
        "every cell shares initial weights and image order), sharper when seeds move "
        "all cells alike.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + [":---:"]) + "|",
    ]
    for row in table.rows:
        delta = row.metrics["AP"].mean - ref.metrics["AP"].mean
        cells = [f"`{row.name}`", str(row.metrics["AP"].n)]
        cells += [format_summary(row.metrics[m], digits) for m in metrics]
        ci = _format_ci(row.delta_ci, digits)
        diff = f"{delta:+.{digits}f}" + (f" {ci}" if ci else "")
        cells += [diff, _format_paired(row, digits), _format_wall(row.wall_time_s), row.mark]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("AP per seed:")
    for row in table.rows:
        values = " / ".join(f"{v:.{digits}f}" for v in row.seeds_ap)
        seeds = f" (seeds {_seed_list(row.seeds)})" if row.seeds else ""
        lines.append(f"- `{row.name}`{seeds}: {values}")
    needed = [row for row in table.rows if row.mark == "≈"]
    if needed:
        lines += ["", "Seeds per cell for intervals apart at the observed ΔAP and spread:"]
        for row in needed:
            n = row.seeds_needed
            lines.append(f"- `{row.name}`: " + (f"{n}" if n else "more than 1000 (or ΔAP = 0)"))
    if table.steps:
        lines += ["", *render_steps(table.steps, table.confidence, digits)]
    return "\n".join(lines) + "\n"


def _seed_list(seeds: Sequence[int]) -> str:
    """``"5–10"`` for a run of consecutive seeds, else ``"0, 2, 5"``."""
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(str(k) for k in seeds)


def render_steps(steps: Sequence[StepSummary], confidence: float, digits: int = 1) -> list[str]:
    """Markdown lines of the ladder table: what each rung adds over the rung below."""
    pct = round(confidence * 100)
    lines = [
        "What each rung adds (AP of a cell minus AP of the cell above it; per seed: the "
        "seeds both ran, in seed order):",
        "",
        f"| step | ΔAP | Welch {pct}% CI | paired {pct}% CI | per seed "
        "| seeds per cell to separate |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for s in steps:
        per_seed = " / ".join(f"{d:+.{digits}f}" for d in s.seed_deltas.values()) or "–"
        if s.mark != "≈":
            needed = "apart" if s.mark in "▲▼" else "–"
        else:
            needed = str(s.seeds_needed) if s.seeds_needed else "> 1000"
        welch = _format_ci(s.welch_ci, digits) or "–"
        paired = _format_ci(s.paired_ci, digits) or "–"
        lines.append(
            f"| `{s.lower}` → `{s.upper}` | {s.delta:+.{digits}f} | {welch} | {paired}"
            f" | {per_seed} | {needed} |"
        )
    return lines


def table_dict(table: StudyTable) -> dict[str, Any]:
    """The table as plain JSON-able data (``summary.json``)."""
    return {
        "study": table.study,
        "reference": table.reference,
        "confidence": table.confidence,
        "rows": [
            {
                "cell": r.name,
                "mark": r.mark,
                "delta_ap_ci": list(r.delta_ci),
                "paired_delta_ap": r.paired_delta,
                "paired_delta_ap_ci": list(r.paired_ci),
                "paired_n": r.paired_n,
                "seeds_ap": r.seeds_ap,
                "seeds": r.seeds,
                "seeds_needed": r.seeds_needed,
                "wall_time_s": r.wall_time_s,
                "metrics": {m: vars(s) for m, s in r.metrics.items()},
            }
            for r in table.rows
        ],
        "steps": [
            {
                "lower": s.lower,
                "upper": s.upper,
                "delta_ap": s.delta,
                "delta_ap_ci": list(s.welch_ci),
                "mark": s.mark,
                "paired_delta_ap": s.paired_delta,
                "paired_delta_ap_ci": list(s.paired_ci),
                "seed_deltas": {str(k): d for k, d in s.seed_deltas.items()},
                "seeds_needed": s.seeds_needed,
            }
            for s in table.steps
        ],
    }
