"""Grid parsing, statistics, tables and the resumable runner (with a fake train function)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
from pathlib import Path

import pytest
import yaml

from hcral import compare
from hcral.compare import (
    Summary,
    apply_override,
    cell_config,
    compare_mark,
    difference_interval,
    format_summary,
    intervals_overlap,
    load_grid,
    render_markdown,
    run_compare,
    seeds_to_separate,
    summarize,
    summarize_study,
    t_quantile,
)
from hcral.config import Config

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = REPO / "configs" / "ablations"

# --------------------------------------------------------------------------- statistics


def test_summarize_hand_values():
    # mean 2, deviations -1, 0, 1 -> var (1 + 0 + 1) / 2 = 1, std 1;
    # t_{0.975, 2} = 4.3027 -> half width 4.3027 / sqrt(3) = 2.4841
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.lo == pytest.approx(2.0 - 2.48414, abs=1e-4)
    assert s.hi == pytest.approx(2.0 + 2.48414, abs=1e-4)


def test_summarize_two_values():
    # std of (36, 38) = sqrt(2); half width 12.706 * sqrt(2) / sqrt(2) = 12.706
    s = summarize([36.0, 38.0])
    assert s.std == pytest.approx(math.sqrt(2))
    assert s.hi - s.mean == pytest.approx(12.7062, abs=1e-3)


def test_summarize_single_seed_has_no_interval():
    s = summarize([37.5])
    assert s.n == 1 and s.mean == 37.5
    assert math.isnan(s.std) and not s.has_interval
    assert format_summary(s) == "37.5 (n=1)"


def test_summarize_empty_raises():
    with pytest.raises(ValueError, match="values"):
        summarize([])


def test_t_quantile_scipy_and_table_agree(monkeypatch):
    with_scipy = [t_quantile(df) for df in (1, 2, 4, 9, 30)]
    assert with_scipy == pytest.approx([12.706, 4.303, 2.776, 2.262, 2.042], abs=1e-3)
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    table = [t_quantile(df) for df in (1, 2, 4, 9, 30)]
    assert table == pytest.approx(with_scipy, abs=1e-3)
    assert t_quantile(22) == 2.086  # between rows: the smaller df's (larger) value
    with pytest.raises(ValueError, match="scipy"):
        t_quantile(3, confidence=0.9)


def test_t_quantile_bad_df():
    with pytest.raises(ValueError, match="df"):
        t_quantile(0)


def test_difference_interval_hand_values():
    # a: n=4, mean 10, std 2; b: n=3, mean 7, std 1 -> va = 1, vb = 1/3, se = 1.1547,
    # Welch df = (4/3)^2 / (1/3 + (1/9)/2) = 1.7778 / 0.38889 = 4.5714, t = 2.6682 (scipy)
    a, b = Summary(4, 10.0, 2.0, 0, 0), Summary(3, 7.0, 1.0, 0, 0)
    lo, hi = difference_interval(a, b)
    assert (lo + hi) / 2 == pytest.approx(3.0)
    assert (hi - lo) / 2 == pytest.approx(t_quantile(4.5714) * 1.1547, rel=1e-4)
    assert 2.6 < (hi - lo) / 2 / 1.1547 < 2.8
    assert difference_interval(Summary(2, 5.0, 0.0, 5, 5), Summary(2, 4.0, 0.0, 4, 4)) == (1, 1)
    one = Summary(1, 5.0, math.nan, math.nan, math.nan)
    assert all(math.isnan(v) for v in difference_interval(one, b))


def test_difference_interval_can_be_significant_while_intervals_overlap():
    # std 0.408 each: intervals [9.35, 10.65] and [10.35, 11.65] overlap, but Welch's
    # (df 6, t 2.447, se 0.289) is [0.29, 1.71]: the overlap mark is the conservative test.
    a = summarize([9.5, 10.0, 10.5, 10.0])
    b = summarize([10.5, 11.0, 11.5, 11.0])
    assert compare_mark(b, a) == "≈"
    lo, hi = difference_interval(b, a)
    assert lo == pytest.approx(0.293, abs=2e-3) and hi == pytest.approx(1.707, abs=2e-3)


def test_intervals_overlap():
    assert intervals_overlap((0, 1), (0.5, 2))
    assert intervals_overlap((0, 1), (1, 2))  # touching counts as overlap
    assert not intervals_overlap((0, 1), (1.01, 2))
    assert not intervals_overlap((3, 4), (1, 2))


def test_compare_mark():
    ref = Summary(3, 36.0, 0.2, 35.5, 36.5)
    assert compare_mark(Summary(3, 36.4, 0.2, 36.0, 36.8), ref) == "≈"
    assert compare_mark(Summary(3, 37.5, 0.2, 37.0, 38.0), ref) == "▲"
    assert compare_mark(Summary(3, 34.0, 0.2, 33.5, 34.5), ref) == "▼"
    assert compare_mark(Summary(1, 40.0, math.nan, math.nan, math.nan), ref) == "–"


def test_format_summary():
    assert format_summary(Summary(3, 37.234, 0.31, 36.5, 37.96)) == "37.2 ± 0.3 [36.5, 38.0]"


# --------------------------------------------------------------------------- tables


def _runs(values: dict[str, list[float]]) -> dict[str, list[dict]]:
    return {
        name: [{"AP": v, "AP50": v + 20, "AP75": v - 1, "wall_time_s": 90.0} for v in vals]
        for name, vals in values.items()
    }


def test_summarize_study_marks_and_markdown():
    runs = _runs({"focal": [36.0, 36.2, 36.4], "hcrac": [37.0, 37.2, 37.4], "qfl": [36.1, 36.3]})
    table = summarize_study("cls", "focal", runs)
    marks = {r.name: r.mark for r in table.rows}
    # focal: mean 36.2, std 0.2, half 4.303*0.2/sqrt3 = 0.497 -> [35.70, 36.70];
    # hcrac: [36.70, 37.70] -> touches 36.70? 36.2+0.4969=36.6969 < 37.2-0.4969=36.7031: ▲
    assert marks == {"focal": "ref", "hcrac": "▲", "qfl": "≈"}
    text = render_markdown(table)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| cell"))
    assert "AP50" in header and "ΔAP" in header
    hcrac = next(line for line in lines if "`hcrac`" in line)
    assert "37.2 ± 0.2 [36.7, 37.7]" in hcrac and "1.5 min" in hcrac
    # Welch: se = sqrt(2 · 0.04 / 3) = 0.1633, df = 4, t = 2.7764 -> 1.0 ± 0.4534
    assert "+1.0 [+0.5, +1.5]" in hcrac
    hc = next(r for r in table.rows if r.name == "hcrac")
    assert hc.delta_ci == pytest.approx((1.0 - 0.45338, 1.0 + 0.45338), abs=1e-4)
    assert "57.2 ± 0.2" in hcrac  # AP50 column
    assert hcrac.rstrip(" |").endswith("▲")
    assert "- `hcrac`: 37.0 / 37.2 / 37.4" in lines and "- `qfl`: 36.1 / 36.3" in lines
    # Only the ≈ cell gets a seeds estimate; qfl's ΔAP is 0, so no number of seeds does.
    heading = "Seeds per cell for intervals apart at the observed ΔAP and spread:"
    tail = lines[lines.index(heading) :]
    assert "- `qfl`: more than 1000 (or ΔAP = 0)" in tail
    assert not any("`hcrac`" in line for line in tail)


def test_paired_difference_interval_hand_values():
    # d = [1, 1, 0]: mean 2/3, sd √(1/3), se 1/3, t2 = 4.3027 -> 0.6667 ± 1.4342
    cell, ref = {0: 2.0, 1: 3.0, 2: 4.0, 5: 9.0}, {0: 1.0, 1: 2.0, 2: 4.0}
    mean, lo, hi, n = compare.paired_difference_interval(cell, ref)
    assert n == 3  # seed 5 has no partner
    assert (mean, lo, hi) == pytest.approx((2 / 3, 2 / 3 - 1.434218, 2 / 3 + 1.434218), abs=1e-5)
    mean, lo, hi, n = compare.paired_difference_interval({0: 2.0}, ref)
    assert (mean, n) == (1.0, 1) and math.isnan(lo) and math.isnan(hi)
    mean, lo, hi, n = compare.paired_difference_interval({7: 2.0}, ref)
    assert n == 0 and math.isnan(mean)


def _seeded(values: dict[str, list[float]], seeds: list[int]) -> dict[str, list[dict]]:
    runs = _runs(values)
    for rows in runs.values():
        for r, k in zip(rows, seeds, strict=True):
            r["seed"] = k
    return runs


def test_paired_column_is_sharper_when_seeds_move_all_cells_alike():
    # Seed 2 is lucky for both cells: Welch's interval spans 0, the paired one does not.
    # d = [0.6, 0.4, 0.6]: mean 0.5333, sd 0.11547, se 0.066667, half 4.3027 · se = 0.28684
    runs = _seeded({"GIoU": [5.9, 6.6, 8.8], "HCRAR": [6.5, 7.0, 9.4]}, [10, 11, 12])
    runs["HCRAR"].reverse()  # pairs by seed, not by list order
    table = summarize_study("reg", "GIoU", runs)
    row = next(r for r in table.rows if r.name == "HCRAR")
    assert row.delta_ci[0] < 0 < row.delta_ci[1]
    assert row.paired_n == 3 and row.paired_delta == pytest.approx(0.53333, abs=1e-4)
    assert row.paired_ci == pytest.approx((0.53333 - 0.28684, 0.53333 + 0.28684), abs=1e-4)
    text = render_markdown(table)
    assert "paired ΔAP [95% CI]" in text
    hcrar = next(line for line in text.splitlines() if "`HCRAR`" in line)
    assert "+0.5 [+0.2, +0.8] (n=3)" in hcrar
    assert compare._table_dict(table)["rows"][1]["paired_n"] == 3


def test_paired_column_needs_seed_ids():
    table = summarize_study("cls", "a", _runs({"a": [1.0, 2.0], "b": [1.5, 2.5]}))
    assert all(r.paired_n == 0 for r in table.rows)
    line = next(x for x in render_markdown(table).splitlines() if "`b`" in x)
    assert "| – |" in line
    dup = _seeded({"a": [1.0, 2.0], "b": [1.5, 2.5]}, [3, 3])  # same seed twice: no pairing
    assert summarize_study("cls", "a", dup).rows[1].paired_n == 0


def test_seeds_to_separate_hand_values():
    # std 1 each, ΔAP 1: n = 17 gives t16 · 2 / √17 = 2.1199 · 0.4851 = 1.028 (apart? no);
    # n = 18 gives t17 · 2 / √18 = 2.1098 · 0.4714 = 0.995 < 1.
    assert seeds_to_separate(1.0, 1.0, 1.0) == 18
    assert seeds_to_separate(-1.0, 1.0, 1.0) == 18  # the sign does not matter
    assert seeds_to_separate(3.0, 0.0, 0.0) == 2  # no spread: two seeds suffice
    assert seeds_to_separate(0.0, 1.0, 1.0) is None
    assert seeds_to_separate(math.nan, 1.0, 1.0) is None
    assert seeds_to_separate(1.0, math.nan, 1.0) is None
    assert seeds_to_separate(0.01, 2.0, 2.0) is None  # beyond max_seeds


def test_seeds_to_separate_agrees_with_the_overlap_mark():
    # Cells with exactly std 1 at n seeds: the estimate n separates them, n - 1 does not.
    n = seeds_to_separate(1.0, 1.0, 1.0)

    def cell(mean: float, k: int) -> Summary:
        return summarize([mean + v for v in _unit_std(k)])

    assert compare_mark(cell(1.0, n), cell(0.0, n)) == "▲"
    assert compare_mark(cell(1.0, n - 1), cell(0.0, n - 1)) == "≈"


def _unit_std(k: int) -> list[float]:
    """k values of mean 0 and sample std exactly 1 (up to rounding)."""
    raw = [float(i) for i in range(k)]
    mean = sum(raw) / k
    std = math.sqrt(sum((v - mean) ** 2 for v in raw) / (k - 1))
    return [(v - mean) / std for v in raw]


def test_summarize_study_missing_metric_or_reference():
    with pytest.raises(ValueError, match="AP75"):
        summarize_study("s", "a", {"a": [{"AP": 1.0, "AP50": 2.0}]})
    with pytest.raises(ValueError, match="reference"):
        summarize_study("s", "zzz", _runs({"a": [1.0]}))


# --------------------------------------------------------------------------- grid


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def base_cfg(tmp_path) -> Path:
    return _write(
        tmp_path / "base.yaml",
        {
            "model": {"name": "atss", "cls_loss_args": {"mu": 5.0, "theta": 0.7}},
            "train": {"seed": 10},
        },
    )


def test_load_grid_product_and_list(tmp_path, base_cfg):
    grid = _write(
        tmp_path / "grid.yaml",
        {
            "base": "base.yaml",
            "set": {"train.max_iters": 3},
            "studies": {
                "hp": {
                    "axes": {
                        "model.cls_loss_args.mu": [3, 5],
                        "model.cls_loss_args.bins": [10, 20, 30],
                    },
                    "reference": "mu=5,bins=20",
                },
                "ladder": {
                    "set": {"train.max_iters": 4},
                    "cells": [{"name": "A"}, {"name": "B", "set": {"model.assigner": "eatss"}}],
                },
            },
        },
    )
    hp, ladder = load_grid(grid)
    assert hp.base == base_cfg.resolve()
    assert len(hp.cells) == 6 and hp.reference == "mu=5,bins=20"
    assert hp.cells[0].name == "mu=3,bins=10"
    assert hp.cells[0].overrides == {
        "train.max_iters": 3,
        "model.cls_loss_args.mu": 3,
        "model.cls_loss_args.bins": 10,
    }
    assert [c.name for c in ladder.cells] == ["A", "B"] and ladder.reference == "A"
    assert ladder.cells[1].overrides == {"train.max_iters": 4, "model.assigner": "eatss"}


def test_cell_config_merges_dict_fields_and_sets_seed(tmp_path, base_cfg):
    grid = _write(
        tmp_path / "g.yaml",
        {"base": "base.yaml", "studies": {"s": {"axes": {"model.cls_loss_args.mu": [3]}}}},
    )
    (study,) = load_grid(grid)
    cfg = cell_config(study, study.cells[0], seed=2, output_dir=tmp_path / "run")
    assert cfg.model.cls_loss_args == {"mu": 3, "theta": 0.7}  # theta kept from base
    assert cfg.train.seed == 12 and cfg.train.output_dir == str(tmp_path / "run")


def test_cells_keep_the_base_config_read_when_the_grid_was_loaded(tmp_path, base_cfg):
    grid = _write(
        tmp_path / "g.yaml",
        {"base": "base.yaml", "studies": {"s": {"axes": {"train.epochs": [2]}}}},
    )
    (study,) = load_grid(grid)
    _write(base_cfg, {"model": {"name": "retinanet"}, "train": {"seed": 99, "no_such": 1}})
    cfg = cell_config(study, study.cells[0], seed=0, output_dir=tmp_path / "run")
    assert cfg.model.name == "atss" and cfg.train.seed == 10 and cfg.train.epochs == 2
    assert load_grid(grid)[0].base_raw["model"] == {"name": "retinanet"}  # a reload sees it


def test_missing_or_malformed_base_fails_when_the_grid_loads(tmp_path, base_cfg):
    studies = {"s": {"axes": {"train.epochs": [2]}}}
    grid = _write(tmp_path / "g.yaml", {"base": "nope.yaml", "studies": studies})
    with pytest.raises(ValueError, match="nope.yaml"):
        load_grid(grid)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    grid = _write(tmp_path / "g.yaml", {"base": "list.yaml", "studies": studies})
    with pytest.raises(ValueError, match="list.yaml"):
        load_grid(grid)


@pytest.mark.parametrize(
    ("studies", "match"),
    [
        ({}, "empty"),
        ({"s": {"axes": {"model.x": [1]}, "cells": [{"name": "a"}]}}, "exactly one"),
        ({"s": {}}, "exactly one"),
        ({"s": {"axes": {"model.cls_loss": []}}}, "non-empty list"),
        ({"s": {"cells": [{"name": "a"}, {"name": "a"}]}}, "duplicate"),
        ({"s": {"cells": [{"set": {}}]}}, "name"),
        ({"s": {"cells": [{"name": "a"}], "reference": "b"}}, "reference 'b'"),
        ({"s": {"cells": [{"name": "a"}], "extra": 1}}, "unknown key"),
    ],
)
def test_load_grid_errors(tmp_path, base_cfg, studies, match):
    grid = _write(tmp_path / "bad.yaml", {"base": "base.yaml", "studies": studies})
    with pytest.raises(ValueError, match=match):
        load_grid(grid)


def test_apply_override_errors():
    raw = {"model": {"name": "atss"}}
    with pytest.raises(ValueError, match="section.key"):
        apply_override(raw, "model", 1)
    with pytest.raises(ValueError, match="not a mapping"):
        apply_override(raw, "model.name.sub", 1)


def test_unknown_config_key_in_cell_is_error(tmp_path, base_cfg):
    grid = _write(
        tmp_path / "g.yaml",
        {"base": "base.yaml", "studies": {"s": {"cells": [{"name": "a", "set": {"model.no": 1}}]}}},
    )
    (study,) = load_grid(grid)
    with pytest.raises(ValueError, match="no"):
        cell_config(study, study.cells[0], 0, tmp_path)


# --------------------------------------------------------------------------- shipped grids

EXPECTED_CELLS = {
    "cls_losses.yaml": {"retinanet": 6, "atss": 6},  # the paper's five + HCRAC-focal
    "cls_losses_short.yaml": {"atss_short": 6},
    "focal_base.yaml": {"focal_base": 6},
    "reg_losses.yaml": {"retinanet": 6, "atss": 6},
    "eatss_l.yaml": {"eatss_l": 4},
    "ladder.yaml": {"ladder": 4},
    "hyper_params_short.yaml": {
        "hcrac_bins": 3,
        "hcrac_mu": 4,
        "hcrac_theta": 5,
        "hcrar_alpha": 4,
        "hcrar_ep": 3,
        "hcrar_gamma": 4,
    },  # fmt: skip
}


def _check_losses_build(cfg: Config) -> None:
    """Each cell's loss arguments are accepted by the criterion it names, where it exists."""
    from hcral.losses import CLS_LOSSES, REG_LOSSES, build_cls_loss, build_reg_loss

    for table, build, name, args in (
        (CLS_LOSSES, build_cls_loss, cfg.model.cls_loss, cfg.model.cls_loss_args),
        (REG_LOSSES, build_reg_loss, cfg.model.reg_loss, cfg.model.reg_loss_args),
    ):
        assert name in table, name
        try:
            importlib.import_module(f"hcral.losses.{table[name].split(':')[0]}")
        except ImportError:
            continue  # that family is not written yet
        build(name, **args)


