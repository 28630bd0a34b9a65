"""Grid files: parsing, overrides, errors, and every shipped grid under configs/ablations."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest
from tests.compare._fakes import (
    ABLATIONS,
    write_yaml,
)

from hcral.compare import (
    apply_override,
    cell_config,
    load_grid,
)
from hcral.config import Config


def test_load_grid_product_and_list(tmp_path, base_cfg):
    grid = write_yaml(
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
    assert not hp.ladder and not ladder.ladder  # the step table is asked for, not guessed
    assert ladder.cells[1].overrides == {"train.max_iters": 4, "model.assigner": "eatss"}


def test_cell_config_merges_dict_fields_and_sets_seed(tmp_path, base_cfg):
    grid = write_yaml(
        tmp_path / "g.yaml",
        {"base": "base.yaml", "studies": {"s": {"axes": {"model.cls_loss_args.mu": [3]}}}},
    )
    (study,) = load_grid(grid)
    cfg = cell_config(study, study.cells[0], seed=2, output_dir=tmp_path / "run")
    assert cfg.model.cls_loss_args == {"mu": 3, "theta": 0.7}  # theta kept from base
    assert cfg.train.seed == 12 and cfg.train.output_dir == str(tmp_path / "run")


def test_cells_keep_the_base_config_read_when_the_grid_was_loaded(tmp_path, base_cfg):
    grid = write_yaml(
        tmp_path / "g.yaml",
        {"base": "base.yaml", "studies": {"s": {"axes": {"train.epochs": [2]}}}},
    )
    (study,) = load_grid(grid)
    write_yaml(base_cfg, {"model": {"name": "retinanet"}, "train": {"seed": 99, "no_such": 1}})
    cfg = cell_config(study, study.cells[0], seed=0, output_dir=tmp_path / "run")
    assert cfg.model.name == "atss" and cfg.train.seed == 10 and cfg.train.epochs == 2
    assert load_grid(grid)[0].base_raw["model"] == {"name": "retinanet"}  # a reload sees it


def test_missing_or_malformed_base_fails_when_the_grid_loads(tmp_path, base_cfg):
    studies = {"s": {"axes": {"train.epochs": [2]}}}
    grid = write_yaml(tmp_path / "g.yaml", {"base": "nope.yaml", "studies": studies})
    with pytest.raises(ValueError, match="nope.yaml"):
        load_grid(grid)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    grid = write_yaml(tmp_path / "g.yaml", {"base": "list.yaml", "studies": studies})
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
        ({"s": {"cells": [{"name": "a"}], "ladder": 1}}, "studies.s.ladder: expected true"),
    ],
)
def test_load_grid_errors(tmp_path, base_cfg, studies, match):
    grid = write_yaml(tmp_path / "bad.yaml", {"base": "base.yaml", "studies": studies})
    with pytest.raises(ValueError, match=match):
        load_grid(grid)


def test_apply_override_errors():
    raw = {"model": {"name": "atss"}}
    with pytest.raises(ValueError, match="section.key"):
        apply_override(raw, "model", 1)
    with pytest.raises(ValueError, match="not a mapping"):
        apply_override(raw, "model.name.sub", 1)


def test_unknown_config_key_in_cell_is_error(tmp_path, base_cfg):
    grid = write_yaml(
        tmp_path / "g.yaml",
        {"base": "base.yaml", "studies": {"s": {"cells": [{"name": "a", "set": {"model.no": 1}}]}}},
    )
    (study,) = load_grid(grid)
    with pytest.raises(ValueError, match="no"):
        cell_config(study, study.cells[0], 0, tmp_path)


HYPER_STUDIES = {
    "hcrac_bins": 3,
    "hcrac_mu": 4,
    "hcrac_theta": 5,
    "hcrar_alpha": 4,
    "hcrar_ep": 3,
    "hcrar_gamma": 4,
}

EXPECTED_CELLS = {
    "cls_losses.yaml": {"retinanet": 6, "atss": 6},  # the paper's five + HCRAC-focal
    "cls_losses_short.yaml": {"atss_short": 6, "retinanet_short": 6},
    "focal_base.yaml": {"focal_base": 6},
    "reg_losses.yaml": {"retinanet": 7, "atss": 6},
    "reg_losses_short.yaml": {"atss_short": 6, "retinanet_short": 8},
    "eatss_l.yaml": {"eatss_l": 4},
    "ladder.yaml": {"ladder": 4},
    "ladder_variant_short.yaml": {"ladder_variant": 4},
    "hcrar_weight_short.yaml": {"hcrar_weight": 5},
    "eatss_gate_short.yaml": {"eatss_gate": 5},
    "hcrac_control_short.yaml": {"hcrac_control": 4},
    "tuned_baseline_short.yaml": {"tuned_baseline": 4},
    "hcrac_focal_mu_short.yaml": {"hcrac_focal_mu": 4},
    "focal_alpha_short.yaml": {"focal_alpha": 5},
    "eatss_l_short.yaml": {"eatss_l_short": 5},
    "ema_short.yaml": {"ema_short": 2},
    "focal_base_next.yaml": {"focal_base_next": 7},
    "hcrac_components.yaml": {"hcrac_components": 3},
    "full_variant.yaml": {"full_variant": 4},
    "ladder_short.yaml": {"ladder": 4},
    "retinanet_hcrar_short.yaml": {"retinanet_hcrar": 4, "retinanet_hcral": 1},
    # the 1x grid and its short twin run the same six one-parameter studies
    "hyper_params.yaml": HYPER_STUDIES,
    "hyper_params_short.yaml": HYPER_STUDIES,
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
    assert name in EXPECTED_CELLS, f"add {name}'s studies and cell counts to EXPECTED_CELLS"
    assert {s.name: len(s.cells) for s in studies} == EXPECTED_CELLS[name]
    defaults = write_yaml(tmp_path / "defaults.yaml", {})
    for study in studies:
        # Base configs come from the CLI task; until they exist, check against defaults.
        if not study.base.is_file():
            study = dataclasses.replace(study, base=defaults)
        for cell in study.cells:
            cfg = cell_config(study, cell, 0, tmp_path / cell.name)
            for key, value in cell.overrides.items():
                section, field, *sub = key.split(".")
                got = getattr(getattr(cfg, section), field)
                if isinstance(value, dict):  # a later `key.sub` may change one entry
                    refined = {k.split(".")[2] for k in cell.overrides if k.startswith(key + ".")}
                    got = {k: v for k, v in got.items() if k not in refined}
                    value = {k: v for k, v in value.items() if k not in refined}
                assert (got[sub[0]] if sub else got) == value, (study.name, cell.name, key)
            _check_losses_build(cfg)


@pytest.mark.parametrize("name", ["hyper_params.yaml", "hyper_params_short.yaml"])
def test_hyper_params_grid_covers_every_parameter(name):
    studies = {s.name: s for s in load_grid(ABLATIONS / name)}
    varied = {k.split(".")[-1] for s in studies.values() for c in s.cells for k in c.overrides}
    assert {"bins", "mu", "theta", "alpha", "ep", "gamma"} <= varied
    for study in studies.values():  # the reference is the paper's default value
        ref = next(c for c in study.cells if c.name == study.reference)
        assert list(ref.overrides.values())[-1] in (20, 5.0, 0.7, -0.1, 0.001, 1.2)


def test_retinanet_hcrar_grid_differs_only_in_the_box_loss_and_r_max():
    study, _ = load_grid(ABLATIONS / "retinanet_hcrar_short.yaml")
    shared = {"train.epochs": 6, "train.lr_steps": [4, 5], "train.checkpoint_every": 6}
    cells = {c.name: c.overrides for c in study.cells}
    assert study.reference == "L1" and cells["L1"] == shared  # RetinaNet's own focal + L1
    plain, clamped = cells["HCRAR"]["model.reg_loss_args"], cells["HCRAR r_max=10"]
    assert {**plain, "r_max": 10.0} == clamped["model.reg_loss_args"]
    assert cells["GIoU"]["model.reg_loss_args"]["loss_weight"] == plain["loss_weight"] == 2.5


def _short_cell(grid: str, study: str, cell: str, out: Path) -> Config:
    (found,) = (s for s in load_grid(ABLATIONS / grid) if s.name == study)
    return cell_config(found, next(c for c in found.cells if c.name == cell), 1, out)


@pytest.fixture
def short_cell(tmp_path):
    """``short_cell(grid, study, name)``: :func:`_short_cell` with its own output folder."""
    return lambda grid, study, name: _short_cell(grid, study, name, tmp_path / grid / name)


def _assert_copies(short_cell, grid: tuple, source: tuple, same_as: dict[str, str]) -> None:
    """Each cell of ``grid`` named in ``same_as`` resolves to the same run as the ``source``
    cell it maps to, so ``--reuse-from`` copies it instead of training it."""
    from hcral.compare.runner import _config_key

    for name, other in same_as.items():
        assert _config_key(short_cell(*grid, name)) == _config_key(short_cell(*source, other)), name


def _assert_varies_cls_arg(short_cell, grid: tuple, ref: str, arg: str, values: dict) -> None:
    """Each cell named in ``values`` is ``ref`` with only ``cls_loss_args[arg]`` changed."""
    base = short_cell(*grid, ref).model
    for name, value in values.items():
        model = short_cell(*grid, name).model
        assert model.cls_loss_args == {**base.cls_loss_args, arg: value}, name
        assert dataclasses.replace(model, cls_loss_args=base.cls_loss_args) == base, name


@pytest.mark.parametrize(
    "grid, study, cell, same_as",
    [
        ("cls_losses_short.yaml", "retinanet_short", "FL", "L1"),
        ("reg_losses_short.yaml", "retinanet_short", "L1", "L1"),
        ("reg_losses_short.yaml", "retinanet_short", "GIoU", "GIoU"),
        ("reg_losses_short.yaml", "retinanet_short", "HCRAR", "HCRAR"),
        ("reg_losses_short.yaml", "retinanet_short", "HCRAR r_max=10", "HCRAR r_max=10"),
    ],
)
def test_short_retinanet_cells_reuse_the_box_loss_grid(grid, study, cell, same_as, tmp_path):
    """`--reuse-from` retinanet_hcrar_short.yaml's output fills these cells (same config)."""
    from hcral.compare.runner import _config_key

    key = _config_key(_short_cell(grid, study, cell, tmp_path / "a"))
    ref = "retinanet_hcrar_short.yaml", "retinanet_hcrar"
    assert key == _config_key(_short_cell(*ref, same_as, tmp_path / "b"))
    other = "GIoU" if same_as != "GIoU" else "L1"  # and the cells do differ
    assert key != _config_key(_short_cell(*ref, other, tmp_path / "c"))


