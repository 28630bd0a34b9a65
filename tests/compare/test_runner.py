"""The resumable runner with fake trainers: skips, resumes, --jobs, --study, identical runs."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml
from tests.compare._fakes import (
    ABLATIONS,
    REPO,
    ChildTrain,
    FakeTrain,
    write_grid,
    write_yaml,
)

from hcral import compare
from hcral.compare import (
    load_grid,
    run_compare,
)
from hcral.compare.runner import _Task


def test_run_compare_writes_runs_tables_and_plot(tmp_path, base_cfg):
    fake = FakeTrain()
    out = tmp_path / "out"
    result = run_compare(write_grid(tmp_path, base_cfg), seeds=2, out_dir=out, train_fn=fake)
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


def test_ladder_study_report_has_the_step_table(tmp_path, base_cfg):
    cells = [{"name": "mu0", "set": {"model.cls_loss_args.mu": 0}},
             {"name": "mu5", "set": {"model.cls_loss_args.mu": 5}}]  # fmt: skip
    grid = write_yaml(
        tmp_path / "grid.yaml",
        {"base": base_cfg.name, "studies": {"lad": {"ladder": True, "cells": cells}}},
    )
    out = tmp_path / "out"
    text = run_compare(grid, seeds=2, out_dir=out, train_fn=FakeTrain(), plots=False).read_text()
    assert "What each rung adds" in text and "| `mu0` → `mu5` | +5.0 |" in text
    assert json.loads((out / "lad" / "summary.json").read_text())["steps"][0]["upper"] == "mu5"


def test_run_compare_skips_finished_and_resumes_interrupted(tmp_path, base_cfg):
    grid, out = write_grid(tmp_path, base_cfg), tmp_path / "out"
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
    grid, out = write_grid(tmp_path, base_cfg), tmp_path / "out"
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
    grid, out = write_grid(tmp_path, base_cfg), tmp_path / "out"

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
        run_compare(write_grid(tmp_path, base_cfg), 1, tmp_path / "o", lambda cfg, resume: {})


def test_run_compare_single_seed_shows_n1(tmp_path, base_cfg):
    result = run_compare(
        write_grid(tmp_path, base_cfg), 1, tmp_path / "o", FakeTrain(), plots=False
    )
    text = result.read_text()
    assert "35.0 (n=1)" in text and "[" not in text.split("|---")[1]


def test_run_compare_bad_seeds(tmp_path, base_cfg):
    with pytest.raises(ValueError, match="seeds"):
        run_compare(write_grid(tmp_path, base_cfg), 0, tmp_path / "o", FakeTrain())
    with pytest.raises(ValueError, match="first_seed"):
        run_compare(write_grid(tmp_path, base_cfg), 1, tmp_path / "o", FakeTrain(), first_seed=-1)


def test_seed_range_counts_from_first_seed():
    """The one seed count `hcral compare` and scripts/pool_seeds.py share."""
    assert compare.seed_range(8) == range(8)
    assert list(compare.seed_range(3, first_seed=8)) == [8, 9, 10]
    for bad, message in (((0,), "seeds must be an integer >= 1"), ((2, -1), "first_seed must")):
        with pytest.raises(ValueError, match=message):
            compare.seed_range(*bad)
    with pytest.raises(ValueError, match="seeds must be an integer"):
        compare.seed_range(2.0)


def test_run_compare_first_seed_adds_seeds_a_later_run_reuses(tmp_path, base_cfg):
    grid, out = write_grid(tmp_path, base_cfg), tmp_path / "out"
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
        run_compare(write_grid(tmp_path, base_cfg), seeds=2, out_dir=out, jobs=2, plots=False)
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
    study = compare.load_grid(write_grid(tmp_path, base_cfg))[0]
    tasks = [_Task(study, c, 0, tmp_path / "out" / c.name) for c in study.cells]
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
    grid = write_yaml(
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


_SIGTERM_SCRIPT = """
import os, sys, time
from pathlib import Path
from hcral.compare.runner import _Task, load_grid, run_parallel

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
        [sys.executable, str(script), str(write_grid(tmp_path, base_cfg)), str(out)]
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
    grid, out = write_grid(tmp_path, base_cfg), tmp_path / "out"
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


