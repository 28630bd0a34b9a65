"""What a training run reports: a CSV row per log step, TensorBoard, a progress bar.

Only the main process writes; the other ranks get inert objects so the loop does not
branch on the rank at every call. TensorBoard is used when installed and skipped
otherwise.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger("hcral")


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Send ``hcral`` log records to stderr with the rank in the prefix (once per process)."""
    if any(getattr(h, "_hcral", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s"))
    handler._hcral = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level if rank == 0 else max(level, logging.WARNING))


class CSVLogger:
    """Append one row per log step to a CSV file.

    The columns are fixed by the first row written (``iter``, ``epoch``, ``lr``, each
    loss, ``time`` ...). When a run resumes at iteration ``k``, rows of the same file
    with ``iter > k`` (logged after the checkpoint, before the interruption) are dropped
    so the file reads as one uninterrupted run.

    Args:
        path: the CSV file; created with its directory.
        resume_iter: keep existing rows up to this iteration; ``None`` starts afresh.
        enabled: ``False`` makes every call a no-op (non-main ranks).
    """

    def __init__(self, path: str | Path, resume_iter: int | None = None, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.fields: list[str] | None = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        if resume_iter is not None and self.path.is_file():
            self.fields, kept = _rows_up_to(self.path, resume_iter)
        with self.path.open("w", newline="") as f:
            if self.fields:
                writer = csv.DictWriter(f, self.fields)
                writer.writeheader()
                writer.writerows(kept)

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row``; floats are written with full precision (``repr``)."""
        if not self.enabled:
            return
        values = {k: repr(v) if isinstance(v, float) else v for k, v in row.items()}
        with self.path.open("a", newline="") as f:
            if self.fields is None:
                self.fields = list(values)
                csv.DictWriter(f, self.fields).writeheader()
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(values)


def _rows_up_to(path: Path, last_iter: int) -> tuple[list[str] | None, list[dict[str, str]]]:
    """Columns and rows with ``iter ≤ last_iter`` of a CSV log a resumed run continues.

    A log that does not read as one (no ``iter`` column, an ``iter`` that is no integer:
    e.g. two processes wrote the same run) must not stop the resume: it is kept beside
    as ``<name>.unreadable`` with a warning, and the log starts afresh.
    """
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        try:
            return fields or None, [r for r in reader if int(r["iter"]) <= last_iter]
        except (KeyError, TypeError, ValueError) as err:
            problem = f"{type(err).__name__}: {err}"
    aside = path.with_name(path.name + ".unreadable")
    path.replace(aside)
    log.warning("%s does not read as a training log (%s); kept as %s, starting a new log",
                path, problem, aside.name)  # fmt: skip
    return None, []


def read_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a :class:`CSVLogger` file as floats (for tests and plotting)."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


class TensorBoardWriter:
    """Scalars to TensorBoard when ``tensorboard`` is installed; a no-op otherwise."""

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self._writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._writer = SummaryWriter(str(log_dir))

    def write(self, row: dict[str, Any], step: int) -> None:
        if self._writer is None:
            return
        for key, value in row.items():
            if isinstance(value, float) and key not in ("iter", "epoch"):
                self._writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class ProgressBar:
    """A tqdm bar over the run's total iterations, with the loss; main process only.

    Args:
        total: iterations of the whole run (for the ETA).
        initial: iterations already done (resumed runs).
        enabled: ``False`` on non-main ranks.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self._bar = None
        if enabled:
            # redirected to a file (batch jobs): refresh rarely instead of flooding it
            every = 0.1 if sys.stderr.isatty() else 30.0
            self._bar = tqdm(
                total=total, initial=initial, desc="train", dynamic_ncols=True, mininterval=every
            )

    def update(self, n: int = 1, **postfix: float) -> None:
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