@pytest.mark.parametrize("name", sorted(p.name for p in ABLATIONS.glob("*.yaml")))
def test_shipped_grid_expands_and_every_cell_loads(name, tmp_path):
    path = ABLATIONS / name
    assert path.read_text().lstrip().startswith("#"), "grid files document the format on top"
    studies = load_grid(path)
    if name in EXPECTED_CELLS:
        assert {s.name: len(s.cells) for s in studies} == EXPECTED_CELLS[name]
    defaults = _write(tmp_path / "defaults.yaml", {})
    for study in studies:
        # Base configs come from the CLI task; until they exist, check against defaults.
        if not study.base.is_file():
            study = dataclasses.replace(study, base=defaults)
        for cell in study.cells:
            cfg = cell_config(study, cell, 0, tmp_path / cell.name)
            for key, value in cell.overrides.items():
                section, field, *sub = key.split(".")
                got = getattr(getattr(cfg, section), field)
                assert (got[sub[0]] if sub else got) == value, (study.name, cell.name, key)
            _check_losses_build(cfg)


def test_hyper_params_grid_covers_every_parameter():
    studies = {s.name: s for s in load_grid(ABLATIONS / "hyper_params.yaml")}
    varied = {k.split(".")[-1] for s in studies.values() for c in s.cells for k in c.overrides}
    assert {"bins", "mu", "theta", "alpha", "ep", "gamma"} <= varied
    for study in studies.values():  # the reference is the paper's default value
        ref = next(c for c in study.cells if c.name == study.reference)
        assert list(ref.overrides.values())[-1] in (20, 5.0, 0.7, -0.1, 0.001, 1.2)