def _two_studies_sharing_a_cell(tmp_path: Path, base_cfg: Path) -> Path:
    # Both studies hold the base config as their reference (mu=5 is the base value),
    # as every one-parameter study of hyper_params.yaml does.
    studies = {
        "mu": {"axes": {"model.cls_loss_args.mu": [5, 0]}},
        "theta": {"axes": {"model.cls_loss_args.theta": [0.7, 0.9]}},
    }
    return write_yaml(tmp_path / "grid.yaml", {"base": base_cfg.name, "studies": studies})


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
        _Task(s, c, k, tmp_path / s.name / c.name / str(k))
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


def test_hyper_params_grids_train_their_shared_references_once(tmp_path):
    # One-parameter studies share their default-value reference: on RetinaNet all six
    # (23 cells, 18 configs); on ATSS the three HCRAC ones and hcrar_alpha/ep (20 configs).
    for name, distinct, sources in (
        ("hyper_params.yaml", 18, {"bins=20"}),
        ("hyper_params_short.yaml", 20, {"bins=20", "alpha=-0.1"}),
    ):
        studies = load_grid(ABLATIONS / name)
        tasks = [_Task(s, c, 0, tmp_path / s.name / c.name) for s in studies for c in s.cells]
        primaries, copies = compare.split_duplicates(tasks)
        assert (len(tasks), len(primaries)) == (23, distinct)
        assert {source.cell.name for _, source in copies} == sources


def test_plan_counts_finished_todo_and_copies_and_writes_nothing(tmp_path, base_cfg):
    grid, out = _two_studies_sharing_a_cell(tmp_path, base_cfg), tmp_path / "out"
    plan = compare.plan_runs(grid, 2, out)
    assert (len(plan.tasks), len(plan.todo), len(plan.copies)) == (8, 6, 2)
    assert plan.describe().splitlines() == [
        "mu: 2 cells x 2 seeds = 4 runs: 0 finished, 4 to train, 0 to copy from identical runs",
        "theta: 2 cells x 2 seeds = 4 runs: 0 finished, 2 to train, 2 to copy from identical runs",
        "in all: 6 run(s) to train",
    ]
    assert not out.exists()
    run_compare(grid, 1, out, train_fn=FakeTrain(), plots=False)  # seed 0 of everything
    text = compare.plan_runs(grid, 2, out).describe()
    assert "mu: 2 cells x 2 seeds = 4 runs: 2 finished, 2 to train, 0 to copy" in text
    assert "theta: 2 cells x 2 seeds = 4 runs: 2 finished, 1 to train, 1 to copy" in text
    assert text.endswith("in all: 3 run(s) to train")
    with pytest.raises(ValueError, match="seeds"):
        compare.plan_runs(grid, 0, out)


def test_a_finished_run_is_the_source_of_its_identical_runs(tmp_path, base_cfg):
    # theta=0.7 seed 0 finished before (e.g. in an earlier grid); mu=5 is the same config
    grid, out = _two_studies_sharing_a_cell(tmp_path, base_cfg), tmp_path / "out"
    run_compare(grid, 1, out, train_fn=FakeTrain(), plots=False, only=["theta"])
    fake = FakeTrain()
    run_compare(grid, 1, out, train_fn=fake, plots=False)
    assert fake.calls == [("mu=0", 10, None)]
    copied = json.loads((out / "mu/mu=5/seed_0/metrics.json").read_text())
    assert copied["reused_from"] == str(out / "theta" / "theta=0.7" / "seed_0")


