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
        ladder: true                      # optional: also tabulate what each cell adds
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
the intervals apart at the observed ΔAP and spread (:func:`seeds_to_separate`). A
study with ``ladder: true`` (each cell adds one part to the cell before it) gets a
second table, :func:`ladder_steps`: every cell against the cell above it, with the
Welch and paired intervals, the per-seed differences and the seeds needed.

Runs whose resolved configs are identical (apart from the folder) train once: the
others get a copy of its ``metrics.json`` marked ``reused_from``
(:func:`split_duplicates`). ``--study NAME`` runs and reports only the named studies
(finished runs of the others still serve as sources of copies);
``--dry-run`` prints :func:`plan_runs`' counts and trains nothing. ``--reuse-from DIR``
copies runs still to do from identical finished runs of earlier grids
(:func:`find_finished_runs`, matched on the ``config.yaml`` each run left).

``--jobs N`` trains up to N runs at once, each in its own process (spawned, so CUDA
starts clean), with ``cpu_count // N`` threads and its output in
``seed_<k>/train.log``; ``--gpus 0,1`` hands the runs to those GPUs in turn
(``CUDA_VISIBLE_DEVICES``). Small models leave most of a big GPU idle, so several
runs share one well; the numbers do not depend on N.
"""

from hcral.compare.grid import Cell, Study, apply_override, cell_config, load_grid
from hcral.compare.runner import (
    CHECKPOINT_NAME,
    CompareInterrupted,
    RunPlan,
    TrainFn,
    check_data,
    find_finished_runs,
    match_finished_run,
    plan_runs,
    reuse_run,
    run_cell_seed,
    run_compare,
    run_parallel,
    seed_range,
    select_studies,
    split_duplicates,
    with_reference,
)
from hcral.compare.stats import (
    Summary,
    compare_mark,
    difference_interval,
    intervals_overlap,
    paired_difference_interval,
    seeds_to_separate,
    summarize,
    t_quantile,
)
from hcral.compare.tables import (
    TABLE_METRICS,
    CellSummary,
    StepSummary,
    StudyTable,
    format_summary,
    ladder_steps,
    render_markdown,
    render_steps,
    summarize_study,
    table_dict,
    table_digits,
)

__all__ = [
    "CHECKPOINT_NAME",
    "TABLE_METRICS",
    "Cell",
    "CellSummary",
    "CompareInterrupted",
    "RunPlan",
    "StepSummary",
    "Study",
    "StudyTable",
    "Summary",
    "TrainFn",
    "apply_override",
    "cell_config",
    "check_data",
    "compare_mark",
    "difference_interval",
    "find_finished_runs",
    "format_summary",
    "intervals_overlap",
    "ladder_steps",
    "load_grid",
    "match_finished_run",
    "paired_difference_interval",
    "plan_runs",
    "render_markdown",
    "render_steps",
    "reuse_run",
    "run_cell_seed",
    "run_compare",
    "run_parallel",
    "seed_range",
    "seeds_to_separate",
    "select_studies",
    "split_duplicates",
    "summarize",
    "summarize_study",
    "t_quantile",
    "table_dict",
    "table_digits",
    "with_reference",
]