def test_ladder_is_cumulative():
    (ladder,) = load_grid(ABLATIONS / "ladder.yaml")
    assert [c.name for c in ladder.cells] == ["ATSS", "EATSS", "+HCRAC", "+HCRAR"]
    for earlier, later in zip(ladder.cells, ladder.cells[1:]):
        kept = {k: later.overrides.get(k) for k in earlier.overrides}
        assert kept == earlier.overrides and len(later.overrides) > len(earlier.overrides)


# --------------------------------------------------------------------------- runner


class FakeTrain:
    """Deterministic metrics from (mu, seed); records calls; can crash once on demand."""

    def __init__(self, crash_on: tuple[str, int] | None = None):
        self.calls: list[tuple[str, int, bool | None]] = []
        self.crash_on = crash_on

    def __call__(self, cfg: Config, resume=None):
        out = Path(cfg.train.output_dir)
        key = (out.parent.name, cfg.train.seed)
        self.calls.append((out.parent.name, cfg.train.seed, resume))
        if self.crash_on == key:
            self.crash_on = None
            (out / compare.CHECKPOINT_NAME).write_bytes(b"ckpt")
            raise RuntimeError("killed")
        ap = 30.0 + cfg.model.cls_loss_args.get("mu", 0) + 0.1 * (cfg.train.seed - 10)
        return {"AP": ap, "AP50": ap + 20, "AP75": ap - 2, "APs": 1.0, "APm": 2.0, "APl": 3.0}


