"""The hcral command line: help texts, argument forwarding, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from hcral import cli

REPO = Path(__file__).resolve().parents[1]

COMMANDS = [["train"], ["eval"], ["predict"], ["data"], ["data", "make-sample"], ["compare"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_for_each_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hcral {' '.join(command)}")


def test_python_dash_m_and_bad_config_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbnoe: resnet18\n")
    run = [sys.executable, "-m", "hcral"]
    ok = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "make-sample" not in ok.stderr and "train" in ok.stdout
    res = subprocess.run([*run, "train", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert (
        lines[0].startswith("hcral: error:") and "bad.yaml" in lines[0] and "backbnoe" in lines[0]
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "{cfg}", "--set", "train.lr"],  # malformed override
        ["train", "{cfg}", "--set", "nosuch.key=1"],  # unknown section
        ["train", "{missing}"],
        ["eval", "{cfg}", "{missing}"],  # no checkpoint file
        ["predict", "{missing}", "{cfg}", "--out", "{tmp}"],
    ],
)
def test_user_errors_are_one_line_exit_2(argv, tmp_path, capsys):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("train:\n  epochs: 1\n")
    subs = {"cfg": cfg, "missing": tmp_path / "missing.pt", "tmp": tmp_path}
    assert cli.main([a.format(**subs) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("hcral: error:")


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        cli.main(["--debug", "train", str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="missing"):
        cli.main(["train", str(tmp_path / "missing.yaml"), "--debug"])


def test_train_forwards_config_overrides_and_resume(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(cfg, resume=None):
        calls.append((cfg, resume))
        return {"AP": 12.5, "iterations": 3}

    monkeypatch.setattr("hcral.engine.train.train", fake_train)
    cfg = Path(__file__).parents[1] / "configs" / "fcos_atss_hcral.yaml"
    assert cli.main(["train", str(cfg), "--set", "train.lr=0.02", "model.num_convs=1"]) == 0
    assert cli.main(["train", str(cfg), "--resume"]) == 0
    assert cli.main(["train", str(cfg), "--resume", "x/last.pt", "--set", "train.seed=4"]) == 0
    (c0, r0), (_, r1), (c2, r2) = calls
    assert c0.train.lr == 0.02 and c0.model.num_convs == 1 and c0.model.assigner == "eatss"
    assert (r0, r1, r2) == (None, True, "x/last.pt") and c2.train.seed == 4
    assert "12.500" in capsys.readouterr().out


def test_compare_is_called_lazily_with_its_arguments(tmp_path, monkeypatch):
    got = {}

    def run_compare(
        grid_path,
        seeds,
        out_dir,
        jobs=1,
        gpus=(),
        first_seed=0,
        report_only=False,
        only=(),
        reuse_from=(),
        reference=None,
    ):
        got.update(grid=grid_path, seeds=seeds, out=out_dir, jobs=jobs, gpus=gpus, first=first_seed)
        got.update(report_only=report_only, only=only, reuse_from=reuse_from, reference=reference)
        return Path(out_dir) / "report.md"

    monkeypatch.setitem(
        sys.modules, "hcral.compare", types.SimpleNamespace(run_compare=run_compare)
    )
    assert cli.main(["compare", "g.yaml", "--seeds", "2", "--out", str(tmp_path)]) == 0
    want = {"grid": Path("g.yaml"), "seeds": 2, "out": tmp_path, "jobs": 1, "gpus": [], "first": 0}
    want.update(report_only=False, only=[], reuse_from=[], reference=None)
    assert got == want
    args = ["compare", "g.yaml", "--out", str(tmp_path), "--jobs", "4", "--gpus", "0,1"]
    assert cli.main(args + ["--first-seed", "4"]) == 0
    assert got["jobs"] == 4 and got["gpus"] == ["0", "1"] and got["seeds"] == 3
    assert got["first"] == 4 and not got["report_only"]
    assert cli.main(["compare", "g.yaml", "--report-only"]) == 0 and got["report_only"]
    assert cli.main(["compare", "g.yaml", "--study", "a", "--study", "b"]) == 0
    assert got["only"] == ["a", "b"]
    assert cli.main(["compare", "g.yaml", "--reuse-from", "r1", "--reuse-from", "r2"]) == 0
    assert got["reuse_from"] == [Path("r1"), Path("r2")]
    assert cli.main(["compare", "g.yaml", "--report-only", "--reference", "GIoU"]) == 0
    assert got["reference"] == "GIoU"


def test_compare_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    grid = REPO / "configs" / "ablations" / "hyper_params_short.yaml"
    args = ["compare", str(grid), "--seeds", "2", "--out", str(tmp_path / "o"), "--dry-run"]
    assert cli.main(args + ["--study", "hcrar_alpha", "--study", "hcrar_ep"]) == 0
    text = capsys.readouterr().out
    assert "hcrar_alpha: 4 cells x 2 seeds = 8 runs: 0 finished, 8 to train" in text
    assert "hcrar_ep: 3 cells x 2 seeds = 6 runs: 0 finished, 4 to train, 2 to copy" in text
    assert "in all: 12 run(s) to train" in text and not (tmp_path / "o").exists()


def test_make_sample_writes_a_small_dataset(tmp_path, capsys):
    out = tmp_path / "sample"
    args = ["data", "make-sample", str(out), "--num-train", "2", "--num-val", "1",
            "--image-size", "64", "--seed", "1"]  # fmt: skip
    assert cli.main(args) == 0
    train = json.loads((out / "annotations" / "train.json").read_text())
    assert len(train["images"]) == 2 and len(list((out / "train").glob("*.png"))) == 2
    assert len(json.loads((out / "annotations" / "val.json").read_text())["images"]) == 1
    assert str(out / "annotations" / "train.json") in capsys.readouterr().out
    # a different sample in the same folder needs --overwrite
    assert cli.main([*args[:-1], "2"]) == 2
    assert cli.main([*args[:-1], "2", "--overwrite"]) == 0


def test_eval_scores_a_checkpoint_on_the_val_set(tmp_path, capsys):
    import torch

    from hcral.config import load_config
    from hcral.data import make_sample
    from hcral.engine.checkpoint import save_checkpoint
    from hcral.models import build_model

    paths = make_sample(tmp_path / "s", num_train=1, num_val=2, image_size=64)
    overrides = [f"data.{k}={v}" for k, v in paths.items()] + [
        "model.backbone=resnet18", "model.fpn_channels=32", "model.num_convs=1",
        "data.min_size=[256]", "data.max_size=256", "model.score_thresh=0.0",
    ]  # fmt: skip
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text("model:\n  name: atss\n")
    cfg = load_config(cfg_path, [*overrides, "model.num_classes=6"])
    state = {"format": 1, "model": build_model(cfg.model).state_dict(), "config": cfg.to_dict()}
    ckpt = save_checkpoint(state, tmp_path / "run" / "last.pt")
    out_json = tmp_path / "dets.json"
    argv = ["eval", str(cfg_path), str(ckpt), "--device", "cpu", "--output-json", str(out_json)]
    assert cli.main([*argv, "--set", *overrides]) == 0
    lines = capsys.readouterr().out.splitlines()
    metrics = {line.split()[0]: float(line.split()[1]) for line in lines}
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(0.0 <= v <= 100.0 or v != v for v in metrics.values())  # percent or nan
    dets = json.loads(out_json.read_text())
    assert dets and {d["category_id"] for d in dets} <= {1, 3, 5, 7, 9, 11}
    assert torch.tensor([d["bbox"] for d in dets]).max() <= 64.0
