"""Run a grid of small experiments over seeds and report mean ± std with 95% intervals.

``hcral compare GRID.yaml --seeds 3 --out DIR`` calls :func:`run_compare`. A grid file
is YAML with three keys::

    base: ../atss_focal_giou.yaml         # config every study starts from
    set:                                  # overrides shared by every cell (optional)
      train.max_iters: 2000
    studies:
      cls_loss:                           # a product study: every combination of axes
        base: ../retinanet_focal_l1.yaml  # optional, replaces the grid's base
        set: {model.reg_loss: giou}       # optional, study-wide overrides
        axes:
          model.cls_loss: [focal, ghm]
          model.cls_loss_args.mu: [3, 5]  # deeper keys merge into a dict-valued field
        reference: cls_loss=focal,mu=5    # optional; default: the first cell
      ladder:                             # a list study: named cells, in order
        cells:
          - {name: ATSS}
          - {name: EATSS, set: {model.assigner: eatss}}

Relative ``base`` paths resolve against the grid file's folder. An override key is
``section.key`` (replaces the value) or ``section.key.sub`` (sets one entry of a dict
field such as ``model.cls_loss_args``, keeping the base config's other entries). Later
overrides win: grid ``set`` < study ``set`` < cell ``set`` / axis value. Product cells
are named ``key=value`` joined by ``,`` with the last part of each key. Base configs
are read once, when the grid loads: editing one while a grid runs does not change the
cells still to come (the code they run is another matter: run long grids from a
checkout you leave alone, e.g. a ``git worktree``).

Every (cell, seed) trains in ``DIR/<study>/<cell>/seed_<k>`` with ``train.seed`` =
base seed + k, and leaves ``metrics.json`` there. A rerun skips runs whose
``metrics.json`` exists and resumes (``train(cfg, resume=True)``) runs that have a
``last.pt`` checkpoint, so an interrupted grid continues where it stopped. Runs go seed
by seed across all cells; ``--first-seed K`` runs seeds K to K + n - 1 (more seeds
later, or on a second machine). Before any training, every run still to do has its
dataset files checked (:func:`check_data`), so a missing dataset fails once, naming the
paths. ``DIR/<study>/table.md``
then gives AP / AP50 / AP75 as mean ± std (ddof=1) with a Student-t 95% interval, and
marks each cell against the reference on AP: ``≈`` when the two intervals overlap,
``▲`` / ``▼`` when the cell's interval lies wholly above / below. Overlapping
intervals are a conservative test (two means can differ significantly while their
intervals still overlap), which suits a small-scale ablation: a ``▲`` is a real gain.
The ΔAP column adds the sharper Welch interval of the difference, and the paired ΔAP
column the t interval of the per-seed differences over the seeds both cells ran (seed k
of every cell starts from the same weights and image order, so seeds often move all
cells alike; :func:`paired_difference_interval`); under the table come
the AP of every seed and, for the cells marked ``≈``, how many seeds per cell would set
the intervals apart at the observed ΔAP and spread (:func:`seeds_to_separate`).

Runs whose resolved configs are identical (apart from the folder) train once: the
others get a copy of its ``metrics.json`` marked ``reused_from``
(:func:`split_duplicates`). ``--study NAME`` runs and reports only the named studies.

``--jobs N`` trains up to N runs at once, each in its own process (spawned, so CUDA
starts clean), with ``cpu_count // N`` threads and its output in
``seed_<k>/train.log``; ``--gpus 0,1`` hands the runs to those GPUs in turn
(``CUDA_VISIBLE_DEVICES``). Small models leave most of a big GPU idle, so several
runs share one well; the numbers do not depend on N.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hcral.config import Config, config_from_dict

TrainFn = Callable[..., Mapping[str, Any]]

TABLE_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75")
CHECKPOINT_NAME = "last.pt"  # hcral.engine.checkpoint.LAST: the newest complete checkpoint

# Two-sided 95% Student-t quantiles t_{0.975, df}, used when scipy is not installed.
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
    16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042,
    40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Cell:
    """One configuration of a study: a name and its ``section.key[.sub]`` overrides."""

    name: str
    overrides: dict[str, Any]


@dataclass
class Study:
    """Cells that share a base config and are compared with one reference cell."""

    name: str
    base: Path
    cells: list[Cell]
    reference: str
    # The base config as read when the grid was loaded: a grid that runs for hours is not
    # changed half-way by an edit to the base file (later cells would silently differ).
    base_raw: dict[str, Any] = field(default_factory=dict, repr=False)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}: {value!r}")
    return dict(value)


def _axis_cells(axes: dict[str, Any], where: str) -> list[Cell]:
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}.axes.{key}: expected a non-empty list, got {values!r}")
    keys = list(axes)
    cells = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo))
        cells.append(Cell(name, dict(zip(keys, combo))))
    return cells


def _list_cells(items: Any, where: str) -> list[Cell]:
    if not isinstance(items, list) or not items:
        raise ValueError(f"{where}.cells: expected a non-empty list, got {items!r}")
    cells = []
    for i, item in enumerate(items):
        item = _mapping(item, f"{where}.cells[{i}]")
        unknown = sorted(set(item) - {"name", "set"})
        if unknown or not isinstance(item.get("name"), str) or not item["name"]:
            raise ValueError(
                f"{where}.cells[{i}]: need 'name' (str) and optional 'set'; got keys {sorted(item)}"
            )
        cells.append(Cell(item["name"], _mapping(item.get("set"), f"{where}.cells[{i}].set")))
    return cells


def _parse_study(name: str, spec: Any, grid: dict[str, Any], root: Path, where: str) -> Study:
    where = f"{where}: studies.{name}"
    spec = _mapping(spec, where)
    unknown = sorted(set(spec) - {"base", "set", "axes", "cells", "reference"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}")
    if ("axes" in spec) == ("cells" in spec):
        raise ValueError(f"{where}: give exactly one of 'axes' (product) or 'cells' (list)")
    if "axes" in spec:
        cells = _axis_cells(_mapping(spec["axes"], f"{where}.axes"), where)
    else:
        cells = _list_cells(spec["cells"], where)
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate cell names in {names}")
    shared = {**_mapping(grid.get("set"), "set"), **_mapping(spec.get("set"), f"{where}.set")}
    cells = [Cell(c.name, {**shared, **c.overrides}) for c in cells]
    reference = spec.get("reference", names[0])
    if reference not in names:
        raise ValueError(f"{where}: reference {reference!r} is not one of the cells {names}")
    base = spec.get("base", grid.get("base"))
    if not isinstance(base, str):
        raise ValueError(f"{where}: no 'base' config path (set it on the grid or the study)")
    path = (root / base).resolve()
    return Study(name, path, cells, reference, _read_base(path, name))


def _read_base(path: Path, study: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"study {study!r}: base config {str(path)!r}: {e}") from e
    return _mapping(raw, f"study {study!r}: base config {str(path)!r}")


def load_grid(path: str | Path) -> list[Study]:
    """Parse a grid YAML file (format in the module docstring) into studies.

    Raises:
        ValueError: naming the file and key when the grid is malformed.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"grid {str(path)!r}: cannot read: {e}") from e
    raw = _mapping(raw, f"grid {str(path)!r}")
    unknown = sorted(set(raw) - {"base", "set", "studies"})
    if unknown:
        raise ValueError(f"grid {str(path)!r}: unknown key(s) {unknown}")
    studies = _mapping(raw.get("studies"), f"grid {str(path)!r}: studies")
    if not studies:
        raise ValueError(f"grid {str(path)!r}: 'studies' is empty")
    return [_parse_study(n, s, raw, path.parent, str(path)) for n, s in studies.items()]


def apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``section.key`` (replace) or ``section.key.sub...`` (merge into a dict) in place."""
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"override key {key!r}: expected section.key or section.key.sub")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"override key {key!r}: {part!r} holds {child!r}, not a mapping")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def cell_config(study: Study, cell: Cell, seed: int, output_dir: Path) -> Config:
    """The full config of one (cell, seed) run, validated by :mod:`hcral.config`.

    Starts from ``study.base_raw``, the base config as it was when the grid was loaded.
    """
    raw = copy.deepcopy(study.base_raw)
    for key, value in cell.overrides.items():
        apply_override(raw, key, value)
    base_seed = (raw.get("train") or {}).get("seed", 0)
    apply_override(raw, "train.seed", int(base_seed) + seed)
    apply_override(raw, "train.output_dir", str(output_dir))
    return config_from_dict(raw, f"{study.base} [{study.name}/{cell.name}]")


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with sample std and a two-sided t interval (NaN when n < 2)."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo) and math.isfinite(self.hi)


def t_quantile(df: float, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value ``t_{(1+confidence)/2, df}``, ``df ≥ 1``.

    Uses scipy when installed; otherwise a table for ``confidence=0.95`` (a df between
    table rows, fractional ones included, takes the next smaller df's value, which is
    slightly conservative).
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    try:
        from scipy.stats import t
    except ImportError:
        if not math.isclose(confidence, 0.95):
            raise ValueError(
                f"confidence={confidence} needs scipy; only 0.95 is tabulated"
            ) from None
        if df > 120:
            return 1.960
        return _T975[max(k for k in _T975 if k <= df)]
    return float(t.ppf((1.0 + confidence) / 2.0, df))


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std (ddof=1) and the t interval ``mean ± t · std / √n``.

    Args:
        values: one metric over n seeds; NaN values propagate into the result.
    Returns:
        :class:`Summary`; with n = 1, ``std``, ``lo`` and ``hi`` are NaN.
    """
    n = len(values)
    if n == 0:
        raise ValueError("values: need at least one value to summarize")
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1, confidence) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def difference_interval(
    cell: Summary, reference: Summary, confidence: float = 0.95
) -> tuple[float, float]:
    """Welch interval for ``cell.mean - reference.mean`` (unequal variances), or NaNs.

    A sharper test than :func:`intervals_overlap`: two means can differ significantly
    while their own intervals still overlap. The degrees of freedom are
    Welch–Satterthwaite's; NaN when either side has fewer than 2 seeds.
    """
    if cell.n < 2 or reference.n < 2:
        return math.nan, math.nan
    va, vb = cell.std**2 / cell.n, reference.std**2 / reference.n
    delta = cell.mean - reference.mean
    if va + vb == 0:
        return delta, delta
    df = (va + vb) ** 2 / (va**2 / (cell.n - 1) + vb**2 / (reference.n - 1))
    half = t_quantile(max(df, 1.0), confidence) * math.sqrt(va + vb)
    return delta - half, delta + half