@pytest.mark.parametrize(
    "grid, rungs",
    [
        ("ladder.yaml", ["ATSS", "EATSS", "+HCRAC", "+HCRAR"]),
        ("ladder_short.yaml", ["ATSS", "EATSS", "+HCRAC", "+HCRAR"]),
        ("ladder_variant_short.yaml", ["ATSS", "EATSS-gate0.3", "+HCRAC-F", "+HCRAR"]),
    ],
)
def test_ladder_is_cumulative(grid, rungs):
    (ladder,) = load_grid(ABLATIONS / grid)
    assert ladder.ladder  # its report tabulates what each rung adds
    assert [c.name for c in ladder.cells][: len(rungs)] == rungs
    for earlier, later in zip(ladder.cells, ladder.cells[1 : len(rungs)]):
        kept = {k: later.overrides.get(k) for k in earlier.overrides}
        assert kept == earlier.overrides and len(later.overrides) > len(earlier.overrides)


def test_variant_ladder_tops_out_at_the_full_variant(tmp_path):
    """The short variant ladder's last rung is full_variant.yaml's candidate on the short
    schedule, and its ATSS rung is ladder_short.yaml's (same config, so reusable)."""
    from hcral.compare.runner import _config_key

    top = _short_cell("ladder_variant_short.yaml", "ladder_variant", "+HCRAR", tmp_path / "a")
    full = _short_cell(
        "full_variant.yaml", "full_variant", "EATSS-gate0.3+HCRAC-F+HCRAR", tmp_path / "b"
    )
    assert top.model == full.model
    assert (top.train.epochs, full.train.epochs) == (6, 12)
    atss = _short_cell("ladder_variant_short.yaml", "ladder_variant", "ATSS", tmp_path / "c")
    spec_atss = _short_cell("ladder_short.yaml", "ladder", "ATSS", tmp_path / "d")
    assert _config_key(atss) == _config_key(spec_atss) != _config_key(top)


