"""CSV logger: fixed columns, full float precision, resume drops rows after the checkpoint."""

from __future__ import annotations

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