def paired_difference_interval(
    cell: Mapping[int, float], reference: Mapping[int, float], confidence: float = 0.95
) -> tuple[float, float, float, int]:
    """Paired t interval of ``cell - reference`` over the seeds both have.

    Seed k of every cell starts from the same initial weights and sees the images in
    the same order, so a seed that is lucky for one cell tends to be lucky for all;
    the per-seed differences then vary less than either cell, and this interval is
    sharper than :func:`difference_interval`'s. Returns ``(mean, lo, hi, n)`` with
    ``n`` the number of common seeds; ``lo``/``hi`` are NaN when ``n < 2``.

    Args:
        cell, reference: seed → metric value.
    """
    common = sorted(set(cell) & set(reference))
    d = [cell[k] - reference[k] for k in common]
    if not d:
        return math.nan, math.nan, math.nan, 0
    s = summarize(d, confidence)
    return s.mean, s.lo, s.hi, s.n


def seeds_to_separate(
    delta: float, std_a: float, std_b: float, confidence: float = 0.95, max_seeds: int = 1000
) -> int | None:
    """Seeds per cell from which two cells ``delta`` apart, with sample stds ``std_a`` and
    ``std_b``, get non-overlapping t intervals: the least ``n ≥ 2`` with
    ``t_{n-1} · (std_a + std_b) / √n < |delta|``.

    A planning figure (it takes the observed means and spreads as the truth): how many
    seeds an experiment needs before issue-style "intervals apart" can show a difference
    of this size. None when ``delta`` is 0 or not finite, or more than ``max_seeds``
    would be needed; 2 when both stds are 0.
    """
    spread = std_a + std_b
    if not (math.isfinite(delta) and math.isfinite(spread)) or delta == 0:
        return None
    for n in range(2, max_seeds + 1):
        if t_quantile(n - 1, confidence) * spread / math.sqrt(n) < abs(delta):
            return n
    return None


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether closed intervals ``a = (lo, hi)`` and ``b`` share at least one point."""
    return a[0] <= b[1] and b[0] <= a[1]


def compare_mark(cell: Summary, reference: Summary) -> str:
    """``≈`` overlapping intervals, ``▲``/``▼`` wholly above/below, ``–`` no interval (n<2)."""
    if not (cell.has_interval and reference.has_interval):
        return "–"
    if intervals_overlap((cell.lo, cell.hi), (reference.lo, reference.hi)):
        return "≈"
    return "▲" if cell.lo > reference.hi else "▼"


# --------------------------------------------------------------------------- tables


@dataclass
class CellSummary:
    """Aggregated results of one cell: a :class:`Summary` per metric, wall time, mark."""

    name: str
    metrics: dict[str, Summary]
    wall_time_s: float  # mean over seeds
    mark: str = ""
    delta_ci: tuple[float, float] = (math.nan, math.nan)  # Welch, AP against the reference
    seeds_ap: list[float] = field(default_factory=list)  # AP of each seed, in seed order
    seeds_needed: int | None = None  # seeds_to_separate at the observed ΔAP, when ≈
    # paired_difference_interval on AP against the reference: (lo, hi) and common seeds
    paired_delta: float = math.nan
    paired_ci: tuple[float, float] = (math.nan, math.nan)
    paired_n: int = 0


@dataclass
class StudyTable:
    """One study's aggregated rows; ``reference`` names the row the marks compare with."""

    study: str
    reference: str
    rows: list[CellSummary] = field(default_factory=list)
    confidence: float = 0.95