def test_hcrar_weight_grid_reuses_the_variant_ladder(short_cell):
    """hcrar_weight_short.yaml's GIoU and HCRAR w1.5 cells are the variant ladder's two top
    rungs (same config, so `--reuse-from` copies them), and the other cells differ from
    one of those two in the loss weight only."""
    from hcral.compare.runner import _config_key

    weight = "hcrar_weight_short.yaml", "hcrar_weight"
    ladder = "ladder_variant_short.yaml", "ladder_variant"
    giou20 = short_cell(*weight, "GIoU w2.0")
    assert _config_key(giou20) == _config_key(short_cell(*ladder, "+HCRAC-F"))
    hcrar15 = short_cell(*weight, "HCRAR w1.5")
    assert _config_key(hcrar15) == _config_key(short_cell(*ladder, "+HCRAR"))
    w15, w20 = hcrar15.model, short_cell(*weight, "HCRAR w2.0").model
    assert w15.reg_loss_args["loss_weight"] == 1.5 and w20.reg_loss_args["loss_weight"] == 2.0
    assert dataclasses.replace(w20, reg_loss_args={**w20.reg_loss_args, "loss_weight": 1.5}) == w15
    assert giou20.model.reg_loss_args == {"loss_weight": 2.0}
    giou25 = short_cell(*weight, "GIoU w2.5").model
    assert dataclasses.replace(giou25, reg_loss_args={"loss_weight": 2.0}) == giou20.model
    w25 = short_cell(*weight, "HCRAR w2.5").model
    assert dataclasses.replace(w25, reg_loss_args={**w25.reg_loss_args, "loss_weight": 1.5}) == w15


