"""Grid files: parse studies and cells, and resolve one (cell, seed) into a Config."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hcral.config import Config, config_from_dict


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
    ladder: bool = False  # each cell adds one part to the one before: tabulate the steps
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
    unknown = sorted(set(spec) - {"base", "set", "axes", "cells", "reference", "ladder"})
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
    ladder = spec.get("ladder", False)
    if not isinstance(ladder, bool):
        raise ValueError(f"{where}.ladder: expected true or false, got {ladder!r}")
    base = spec.get("base", grid.get("base"))
    if not isinstance(base, str):
        raise ValueError(f"{where}: no 'base' config path (set it on the grid or the study)")
    path = (root / base).resolve()
    return Study(name, path, cells, reference, ladder, _read_base(path, name))


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