def summarize_study(
    study: str,
    reference: str,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Sequence[str] = TABLE_METRICS,
    confidence: float = 0.95,
) -> StudyTable:
    """Aggregate per-seed metric dicts into a :class:`StudyTable`.

    Args:
        runs: cell name → list of per-seed dicts holding ``metrics`` and ``wall_time_s``;
            cells in table order; ``reference`` must be one of them.
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
        rows.append(CellSummary(name, summaries, wall, seeds_ap=ap))
    ref = next(r for r in rows if r.name == reference)
    for row in rows:
        row.mark = "ref" if row is ref else compare_mark(row.metrics["AP"], ref.metrics["AP"])
        if row is not ref:
            cell_ap, ref_ap = row.metrics["AP"], ref.metrics["AP"]
            row.delta_ci = difference_interval(cell_ap, ref_ap, confidence)
            row.paired_delta, lo, hi, row.paired_n = paired_difference_interval(
                _ap_by_seed(runs[row.name]), _ap_by_seed(runs[reference]), confidence
            )
            row.paired_ci = (lo, hi)
            if row.mark == "≈":
                delta = cell_ap.mean - ref_ap.mean
                row.seeds_needed = seeds_to_separate(delta, cell_ap.std, ref_ap.std, confidence)
    return StudyTable(study, reference, rows, confidence)


def _ap_by_seed(seeds: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """Seed → AP of a cell's runs; empty unless every run records its seed, once."""
    ids = [r.get("seed") for r in seeds]
    if any(k is None for k in ids) or len(set(ids)) != len(ids):
        return {}
    return {int(k): float(r["AP"]) for k, r in zip(ids, seeds, strict=True)}


