"""Train a grid's runs (resumably, optionally in parallel) and write its reports."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hcral.compare.grid import Cell, Study, cell_config, load_grid
from hcral.compare.tables import (
    TABLE_METRICS,
    render_markdown,
    summarize_study,
    table_dict,
    table_digits,
)
from hcral.config import Config, config_from_dict
from hcral.fileio import atomic_write_text

TrainFn = Callable[..., Mapping[str, Any]]
CHECKPOINT_NAME = "last.pt"  # hcral.engine.checkpoint.LAST: the newest complete checkpoint


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # 0-d tensors and numpy scalars
        return value.item()
    return str(value)


def _write_json(path: Path, data: Any) -> None:
    # Atomic, so a crash never leaves a half-written metrics.json that a rerun would take
    # for a finished run.
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable))


def _finished(run_dir: Path) -> bool:
    """Whether a run folder holds a finished run (``metrics.json`` is written last)."""
    return (run_dir / "metrics.json").is_file()


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
    reuse_from: Sequence[str | Path] = (),
    reference: str | None = None,
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
        reuse_from: folders of earlier runs (e.g. another grid's ``--out``): a run
            still to do whose config matches a finished run there is copied from it
            instead of trained (:func:`find_finished_runs`).
        reference: report every study against this cell instead of the grid's reference
            (e.g. GIoU rather than L1); each study reported must have it
            (:func:`with_reference`). Runs and their folders do not depend on it.
    Returns:
        Path of ``out_dir/results.md`` holding every study's table (each study's table
        is also in ``<study>/table.md``, its numbers in ``<study>/summary.json``).
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    plan = plan_runs(grid_path, seeds, out_dir, first_seed, only, reuse_from)
    studies, out, ks, todo, copies = plan.studies, Path(out_dir), plan.seeds, plan.todo, plan.copies
    studies = with_reference(studies, reference)
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
    atomic_write_text(result, "\n".join(parts))
    return result


@dataclass
class RunPlan:
    """What :func:`run_compare` would do: every run, and which of them it would train.

    ``tasks`` holds every (study, cell, seed) run in training order (seed-major);
    ``todo`` the runs it would train (not finished, not identical to another run);
    ``copies`` the ``(run, source run folder)`` pairs it fills from an identical run,
    the first ``external`` of them from runs outside the grid (``reuse_from``).
    """

    studies: list[Study]
    seeds: range
    tasks: list[_Task]
    todo: list[_Task]
    copies: list[tuple[_Task, Path]]
    external: int = 0

    def describe(self) -> str:
        """A few lines per study: runs, finished, to train, copied from identical runs."""
        lines = []
        copied = {id(t) for t, _ in self.copies}
        todo = {id(t) for t in self.todo}
        for study in self.studies:
            mine = [t for t in self.tasks if t.study is study]
            done = sum(_finished(t.run_dir) for t in mine)
            train = sum(id(t) in todo for t in mine)
            copy = sum(id(t) in copied and not _finished(t.run_dir) for t in mine)
            lines.append(
                f"{study.name}: {len(study.cells)} cells x {len(self.seeds)} seeds = {len(mine)} "
                f"runs: {done} finished, {train} to train, {copy} to copy from identical runs"
            )
        lines.append(f"in all: {len(self.todo)} run(s) to train")
        if self.external:
            lines.append(f"({self.external} of the copies come from runs outside the grid)")
        return "\n".join(lines)


def seed_range(seeds: int, first_seed: int = 0) -> range:
    """Seeds ``first_seed`` to ``first_seed + seeds - 1``: how `hcral compare` counts them."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    if not isinstance(first_seed, int) or first_seed < 0:
        raise ValueError(f"first_seed must be an integer >= 0, got {first_seed!r}")
    return range(first_seed, first_seed + seeds)


def plan_runs(
    grid_path: str | Path,
    seeds: int,
    out_dir: str | Path,
    first_seed: int = 0,
    only: Sequence[str] = (),
    reuse_from: Sequence[str | Path] = (),
) -> RunPlan:
    """Expand a grid into its runs under ``out_dir`` (arguments as in :func:`run_compare`)."""
    ks = seed_range(seeds, first_seed)
    every = load_grid(grid_path)
    studies = select_studies(every, only)
    out = Path(out_dir)
    # Seed-major order: a grid stopped half-way has whole seeds of every cell, which
    # already compare, instead of all seeds of the first cells and none of the rest.
    tasks = [
        _Task(study, cell, k, out / study.name / cell.name / f"seed_{k}")
        for k in ks
        for study in every
        for cell in study.cells
    ]
    chosen = {id(s) for s in studies}
    # Finished runs of the studies left out by `only` may still be copied from.
    pool = [t for t in tasks if id(t.study) in chosen or _finished(t.run_dir)]
    tasks = [t for t in tasks if id(t.study) in chosen]
    primaries, copies = split_duplicates(pool)
    todo = [t for t in primaries if id(t.study) in chosen and not _finished(t.run_dir)]
    copies = [(t, source) for t, source in copies if id(t.study) in chosen]
    found = find_finished_runs(reuse_from) if reuse_from else {}
    external = [(t, src) for t in todo if (src := match_finished_run(t, found)) is not None]
    copied = {id(t) for t, _ in external}
    todo = [t for t in todo if id(t) not in copied]
    # External copies first: an in-grid copy may take its metrics from one of them.
    pairs = external + [(t, source.run_dir) for t, source in copies]
    return RunPlan(studies, ks, tasks, todo, pairs, len(external))