def _grid(tmp_path: Path, base_cfg: Path) -> Path:
    return _write(
        tmp_path / "grid.yaml",
        {"base": base_cfg.name, "studies": {"mu": {"axes": {"model.cls_loss_args.mu": [0, 5]}}}},
    )


def test_run_compare_writes_runs_tables_and_plot(tmp_path, base_cfg):
    fake = FakeTrain()
    out = tmp_path / "out"
    result = run_compare(_grid(tmp_path, base_cfg), seeds=2, out_dir=out, train_fn=fake)
    assert result == out / "results.md"
    assert sorted(fake.calls) == [
        ("mu=0", 10, None),
        ("mu=0", 11, None),
        ("mu=5", 10, None),
        ("mu=5", 11, None),
    ]
    metrics = json.loads((out / "mu" / "mu=5" / "seed_1" / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(35.1) and metrics["seed"] == 11
    assert metrics["wall_time_s"] >= 0
    text = result.read_text()
    # mu=5 seeds: 35.0, 35.1 -> mean 35.05, std 0.0707, half 12.706*0.0707/sqrt2 = 0.635
    assert "35.0 ± 0.1 [34.4, 35.7]" in text or "35.1 ± 0.1 [34.4, 35.7]" in text
    assert "▲" in text  # [34.4, 35.7] lies wholly above mu=0's [29.4, 30.7]
    assert (out / "mu" / "table.md").read_text() in text
    summary = json.loads((out / "mu" / "summary.json").read_text())
    assert summary["rows"][1]["metrics"]["AP"]["mean"] == pytest.approx(35.05)
    assert (out / "mu" / "ap_bars.png").stat().st_size > 1000


def test_run_compare_skips_finished_and_resumes_interrupted(tmp_path, base_cfg):
    grid, out = _grid(tmp_path, base_cfg), tmp_path / "out"
    crashing = FakeTrain(crash_on=("mu=5", 10))
    with pytest.raises(RuntimeError, match="killed"):
        run_compare(grid, seeds=2, out_dir=out, train_fn=crashing, plots=False)
    # Seed-major: mu=0 seed 0 finished, then mu=5 seed 0 died.
    assert crashing.calls == [("mu=0", 10, None), ("mu=5", 10, None)]
    again = FakeTrain()
    run_compare(grid, seeds=2, out_dir=out, train_fn=again, plots=False)
    assert again.calls == [("mu=5", 10, True), ("mu=0", 11, None), ("mu=5", 11, None)]
    third = FakeTrain()
    run_compare(grid, seeds=2, out_dir=out, train_fn=third, plots=False)
    assert third.calls == []


def test_report_only_tabulates_finished_runs_and_trains_nothing(tmp_path, base_cfg):
    grid, out = _grid(tmp_path, base_cfg), tmp_path / "out"
    crashing = FakeTrain(crash_on=("mu=0", 11))  # finished: mu=0 and mu=5 seed 0
    with pytest.raises(RuntimeError, match="killed"):
        run_compare(grid, seeds=3, out_dir=out, train_fn=crashing, plots=False)
    idle = FakeTrain()
    text = run_compare(grid, 3, out, train_fn=idle, plots=False, report_only=True).read_text()
    assert idle.calls == [] and "finished runs only" in text
    assert "| `mu=5` | 1 | 35.0 (n=1)" in text  # one finished seed, no interval
    # the reference only: its cell appears and the other is listed as not run
    (out / "mu" / "mu=5" / "seed_0" / "metrics.json").unlink()
    text = run_compare(grid, 3, out, train_fn=idle, plots=False, report_only=True).read_text()
    assert "Not run yet: `mu=5`" in text and "| `mu=0` | 1 |" in text
    (out / "mu" / "mu=0" / "seed_0" / "metrics.json").unlink()
    text = run_compare(grid, 3, out, train_fn=idle, plots=False, report_only=True).read_text()
    assert "No finished run of the reference yet" in text and idle.calls == []


def test_run_compare_stopped_run_is_resumed_not_counted(tmp_path, base_cfg):
    grid, out = _grid(tmp_path, base_cfg), tmp_path / "out"

    def stopped(cfg, resume=None):
        (Path(cfg.train.output_dir) / compare.CHECKPOINT_NAME).write_bytes(b"ckpt")
        return {"interrupted": True, "iterations": 3}  # what the engine returns on SIGINT

    with pytest.raises(compare.CompareInterrupted, match="rerun"):
        run_compare(grid, seeds=1, out_dir=out, train_fn=stopped, plots=False)
    assert not (out / "mu" / "mu=0" / "seed_0" / "metrics.json").exists()
    again = FakeTrain()
    run_compare(grid, seeds=1, out_dir=out, train_fn=again, plots=False)
    assert again.calls[0] == ("mu=0", 10, True)


def test_run_compare_train_without_ap_is_error(tmp_path, base_cfg):
    with pytest.raises(ValueError, match="AP"):
        run_compare(_grid(tmp_path, base_cfg), 1, tmp_path / "o", lambda cfg, resume: {})


def test_run_compare_single_seed_shows_n1(tmp_path, base_cfg):
    result = run_compare(_grid(tmp_path, base_cfg), 1, tmp_path / "o", FakeTrain(), plots=False)
    text = result.read_text()
    assert "35.0 (n=1)" in text and "[" not in text.split("|---")[1]


def test_run_compare_bad_seeds(tmp_path, base_cfg):
    with pytest.raises(ValueError, match="seeds"):
        run_compare(_grid(tmp_path, base_cfg), 0, tmp_path / "o", FakeTrain())
    with pytest.raises(ValueError, match="first_seed"):
        run_compare(_grid(tmp_path, base_cfg), 1, tmp_path / "o", FakeTrain(), first_seed=-1)


def test_run_compare_first_seed_adds_seeds_a_later_run_reuses(tmp_path, base_cfg):
    grid, out = _grid(tmp_path, base_cfg), tmp_path / "out"
    late = FakeTrain()
    result = run_compare(grid, seeds=1, out_dir=out, train_fn=late, plots=False, first_seed=1)
    assert late.calls == [("mu=0", 11, None), ("mu=5", 11, None)]
    assert "seeds 1-1" in result.read_text()
    assert not (out / "mu" / "mu=0" / "seed_0").exists()
    early = FakeTrain()
    text = run_compare(grid, seeds=2, out_dir=out, train_fn=early, plots=False).read_text()
    assert early.calls == [("mu=0", 10, None), ("mu=5", 10, None)]  # seed 1 reused
    assert "| 2 |" in text


def test_missing_data_fails_before_any_run_starts(tmp_path, base_cfg, monkeypatch):
    """The default trainer needs the dataset: a grid whose data is missing trains
    nothing and names every missing path (not N failed runs, one per job)."""
    monkeypatch.chdir(tmp_path)  # data/sample/... resolves here, where there is none
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError) as err:
        run_compare(_grid(tmp_path, base_cfg), seeds=2, out_dir=out, jobs=2, plots=False)
    text = str(err.value)
    for key in ("train_json", "train_images", "val_json", "val_images"):
        assert f"data.{key}: data/sample" in text
    assert "mu/mu=0" in text and "make-sample" in text
    assert not out.exists()


def test_check_data_passes_when_files_exist(tmp_path, base_cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ("data/sample/train", "data/sample/val", "data/sample/annotations"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("train.json", "val.json"):
        (tmp_path / "data/sample/annotations" / f).write_text("{}")
    study = compare.load_grid(_grid(tmp_path, base_cfg))[0]
    tasks = [compare._Task(study, c, 0, tmp_path / "out" / c.name) for c in study.cells]
    compare.check_data(tasks)  # no error
    (tmp_path / "data/sample/annotations/val.json").unlink()
    with pytest.raises(FileNotFoundError, match="data.val_json"):
        compare.check_data(tasks)


def test_checkpoint_name_matches_engine():
    checkpoint = pytest.importorskip("hcral.engine.checkpoint")
    assert compare.CHECKPOINT_NAME == checkpoint.LAST


@pytest.mark.slow
def test_run_compare_with_the_real_engine(tmp_path):
    """Two cells × 2 seeds of a few iterations each on a tiny generated sample set."""
    sample = pytest.importorskip("hcral.data.sample")
    pytest.importorskip("hcral.engine.train")
    data = tmp_path / "data"
    sample.make_sample(data, num_train=8, num_val=4, image_size=128)
    grid = _write(
        tmp_path / "grid.yaml",
        {
            "base": str(REPO / "configs" / "atss_focal_giou.yaml"),
            "set": {
                "data.train_json": str(data / "annotations" / "train.json"),
                "data.train_images": str(data / "train"),
                "data.val_json": str(data / "annotations" / "val.json"),
                "data.val_images": str(data / "val"),
                "data.min_size": [128],
                "data.max_size": 128,
                "train.epochs": 1,
                "train.max_iters": 2,
                "train.batch_size": 2,
                "train.amp": False,
                "model.fpn_channels": 32,
                "model.num_convs": 1,
            },
            "studies": {"cls": {"cells": [
                {"name": "FL"},
                {"name": "HCRAC", "set": {"model.cls_loss": "hcrac", "model.cls_loss_args": {}}},
            ]}},
        },
    )  # fmt: skip
    result = run_compare(grid, seeds=2, out_dir=tmp_path / "out")
    text = result.read_text()
    assert "`FL`" in text and "`HCRAC`" in text
    for cell in ("FL", "HCRAC"):
        for k in (0, 1):
            metrics = json.loads(
                (tmp_path / "out" / "cls" / cell / f"seed_{k}" / "metrics.json").read_text()
            )
            assert metrics["iterations"] == 2 and "AP" in metrics
    assert (tmp_path / "out" / "cls" / "ap_bars.png").stat().st_size > 1000


class ChildTrain:
    """A picklable fake for ``--jobs``: records the worker's pid, GPU and threads."""

    def __init__(self, fail_cell: str = ""):
        self.fail_cell = fail_cell

    def __call__(self, cfg: Config, resume=None):
        cell = Path(cfg.train.output_dir).parent.name
        print(f"training {cell}")  # goes to the run's train.log, not the terminal
        if cell == self.fail_cell:
            raise RuntimeError("worker failed on purpose")
        ap = 30.0 + cfg.model.cls_loss_args.get("mu", 0)
        gpu, threads = os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("OMP_NUM_THREADS")
        return {
            "AP": ap,
            "AP50": ap,
            "AP75": ap,
            "pid": os.getpid(),
            "gpu": gpu,
            "threads": threads,
        }


_SIGTERM_SCRIPT = """
import os, sys, time
from pathlib import Path
from hcral.compare import _Task, load_grid, run_parallel

class SleepTrain:
    def __call__(self, cfg, resume=None):
        Path(cfg.train.output_dir, "pid").write_text(str(os.getpid()))
        time.sleep(300)

if __name__ == "__main__":
    (study,) = load_grid(sys.argv[1])
    out = Path(sys.argv[2])
    tasks = [_Task(study, c, 0, out / c.name) for c in study.cells]
    run_parallel(tasks, jobs=2, train_fn=SleepTrain())
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has stopped running


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_to_compare_jobs_stops_its_workers(tmp_path, base_cfg):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "run.py"
    script.write_text(_SIGTERM_SCRIPT)
    out = tmp_path / "out"
    parent = subprocess.Popen(
        [sys.executable, str(script), str(_grid(tmp_path, base_cfg)), str(out)]
    )
    pid_files = [out / "mu=0" / "pid", out / "mu=5" / "pid"]
    deadline = time.monotonic() + 120  # two spawned interpreters import torch
    while not all(f.exists() and f.read_text() for f in pid_files):
        assert parent.poll() is None and time.monotonic() < deadline, "workers did not start"
        time.sleep(0.2)
    workers = [int(f.read_text()) for f in pid_files]
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) != 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [pid for pid in workers if _alive(pid)]
    for pid in alive:  # do not leave them behind if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, "workers outlived a SIGTERM to hcral compare --jobs"


def test_run_compare_jobs_trains_in_worker_processes(tmp_path, base_cfg):
    grid, out = _grid(tmp_path, base_cfg), tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed.*mu=0"):
        run_compare(grid, 1, out, train_fn=ChildTrain("mu=0"), plots=False, jobs=2, gpus=["7"])
    done = json.loads((out / "mu" / "mu=5" / "seed_0" / "metrics.json").read_text())
    assert done["pid"] != os.getpid() and done["gpu"] == "7" and int(done["threads"]) >= 1
    assert "training mu=5" in (out / "mu" / "mu=5" / "seed_0" / "train.log").read_text()
    assert "worker failed on purpose" in (out / "mu" / "mu=0" / "seed_0" / "train.log").read_text()
    run_compare(grid, 1, out, train_fn=ChildTrain(), plots=False, jobs=2)  # only mu=0 left
    again = json.loads((out / "mu" / "mu=5" / "seed_0" / "metrics.json").read_text())
    assert again["pid"] == done["pid"]  # finished runs are not trained again
    assert "30.0" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="jobs"):
        run_compare(grid, 1, out, train_fn=ChildTrain(), jobs=0)


# --------------------------------------------------------------------------- identical runs


def _two_studies_sharing_a_cell(tmp_path: Path, base_cfg: Path) -> Path:
    # Both studies hold the base config as their reference (mu=5 is the base value),
    # as every one-parameter study of hyper_params.yaml does.
    studies = {
        "mu": {"axes": {"model.cls_loss_args.mu": [5, 0]}},
        "theta": {"axes": {"model.cls_loss_args.theta": [0.7, 0.9]}},
    }
    return _write(tmp_path / "grid.yaml", {"base": base_cfg.name, "studies": studies})


def test_identical_runs_train_once_and_are_copied(tmp_path, base_cfg):
    grid, out = _two_studies_sharing_a_cell(tmp_path, base_cfg), tmp_path / "out"
    fake = FakeTrain()
    text = run_compare(grid, seeds=2, out_dir=out, train_fn=fake, plots=False).read_text()
    # theta=0.7 is the same config as mu=5 (seed by seed): 3 distinct cells x 2 seeds
    assert sorted(fake.calls) == [
        ("mu=0", 10, None), ("mu=0", 11, None), ("mu=5", 10, None), ("mu=5", 11, None),
        ("theta=0.9", 10, None), ("theta=0.9", 11, None),
    ]  # fmt: skip
    for k in (0, 1):
        copied = json.loads((out / "theta/theta=0.7" / f"seed_{k}/metrics.json").read_text())
        source = json.loads((out / "mu/mu=5" / f"seed_{k}/metrics.json").read_text())
        assert copied["reused_from"] == str(out / "mu" / "mu=5" / f"seed_{k}")
        assert (copied["study"], copied["cell"]) == ("theta", "theta=0.7")
        assert copied["overrides"] == {"model.cls_loss_args.theta": 0.7}
        assert copied["AP"] == source["AP"] and copied["seed"] == source["seed"]
    assert "| `theta=0.7` | 2 | 35.0 ± 0.1" in text  # the table reads the copy
    again = FakeTrain()
    run_compare(grid, seeds=2, out_dir=out, train_fn=again, plots=False)
    assert again.calls == []


def test_split_duplicates_keys_on_everything_but_the_folder(tmp_path, base_cfg):
    grid = _two_studies_sharing_a_cell(tmp_path, base_cfg)
    mu, theta = load_grid(grid)
    tasks = [
        compare._Task(s, c, k, tmp_path / s.name / c.name / str(k))
        for k in (0, 1)
        for s in (mu, theta)
        for c in s.cells
    ]
    primaries, copies = compare.split_duplicates(tasks)
    assert [(t.cell.name, t.seed) for t in primaries] == [
        ("mu=5", 0), ("mu=0", 0), ("theta=0.9", 0), ("mu=5", 1), ("mu=0", 1), ("theta=0.9", 1),
    ]  # fmt: skip
    assert [(c.cell.name, c.seed, s.cell.name, s.seed) for c, s in copies] == [
        ("theta=0.7", 0, "mu=5", 0), ("theta=0.7", 1, "mu=5", 1),
    ]  # fmt: skip


def test_a_copy_waits_for_its_source(tmp_path, base_cfg):
    grid, out = _two_studies_sharing_a_cell(tmp_path, base_cfg), tmp_path / "out"
    crashing = FakeTrain(crash_on=("mu=5", 10))
    with pytest.raises(RuntimeError, match="killed"):
        run_compare(grid, seeds=1, out_dir=out, train_fn=crashing, plots=False)
    assert not (out / "theta" / "theta=0.7" / "seed_0" / "metrics.json").exists()
    again = FakeTrain()
    run_compare(grid, seeds=1, out_dir=out, train_fn=again, plots=False)
    assert again.calls == [("mu=5", 10, True), ("mu=0", 10, None), ("theta=0.9", 10, None)]
    assert (out / "theta" / "theta=0.7" / "seed_0" / "metrics.json").is_file()


def test_only_runs_the_named_studies(tmp_path, base_cfg):
    grid, out = _two_studies_sharing_a_cell(tmp_path, base_cfg), tmp_path / "out"
    fake = FakeTrain()
    text = run_compare(grid, 1, out, train_fn=fake, plots=False, only=["theta"]).read_text()
    assert fake.calls == [("theta=0.7", 10, None), ("theta=0.9", 10, None)]
    assert "### theta" in text and "### mu" not in text and not (out / "mu").exists()
    with pytest.raises(ValueError, match=r"no study \['nope'\].*\['mu', 'theta'\]"):
        run_compare(grid, 1, out, train_fn=fake, plots=False, only=["nope"])


def test_hyper_params_grids_train_their_shared_reference_once(tmp_path):
    # The six one-parameter studies share their default-value reference: 23 cells,
    # 18 distinct configs.
    for name in ("hyper_params.yaml", "hyper_params_short.yaml"):
        studies = load_grid(ABLATIONS / name)
        tasks = [
            compare._Task(s, c, 0, tmp_path / s.name / c.name) for s in studies for c in s.cells
        ]
        primaries, copies = compare.split_duplicates(tasks)
        assert (len(tasks), len(primaries)) == (23, 18)
        assert {source.cell.name for _, source in copies} == {"bins=20"}