def format_summary(s: Summary, digits: int = 1) -> str:
    """``"37.2 ± 0.3 [36.5, 37.9]"``, or ``"37.2 (n=1)"`` when there is no interval."""
    if s.n < 2:
        return f"{s.mean:.{digits}f} (n=1)"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f} [{s.lo:.{digits}f}, {s.hi:.{digits}f}]"


def _format_wall(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _format_paired(row: CellSummary, digits: int) -> str:
    """``"+0.6 [-0.3, +1.5] (n=3)"``; ``"–"`` without two common seeds (or for the reference)."""
    lo, hi = row.paired_ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    d = row.paired_delta
    return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] (n={row.paired_n})"


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
        lo, hi = row.delta_ci
        diff = f"{delta:+.{digits}f}"
        if math.isfinite(lo) and math.isfinite(hi):
            diff += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
        cells += [diff, _format_paired(row, digits), _format_wall(row.wall_time_s), row.mark]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("AP per seed:")
    for row in table.rows:
        values = " / ".join(f"{v:.{digits}f}" for v in row.seeds_ap)
        lines.append(f"- `{row.name}`: {values}")
    needed = [row for row in table.rows if row.mark == "≈"]
    if needed:
        lines += ["", "Seeds per cell for intervals apart at the observed ΔAP and spread:"]
        for row in needed:
            n = row.seeds_needed
            lines.append(f"- `{row.name}`: " + (f"{n}" if n else "more than 1000 (or ΔAP = 0)"))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- runner


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # 0-d tensors and numpy scalars
        return value.item()
    return str(value)


def _write_json(path: Path, data: Any) -> None:
    # Write then rename, so a crash never leaves a half-written metrics.json that a
    # rerun would take for a finished run.
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)


class CompareInterrupted(RuntimeError):
    """A run was stopped (signal) before it finished; rerunning the grid resumes it."""


def run_cell_seed(
    study: Study, cell: Cell, seed: int, run_dir: Path, train_fn: TrainFn
) -> dict[str, Any]:
    """Train one (cell, seed) unless finished; returns the contents of its metrics.json."""
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    cfg = cell_config(study, cell, seed, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = True if (run_dir / CHECKPOINT_NAME).is_file() else None
    start = time.perf_counter()
    metrics = dict(train_fn(cfg, resume=resume))
    wall = time.perf_counter() - start  # of this call only when resumed
    if metrics.get("interrupted"):
        # No metrics.json: the rerun must resume this run, not count it as finished.
        raise CompareInterrupted(f"{run_dir}: training was stopped; rerun to resume it")
    missing = [m for m in TABLE_METRICS if m not in metrics]
    if missing:
        raise ValueError(f"{run_dir}: train returned no {missing}; got keys {sorted(metrics)}")
    result = {
        **metrics,
        "wall_time_s": wall,
        "resumed": bool(resume),
        "seed": cfg.train.seed,
        "study": study.name,
        "cell": cell.name,
        "overrides": cell.overrides,
    }
    _write_json(metrics_path, result)
    return result


@dataclass(frozen=True)
class _Task:
    study: Study
    cell: Cell
    seed: int
    run_dir: Path


def _train_in_child(task: _Task, train_fn: TrainFn | None, threads: int) -> None:
    """Body of a ``--jobs`` worker process: one (cell, seed), output to its train.log."""
    task.run_dir.mkdir(parents=True, exist_ok=True)
    log = open(task.run_dir / "train.log", "a")  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)  # C-level writes (tqdm, warnings) too
    os.dup2(log.fileno(), 2)
    import torch

    torch.set_num_threads(threads)
    run_cell_seed(task.study, task.cell, task.seed, task.run_dir, train_fn or _default_train())