def test_reuse_from_copies_identical_runs_of_an_earlier_grid(tmp_path, base_cfg):
    first = tmp_path / "first"
    run_compare(write_grid(tmp_path, base_cfg), 2, first, train_fn=FakeTrain(), plots=False)
    theta = {"theta": {"axes": {"model.cls_loss_args.theta": [0.7, 0.9]}}}
    grid = write_yaml(tmp_path / "theta.yaml", {"base": base_cfg.name, "studies": theta})
    out = tmp_path / "second"
    plan = compare.plan_runs(grid, 2, out, reuse_from=[first])
    assert "theta: 2 cells x 2 seeds = 4 runs: 0 finished, 2 to train, 2 to copy" in (
        plan.describe()
    )
    assert "(2 of the copies come from runs outside the grid)" in plan.describe()
    fake = FakeTrain()
    run_compare(grid, 2, out, train_fn=fake, plots=False, reuse_from=[first])
    assert fake.calls == [("theta=0.9", 10, None), ("theta=0.9", 11, None)]
    for k in (0, 1):  # theta=0.7 with mu 5 from the base is first's mu=5
        copied = json.loads((out / f"theta/theta=0.7/seed_{k}/metrics.json").read_text())
        assert copied["reused_from"] == str(first / "mu" / "mu=5" / f"seed_{k}")
        assert copied["cell"] == "theta=0.7" and copied["seed"] == 10 + k
    # a copy of a copy names the run that trained, not the intermediate copy
    third = tmp_path / "third"
    run_compare(grid, 1, third, train_fn=FakeTrain(), plots=False, reuse_from=[out])
    copied = json.loads((third / "theta/theta=0.7/seed_0/metrics.json").read_text())
    assert copied["reused_from"] == str(first / "mu" / "mu=5" / "seed_0")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        compare.plan_runs(grid, 1, out, reuse_from=[tmp_path / "nowhere"])


def test_match_finished_run_needs_the_same_classes_unless_one_is_resolved(tmp_path, base_cfg):
    first = tmp_path / "first"
    run_compare(write_grid(tmp_path, base_cfg), 1, first, train_fn=FakeTrain(), plots=False)
    (study,) = load_grid(write_grid(tmp_path, base_cfg))
    task = _Task(study, study.cells[1], 0, tmp_path / "new")  # mu=5 seed 0, num_classes 0
    saved = first / "mu/mu=5/seed_0/config.yaml"
    raw = yaml.safe_load(saved.read_text())
    for trained_classes, grid_classes, match in ((6, 0, True), (6, 6, True), (6, 7, False)):
        raw["model"]["num_classes"] = trained_classes
        saved.write_text(yaml.safe_dump(raw))
        cell = dataclasses.replace(task.cell, overrides={"model.num_classes": grid_classes})
        found = compare.find_finished_runs([first])
        got = compare.match_finished_run(dataclasses.replace(task, cell=cell), found)
        assert got == (saved.parent if match else None), (trained_classes, grid_classes)
    raw["model"]["no_such_key"] = 1  # a config this version cannot load is not matched
    saved.write_text(yaml.safe_dump(raw))
    assert compare.match_finished_run(task, compare.find_finished_runs([first])) is None


def test_study_subset_copies_from_finished_runs_of_the_other_studies(tmp_path, base_cfg):
    grid, out = _two_studies_sharing_a_cell(tmp_path, base_cfg), tmp_path / "out"
    run_compare(grid, 1, out, train_fn=FakeTrain(), plots=False, only=["mu"])
    fake = FakeTrain()
    run_compare(grid, 1, out, train_fn=fake, plots=False, only=["theta"])
    assert fake.calls == [("theta=0.9", 10, None)]  # theta=0.7 is mu=5, finished
    copied = json.loads((out / "theta/theta=0.7/seed_0/metrics.json").read_text())
    assert copied["reused_from"] == str(out / "mu" / "mu=5" / "seed_0")


def test_reference_option_reports_against_another_cell(tmp_path, base_cfg):
    grid, out = _two_studies_sharing_a_cell(tmp_path, base_cfg), tmp_path / "out"
    fake = FakeTrain()
    run_compare(grid, 2, out, train_fn=fake, plots=False, only=["mu"])
    assert "Reference: `mu=5`" in (out / "mu" / "table.md").read_text()
    idle = FakeTrain()
    text = run_compare(
        grid, 2, out, train_fn=idle, plots=False, report_only=True, only=["mu"], reference="mu=0"
    ).read_text()
    assert idle.calls == [] and "Reference: `mu=0`" in text
    # mu=5 is 5 AP above mu=0 on both seeds (FakeTrain: AP = 30 + mu + 0.1 seed)
    row = next(line for line in text.splitlines() if line.startswith("| `mu=5`"))
    assert "| +5.0 [" in row and row.endswith("▲ |"), row
    with pytest.raises(ValueError, match=r"'mu=0' is not a cell of every study.*theta: \["):
        run_compare(grid, 2, out, train_fn=idle, plots=False, report_only=True, reference="mu=0")
