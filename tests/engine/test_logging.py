"""CSV logger: fixed columns, full float precision, resume drops rows after the checkpoint."""

from __future__ import annotations

import pytest

from hcral.engine.logging import CSVLogger, ProgressBar, TensorBoardWriter, read_csv


def test_rows_keep_full_precision_and_first_row_columns(tmp_path):
    path = tmp_path / "run/log.csv"
    log = CSVLogger(path)
    log.write({"iter": 1, "epoch": 0, "lr": 0.1, "loss": 1 / 3})
    log.write({"iter": 2, "epoch": 0, "lr": 0.1, "loss": 0.25, "extra": 5.0})  # extra dropped
    rows = read_csv(path)
    assert rows == [
        {"iter": 1.0, "epoch": 0.0, "lr": 0.1, "loss": 1 / 3},
        {"iter": 2.0, "epoch": 0.0, "lr": 0.1, "loss": 0.25},
    ]


def test_resume_drops_rows_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / "log.csv"
    log = CSVLogger(path)
    for i in range(1, 6):
        log.write({"iter": i, "loss": float(i)})
    resumed = CSVLogger(path, resume_iter=3)
    resumed.write({"iter": 4, "loss": 40.0})
    assert [(r["iter"], r["loss"]) for r in read_csv(path)] == [
        (1.0, 1.0),
        (2.0, 2.0),
        (3.0, 3.0),
        (4.0, 40.0),
    ]
    CSVLogger(path)  # a fresh run in the same directory starts a new file
    assert read_csv(path) == []


def test_disabled_writers_do_nothing(tmp_path):
    CSVLogger(tmp_path / "a.csv", enabled=False).write({"iter": 1})
    TensorBoardWriter(tmp_path / "tb", enabled=False).write({"loss": 1.0}, 1)
    bar = ProgressBar(10, enabled=False)
    bar.update(1, loss=1.0)
    bar.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "text",
    [
        "160,2,0.005\niter,epoch,lr\n20,0,0.001\n",  # a row before the header (two writers)
        "iter,epoch\nabc,0\n",  # an iteration that is no integer
    ],
)
def test_resume_sets_an_unreadable_log_aside_instead_of_failing(tmp_path, text, caplog):
    path = tmp_path / "log.csv"
    path.write_text(text)
    with caplog.at_level("WARNING", logger="hcral"):
        logger = CSVLogger(path, resume_iter=100)
    assert "does not read as a training log" in caplog.text and "log.csv" in caplog.text
    assert (tmp_path / "log.csv.unreadable").read_text() == text  # nothing lost
    logger.write({"iter": 120, "loss": 0.5})
    assert read_csv(path) == [{"iter": 120.0, "loss": 0.5}]
