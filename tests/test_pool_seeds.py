"""scripts/pool_seeds.py: recorded APs and finished runs pooled into one table."""

from __future__ import annotations

import json
import math

import pytest
from tests._scripts import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("pool_seeds")


def _run(root, cell, seed, ap):
    folder = root / cell / f"seed_{seed}"
    folder.mkdir(parents=True)
    metrics = {"AP": ap, "seed": seed, "cell": cell, "wall_time_s": 60.0}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_parse_recorded(script):
    assert script.parse_recorded("full w2.0=0:7.35,3:7.44") == ("full w2.0", {0: 7.35, 3: 7.44})
    assert script.parse_recorded("a=b=1:2") == ("a=b", {1: 2.0})
    for bad in ("ATSS", "ATSS=", "=0:1.0", "ATSS=0-1.0", "ATSS=x:1.0"):
        with pytest.raises(ValueError, match="expected CELL=SEED:AP"):
            script.parse_recorded(bad)


def test_pool_merges_runs_and_records_in_seed_order(script, tmp_path):
    _run(tmp_path, "new", 1, 3.0)
    _run(tmp_path, "new", 0, 1.0)
    _run(tmp_path, "ref", 2, 2.004)  # agrees with the record below to two decimals
    pooled = script.pool(script.finished_runs(tmp_path), {"ref": {0: 1.0, 1: 2.0, 2: 2.0}})
    assert [r["seed"] for r in pooled["new"]] == [0, 1]
    assert [r["AP"] for r in pooled["ref"]] == [1.0, 2.0, 2.004]
    assert math.isnan(pooled["ref"][0]["wall_time_s"]) and pooled["ref"][2]["wall_time_s"] == 60.0


def test_pool_refuses_a_run_that_differs_from_its_record(script, tmp_path):
    _run(tmp_path, "ref", 0, 6.3)
    with pytest.raises(
        ValueError, match=r"cell 'ref' seed 0: recorded AP 6.31, the run has 6.3000"
    ):
        script.pool(script.finished_runs(tmp_path), {"ref": {0: 6.31}})


def test_main_prints_the_pooled_table(script, tmp_path, capsys):
    for seed, ap in enumerate([2.0, 4.0, 3.0]):
        _run(tmp_path, "new", seed, ap)
    args = ["--reference", "ref", "--recorded", "ref=0:1.0,1:2.0,2:3.0", "--order", "ref,new"]
    text = script.main([str(tmp_path), *args, "--png", str(tmp_path / "bars.png")])
    assert (tmp_path / "bars.png").stat().st_size > 5_000
    assert capsys.readouterr().out.strip() == text.strip()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `ref` | 3 | 2.00 ± 1.00")
    # new − ref per seed: +1, +2, 0 → mean +1.00, std 1, paired t interval ± 4.303/√3
    half = 4.303 / math.sqrt(3)
    assert rows[1].startswith("| `new` | 3 | 3.00 ± 1.00")
    assert f"+1.00 [{1 - half:+.2f}, {1 + half:+.2f}] (n=3)" in rows[1]
    assert "- `ref` (seeds 0–2): 1.00 / 2.00 / 3.00" in text


def test_seeds_are_counted_as_hcral_compare_counts_them(script, tmp_path):
    """--seeds/--first-seed go through hcral.compare.seed_range, bad values included."""
    _run(tmp_path, "ref", 0, 1.0)
    args = [str(tmp_path), "--reference", "ref"]
    for bad, message in (
        (["--seeds", "0"], "seeds must be an integer >= 1, got 0"),
        (["--seeds", "2", "--first-seed", "-1"], "first_seed must be an integer >= 0, got -1"),
    ):
        with pytest.raises(ValueError, match=message):
            script.main([*args, *bad])


def test_main_pools_only_the_seeds_asked_for(script, tmp_path):
    for seed, ap in enumerate([2.0, 4.0, 3.0, 9.0]):
        _run(tmp_path, "new", seed, ap)
    args = ["--reference", "ref", "--recorded", "ref=0:1.0,1:2.0,2:3.0", "--order", "ref,new"]
    text = script.main([str(tmp_path), *args, "--seeds", "3"])
    assert "- `new` (seeds 0–2): 2.00 / 4.00 / 3.00" in text
    assert "9.00" not in text
    with pytest.raises(ValueError, match=r"no seed left for \['ref'\]"):
        script.main([str(tmp_path), *args, "--seeds", "1", "--first-seed", "3"])


def test_main_needs_every_cell_in_the_order(script, tmp_path):
    _run(tmp_path, "new", 0, 1.0)
    with pytest.raises(SystemExit, match="does not list the cells found"):
        script.main(
            [str(tmp_path), "--reference", "new", "--recorded", "ref=0:1.0", "--order", "new"]
        )
    with pytest.raises(SystemExit, match="does not list the cells found"):
        script.main(
            [str(tmp_path), "--reference", "new", "--recorded", "ref=0:1.0", "--order", "new,new"]
        )


def test_bad_inputs_are_named(script, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        script.finished_runs(tmp_path / "missing")
    (tmp_path / "c" / "seed_0").mkdir(parents=True)
    (tmp_path / "c" / "seed_0" / "metrics.json").write_text(json.dumps({"AP": 1.0}))
    with pytest.raises(ValueError, match=r"seed_0.metrics.json: no 'cell', 'seed' or 'AP'"):
        script.finished_runs(tmp_path)
    with pytest.raises(ValueError, match="cell 'a' given twice"):
        script.parse_all_recorded(["a=0:1.0", "b=0:2.0", "a=1:3.0"])
    assert script.parse_all_recorded(["a=0:1.0", "b=1:2.0"]) == {"a": {0: 1.0}, "b": {1: 2.0}}