def _child_env(gpu: str | None, threads: int) -> dict[str, str]:
    env = {"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    return env | ({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})


@contextlib.contextmanager
def _sigterm_interrupts():
    """In the main thread, turn SIGTERM into KeyboardInterrupt while the block runs.

    Python's default SIGTERM ends the process at once, without ``finally`` clauses: a
    ``kill`` of ``hcral compare --jobs`` would leave its workers training as orphans.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_parallel(
    tasks: Sequence[_Task], jobs: int, gpus: Sequence[str] = (), train_fn: TrainFn | None = None
) -> None:
    """Train ``tasks`` in at most ``jobs`` spawned processes; raise naming failed runs.

    Each process sees ``gpus[slot % len(gpus)]`` alone when ``gpus`` is given. A stop
    (Ctrl-C or SIGTERM) terminates the workers, which write a checkpoint a rerun resumes
    from. (SIGKILL cannot be caught: it leaves the workers running.)
    """
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending, running, failed, done = list(tasks), {}, [], 0
    with _sigterm_interrupts():
        try:
            while pending or running:
                free = [s for s in range(jobs) if s not in {slot for _, slot in running.values()}]
                while pending and free:
                    slot, task = free.pop(0), pending.pop(0)
                    gpu = gpus[slot % len(gpus)] if gpus else None
                    running[_start_worker(ctx, task, train_fn, gpu, threads)] = (task, slot)
                time.sleep(0.2)
                for proc in [p for p in running if not p.is_alive()]:
                    task, _ = running.pop(proc)
                    done += 1
                    if proc.exitcode != 0:
                        failed.append(str(task.run_dir))
                        print(f"run failed: {task.run_dir}/train.log", file=sys.stderr)
                    else:
                        print(f"[{done}/{len(tasks)}] finished {task.run_dir}", flush=True)
        finally:
            for proc in running:
                proc.terminate()
                proc.join()
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed, see their train.log: {failed}")


def _start_worker(
    ctx: Any, task: _Task, train_fn: TrainFn | None, gpu: str | None, threads: int
) -> Any:
    """Start one spawned worker for ``task`` with its GPU and thread count."""
    env = _child_env(gpu, threads)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # a spawned child copies the environment at start
    try:
        proc = ctx.Process(target=_train_in_child, args=(task, train_fn, threads))
        proc.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return proc


def _default_train() -> TrainFn:
    from hcral.engine.train import train

    return train


def _digits(table: StudyTable) -> int:
    # COCO metrics here are percentages; a [0, 1] scale from another evaluator needs more.
    means = [abs(s.mean) for r in table.rows for s in r.metrics.values() if math.isfinite(s.mean)]
    return 3 if means and max(means) <= 1.0 else 1


def run_compare(
    grid_path: str | Path,
    seeds: int,
    out_dir: str | Path,
    train_fn: TrainFn | None = None,
    plots: bool = True,
    jobs: int = 1,
    gpus: Sequence[str] = (),
    first_seed: int = 0,
    report_only: bool = False,
    only: Sequence[str] = (),
) -> Path:
    """Run every study of a grid over ``seeds`` seeds and write tables and AP bar plots.

    Args:
        grid_path: grid YAML (format in the module docstring).
        seeds: number of seeds per cell, ≥ 1 (seed k runs with ``train.seed`` + k).
        out_dir: root of ``<study>/<cell>/seed_<k>/`` run folders and the reports.
        train_fn: ``train(cfg, resume=None) -> metrics dict``; default
            :func:`hcral.engine.train.train`. Injected by tests.
        plots: also write ``<study>/ap_bars.png``.
        jobs: runs trained at once, each in a spawned process (``train_fn`` must then
            be picklable: a module-level function).
        gpus: CUDA device ids handed to the ``jobs`` processes in turn.
        first_seed: index of the first seed, ≥ 0: runs seeds ``first_seed`` to
            ``first_seed + seeds - 1`` (e.g. seeds 4-7 on a second machine while
            another ran 0-3; a later ``--seeds 8`` over the merged folder reuses both).
        report_only: train nothing; tables from the runs finished so far (a study's
            cells without any are listed as not run; a study whose reference has none
            is left out), e.g. to look at a grid while it still runs.
        only: names of the studies to run and report (default: all of them).
    Returns:
        Path of ``out_dir/results.md`` holding every study's table (each study's table
        is also in ``<study>/table.md``, its numbers in ``<study>/summary.json``).
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    if not isinstance(first_seed, int) or first_seed < 0:
        raise ValueError(f"first_seed must be an integer >= 0, got {first_seed!r}")
    studies = select_studies(load_grid(grid_path), only)
    out = Path(out_dir)
    ks = range(first_seed, first_seed + seeds)
    # Seed-major order: a grid stopped half-way has whole seeds of every cell, which
    # already compare, instead of all seeds of the first cells and none of the rest.
    tasks = [
        _Task(study, cell, k, out / study.name / cell.name / f"seed_{k}")
        for k in ks
        for study in studies
        for cell in study.cells
    ]
    primaries, copies = split_duplicates(tasks)
    todo = [t for t in primaries if not (t.run_dir / "metrics.json").is_file()]
    if train_fn is None and not report_only:
        check_data(todo)
    if jobs > 1 and not report_only:
        run_parallel(todo, jobs, gpus, train_fn)
    train_fn = train_fn or _default_train()
    for t in todo if jobs == 1 and not report_only else ():
        run_cell_seed(t.study, t.cell, t.seed, t.run_dir, train_fn)
    for copy_task, source in copies:
        reuse_run(source, copy_task)
    label = f"{seeds} seed(s) per cell" + (f", seeds {ks[0]}-{ks[-1]}" if first_seed else "")
    label += ", finished runs only" if report_only else ""
    parts = [f"# Results of `{Path(grid_path).name}` ({label})\n"]
    parts += [_study_report(s, out, ks, train_fn, report_only, plots) for s in studies]
    result = out / "results.md"
    result.write_text("\n".join(parts))
    return result