def test_eatss_gate_grid_reuses_the_hcrar_weight_grid(short_cell):
    """eatss_gate_short.yaml's gate0.3 cell is hcrar_weight_short.yaml's HCRAR w2.0 (same
    config, so `--reuse-from` copies it); gate0.5, gate0.2 and SPEC's EATSS differ from it in
    the gate only, and the ATSS cell in the assigner only."""
    from hcral.compare.runner import _config_key

    gate = "eatss_gate_short.yaml", "eatss_gate"
    g03, g05 = short_cell(*gate, "gate0.3"), short_cell(*gate, "gate0.5")
    weight = short_cell("hcrar_weight_short.yaml", "hcrar_weight", "HCRAR w2.0")
    assert _config_key(g03) == _config_key(weight)
    assert g05.model.assigner_args == {"num_extra": 3, "min_extra_iou": 0.5}
    g02, spec = short_cell(*gate, "gate0.2").model, short_cell(*gate, "no gate (SPEC)").model
    assert g02.assigner_args == {"num_extra": 3, "min_extra_iou": 0.2}
    assert spec.assigner_args == {"num_extra": 3}  # min_extra_iou's default, 0, is SPEC
    for other in (g05.model, g02, spec):
        assert dataclasses.replace(other, assigner_args=g03.model.assigner_args) == g03.model
    atss = short_cell(*gate, "no extras (ATSS)").model
    assert (atss.assigner, atss.assigner_args) == ("atss", {})
    gated = g03.model.assigner_args
    assert dataclasses.replace(atss, assigner="eatss", assigner_args=gated) == g03.model


def test_hcrac_control_grid_reuses_the_variant_ladder(short_cell):
    """hcrac_control_short.yaml's two references are the variant ladder's gated-EATSS and
    +HCRAC-F rungs (same configs); the focal control differs from the first in α and the
    loss weight only, and `HCRAC-F ω only` from the second in use_rci only."""
    from hcral.compare.runner import _config_key

    control = "hcrac_control_short.yaml", "hcrac_control"
    ladder = "ladder_variant_short.yaml", "ladder_variant"
    focal, hcrac = short_cell(*control, "EATSS-gate0.3"), short_cell(*control, "+HCRAC-F")
    assert _config_key(focal) == _config_key(short_cell(*ladder, "EATSS-gate0.3"))
    assert _config_key(hcrac) == _config_key(short_cell(*ladder, "+HCRAC-F"))
    matched = short_cell(*control, "focal α0.36 w1.17").model
    assert matched.cls_loss == "focal"
    # α' / (1 − α') = 1.68 · 0.25 / 0.75 and the negatives keep 0.75 = w · (1 − α')
    assert matched.cls_loss_args["alpha"] == pytest.approx(0.42 / 1.17, abs=0.005)
    assert matched.cls_loss_args["loss_weight"] * (1 - 0.36) == pytest.approx(0.75, abs=0.005)
    assert dataclasses.replace(matched, cls_loss_args={"alpha": 0.25, "gamma": 2.0}) == focal.model
    omega = short_cell(*control, "HCRAC-F ω only").model
    assert omega.cls_loss_args == {**hcrac.model.cls_loss_args, "use_rci": False}
    assert dataclasses.replace(omega, cls_loss_args=hcrac.model.cls_loss_args) == hcrac.model