def select_studies(studies: list[Study], only: Sequence[str]) -> list[Study]:
    """The studies named in ``only``, in grid order (all of them when ``only`` is empty)."""
    names = [s.name for s in studies]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"no study {unknown} in the grid; its studies are {names}")
    return [s for s in studies if not only or s.name in only]


def with_reference(studies: list[Study], reference: str | None) -> list[Study]:
    """``studies`` with ``reference`` as the cell every other cell is compared with.

    Raises:
        ValueError: naming each study that has no cell ``reference``, and its cells.
    """
    if reference is None:
        return studies
    lacking = [s for s in studies if reference not in {c.name for c in s.cells}]
    if lacking:
        cells = "; ".join(f"{s.name}: {[c.name for c in s.cells]}" for s in lacking)
        raise ValueError(
            f"--reference {reference!r} is not a cell of every study reported ({cells}); "
            "choose the studies with --study"
        )
    return [dataclasses.replace(s, reference=reference) for s in studies]


def _task_key(task: _Task) -> tuple[str, int]:
    """:func:`_config_key` of a run's resolved config."""
    return _config_key(cell_config(task.study, task.cell, task.seed, Path(".")))


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
    copy of its metrics (:func:`reuse_run`). The source of each group is its first
    finished run, else its first run in ``tasks`` order; primaries keep that order.
    """
    groups: dict[tuple[str, int], list[_Task]] = {}
    for task in tasks:
        groups.setdefault(_task_key(task), []).append(task)
    source_of: dict[int, _Task] = {}
    for group in groups.values():
        finished = [t for t in group if _finished(t.run_dir)]
        source = (finished or group)[0]
        source_of.update({id(t): source for t in group})
    primaries = [t for t in tasks if source_of[id(t)] is t]
    copies = [(t, source_of[id(t)]) for t in tasks if source_of[id(t)] is not t]
    return primaries, copies


def reuse_run(source: Path, task: _Task) -> None:
    """Give ``task`` the finished metrics of the identical run in folder ``source``.

    Writes ``task``'s ``metrics.json`` with its own study, cell and overrides, and
    ``reused_from`` = the folder of the run that trained (``source``, or its own
    ``reused_from`` when ``source`` is a copy too), next to a copy of its
    ``config.yaml``. Does nothing when ``task`` already has metrics or ``source`` has
    not finished.
    """
    if _finished(task.run_dir) or not _finished(Path(source)):
        return
    target, origin = task.run_dir / "metrics.json", Path(source) / "metrics.json"
    metrics = json.loads(origin.read_text())
    metrics.update(
        study=task.study.name,
        cell=task.cell.name,
        overrides=task.cell.overrides,
        reused_from=metrics.get("reused_from", str(source)),  # the run that trained
    )
    task.run_dir.mkdir(parents=True, exist_ok=True)
    config = Path(source) / "config.yaml"
    if config.is_file():  # lets a later --reuse-from find the copy too
        (task.run_dir / "config.yaml").write_bytes(config.read_bytes())
    _write_json(target, metrics)


def _config_key(cfg: Config) -> tuple[str, int]:
    """``(canonical JSON without output folder and class count, class count)``.

    A finished run's ``config.yaml`` holds ``model.num_classes`` as resolved from its
    training set, where a grid cell usually says 0 ("from the training set").
    """
    raw = dataclasses.asdict(cfg)
    raw["train"]["output_dir"] = "."
    classes = int(raw["model"].pop("num_classes"))
    return json.dumps(_numbers_as_float(raw), sort_keys=True, default=str), classes


def find_finished_runs(roots: Sequence[str | Path]) -> dict[str, list[tuple[int, Path]]]:
    """Index the finished runs under ``roots``: folders with ``metrics.json`` and the
    ``config.yaml`` training wrote. Returns ``key -> [(num_classes, folder)]`` (keys of
    :func:`_config_key`); a ``config.yaml`` that no longer loads is skipped.

    Raises:
        FileNotFoundError: a root is not a folder.
    """
    found: dict[str, list[tuple[int, Path]]] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"reuse_from: {str(root)!r} is not a folder")
        for metrics in sorted(root.rglob("metrics.json")):
            cfg_file = metrics.parent / "config.yaml"
            if not cfg_file.is_file():
                continue
            try:
                cfg = config_from_dict(yaml.safe_load(cfg_file.read_text()) or {}, str(cfg_file))
            except (ValueError, yaml.YAMLError):  # an older config format: not comparable
                continue
            key, classes = _config_key(cfg)
            found.setdefault(key, []).append((classes, metrics.parent))
    return found


def match_finished_run(task: _Task, found: Mapping[str, list[tuple[int, Path]]]) -> Path | None:
    """The folder of a run in ``found`` identical to ``task``, or None. The class counts
    must agree unless one of them is 0 (resolved from the same training set)."""
    key, classes = _task_key(task)
    for other, folder in found.get(key, []):
        if other == classes or 0 in (other, classes):
            return folder
    return None


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
    table = summarize_study(study.name, study.reference, runs, ladder=study.ladder)
    text = render_markdown(table, table_digits(table))
    if missing:
        text += "\nNot run yet: " + ", ".join(f"`{name}`" for name in missing) + "\n"
    atomic_write_text(out / study.name / "table.md", text)
    _write_json(out / study.name / "summary.json", table_dict(table))
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
            dirs = {k: d for k, d in dirs.items() if _finished(d)}
        runs[cell.name] = [run_cell_seed(study, cell, k, d, train_fn) for k, d in dirs.items()]
    return runs