def select_studies(studies: list[Study], only: Sequence[str]) -> list[Study]:
    """The studies named in ``only``, in grid order (all of them when ``only`` is empty)."""
    names = [s.name for s in studies]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"no study {unknown} in the grid; its studies are {names}")
    return [s for s in studies if not only or s.name in only]


def _run_key(task: _Task) -> str:
    """The resolved config of a run, minus its output folder, as canonical JSON."""
    cfg = cell_config(task.study, task.cell, task.seed, Path("."))
    return json.dumps(_numbers_as_float(dataclasses.asdict(cfg)), sort_keys=True, default=str)


def _numbers_as_float(value: Any) -> Any:
    # A grid's `mu: 5` and a base config's `mu: 5.0` configure the same run.
    if isinstance(value, dict):
        return {k: _numbers_as_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numbers_as_float(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def split_duplicates(tasks: Sequence[_Task]) -> tuple[list[_Task], list[tuple[_Task, _Task]]]:
    """Split runs into those to train and ``(copy, source)`` pairs of identical runs.

    Two runs are identical when their resolved configs agree in everything but the
    output folder, e.g. the default-value reference that every one-parameter study of
    ``hyper_params.yaml`` holds: it trains once per seed, and the other studies get a
    copy of its metrics (:func:`reuse_run`). The first run of each config, in ``tasks``
    order, is the one trained.
    """
    first: dict[str, _Task] = {}
    primaries, copies = [], []
    for task in tasks:
        source = first.setdefault(_run_key(task), task)
        if source is task:
            primaries.append(task)
        else:
            copies.append((task, source))
    return primaries, copies


def reuse_run(source: _Task, task: _Task) -> None:
    """Give ``task`` the finished metrics of the identical run ``source``.

    Writes ``task``'s ``metrics.json`` with its own study, cell and overrides, and
    ``reused_from`` = the source's run folder. Does nothing when ``task`` already has
    metrics or ``source`` has not finished.
    """
    target, origin = task.run_dir / "metrics.json", source.run_dir / "metrics.json"
    if target.is_file() or not origin.is_file():
        return
    metrics = json.loads(origin.read_text())
    metrics.update(
        study=task.study.name,
        cell=task.cell.name,
        overrides=task.cell.overrides,
        reused_from=str(source.run_dir),
    )
    task.run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(target, metrics)


def check_data(tasks: Sequence[_Task]) -> None:
    """Fail before any training when a run's dataset files are missing.

    Without this, ``--jobs N`` would start every run of the grid only to see each one
    fail on the same missing annotation file. Relative paths resolve against the
    current directory, as in training.
    """
    missing: dict[str, str] = {}
    for t in tasks:
        d = cell_config(t.study, t.cell, t.seed, t.run_dir).data
        for key in ("train_json", "train_images", "val_json", "val_images"):
            path = getattr(d, key)
            if not Path(path).exists():
                missing.setdefault(f"data.{key}: {path}", f"{t.study.name}/{t.cell.name}")
    if missing:
        lines = "\n".join(f"  {what} (first needed by {cell})" for what, cell in missing.items())
        hint = "the sample data is made by `hcral data make-sample data/sample`"
        raise FileNotFoundError(f"dataset files not found, nothing trained:\n{lines}\n({hint})")


def _study_report(
    study: Study, out: Path, ks: range, train_fn: TrainFn, report_only: bool, plots: bool
) -> str:
    """One study's Markdown table (also written to ``<study>/table.md``, its numbers to
    ``summary.json`` and, with ``plots``, its AP bars to ``ap_bars.png``)."""
    runs = _study_runs(study, out, ks, train_fn, finished_only=report_only)
    missing = [name for name, done in runs.items() if not done]
    if study.reference in missing:
        return f"### {study.name}\n\nNo finished run of the reference yet.\n"
    runs = {name: done for name, done in runs.items() if done}
    table = summarize_study(study.name, study.reference, runs)
    text = render_markdown(table, _digits(table))
    if missing:
        text += "\nNot run yet: " + ", ".join(f"`{name}`" for name in missing) + "\n"
    (out / study.name / "table.md").write_text(text)
    _write_json(out / study.name / "summary.json", _table_dict(table))
    if plots:
        from hcral.viz import plot_ap_bars

        plot_ap_bars(table, out / study.name / "ap_bars.png")
    return text


def _study_runs(
    study: Study, out: Path, ks: range, train_fn: TrainFn, finished_only: bool
) -> dict[str, list[dict[str, Any]]]:
    """Cell name -> metrics of its seeds ``ks`` (trained first where missing), in order;
    with ``finished_only``, only the seeds whose ``metrics.json`` exists."""
    runs = {}
    for cell in study.cells:
        dirs = {k: out / study.name / cell.name / f"seed_{k}" for k in ks}
        if finished_only:
            dirs = {k: d for k, d in dirs.items() if (d / "metrics.json").is_file()}
        runs[cell.name] = [run_cell_seed(study, cell, k, d, train_fn) for k, d in dirs.items()]
    return runs


def _table_dict(table: StudyTable) -> dict[str, Any]:
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
                "seeds_needed": r.seeds_needed,
                "wall_time_s": r.wall_time_s,
                "metrics": {m: vars(s) for m, s in r.metrics.items()},
            }
            for r in table.rows
        ],
    }