def test_tuned_baseline_grid_reuses_the_ladder_and_weight_grids(short_cell):
    """tuned_baseline_short.yaml's ATSS cell is the variant ladder's ATSS rung, its full
    variant is hcrar_weight_short.yaml's `HCRAR w2.0` (same configs, so `--reuse-from`
    copies them), and the tuned baseline differs from ATSS in focal's α and loss weight
    only, the same two values as hcrac_control_short.yaml's focal control."""
    from hcral.compare.runner import _config_key

    tuned = "tuned_baseline_short.yaml", "tuned_baseline"
    atss = short_cell(*tuned, "ATSS")
    assert _config_key(atss) == _config_key(
        short_cell("ladder_variant_short.yaml", "ladder_variant", "ATSS")
    )
    full = short_cell(*tuned, "full w2.0")
    weight = short_cell("hcrar_weight_short.yaml", "hcrar_weight", "HCRAR w2.0")
    assert _config_key(full) == _config_key(weight)
    baseline = short_cell(*tuned, "ATSS focal α0.36 w1.17").model
    control = short_cell("hcrac_control_short.yaml", "hcrac_control", "focal α0.36 w1.17").model
    assert baseline.cls_loss == "focal" and baseline.cls_loss_args == control.cls_loss_args
    assert (baseline.assigner, baseline.reg_loss) == ("atss", "giou")
    assert dataclasses.replace(baseline, cls_loss_args=atss.model.cls_loss_args) == atss.model


def test_tuned_full_variant_shares_the_tuned_baseline_focal_base(short_cell):
    """`full w2.0 α0.36 w1.17` is `full w2.0` with HCRAC-focal's α and loss weight set
    to the tuned baseline's focal α and loss weight, and nothing else changed."""
    tuned = "tuned_baseline_short.yaml", "tuned_baseline"
    full = short_cell(*tuned, "full w2.0").model
    tuned_full = short_cell(*tuned, "full w2.0 α0.36 w1.17").model
    baseline = short_cell(*tuned, "ATSS focal α0.36 w1.17").model
    assert tuned_full.cls_loss == "hcrac" and tuned_full.cls_loss_args["base"] == "focal"
    assert tuned_full.cls_loss_args == {**full.cls_loss_args, **baseline.cls_loss_args}
    assert dataclasses.replace(tuned_full, cls_loss_args=full.cls_loss_args) == full


def test_hcrac_focal_mu_grid_varies_mu_on_the_full_variant(short_cell):
    """hcrac_focal_mu_short.yaml's ATSS and `μ5 (full w2.0)` are tuned_baseline_short.yaml's
    `ATSS` and `full w2.0` (same configs, so `--reuse-from` copies them); `μ3` and `μ7`
    differ from `μ5 (full w2.0)` in HCRAC's μ only."""
    grid = ("hcrac_focal_mu_short.yaml", "hcrac_focal_mu")
    tuned = ("tuned_baseline_short.yaml", "tuned_baseline")
    _assert_copies(short_cell, grid, tuned, {"ATSS": "ATSS", "μ5 (full w2.0)": "full w2.0"})
    assert short_cell(*grid, "μ5 (full w2.0)").model.cls_loss_args["mu"] == 5.0
    _assert_varies_cls_arg(short_cell, grid, "μ5 (full w2.0)", "mu", {"μ3": 3.0, "μ7": 7.0})


def test_focal_alpha_grid_varies_alpha_on_plain_atss(short_cell):
    """focal_alpha_short.yaml's `ATSS`, `ATSS focal α0.36 w1.17` and `full w2.0` are
    tuned_baseline_short.yaml's (same configs, so `--reuse-from` copies them); `ATSS α0.5`
    and `ATSS α0.75` differ from `ATSS` in focal's α only."""
    grid = ("focal_alpha_short.yaml", "focal_alpha")
    tuned = ("tuned_baseline_short.yaml", "tuned_baseline")
    same = ("ATSS", "ATSS focal α0.36 w1.17", "full w2.0")
    _assert_copies(short_cell, grid, tuned, {name: name for name in same})
    atss = short_cell(*grid, "ATSS").model
    assert (atss.cls_loss, atss.cls_loss_args["alpha"]) == ("focal", 0.25)
    _assert_varies_cls_arg(
        short_cell, grid, "ATSS", "alpha", {"ATSS α0.5": 0.5, "ATSS α0.75": 0.75}
    )


@pytest.mark.parametrize(
    "full_cell, short_cell_name",
    [
        ("ATSS+FL-α0.36-w1.17+GIoU", "ATSS focal α0.36 w1.17"),
        ("EATSS-gate0.3+HCRAC-F+HCRAR-w2.0", "full w2.0"),
    ],
)
def test_full_variant_grid_holds_the_tuned_cells_at_1x(full_cell, short_cell_name, short_cell):
    """full_variant.yaml's two later cells are tuned_baseline_short.yaml's tuned baseline
    and full variant on the 1x schedule: same model, 12 epochs instead of 6."""
    at_1x = short_cell("full_variant.yaml", "full_variant", full_cell)
    short = short_cell("tuned_baseline_short.yaml", "tuned_baseline", short_cell_name)
    assert at_1x.model == short.model
    assert (at_1x.train.epochs, short.train.epochs) == (12, 6)
