"""hcral.engine.trace: a global hook that records chosen modules' training-mode calls."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from hcral.engine.trace import record_calls, write_rows


def _stats(module, args, kwargs, output):
    return {"x": float(args[0].sum()), "scale": float(kwargs.get("scale", 1.0))}


class Scaled(nn.Module):
    def forward(self, x, scale=1.0):
        return x * scale


def test_records_selected_training_calls_only():
    chosen, other = Scaled(), nn.Identity()
    with record_calls(lambda m: m is chosen, _stats) as rows:
        chosen(torch.ones(2))
        other(torch.ones(5))  # not selected
        chosen(torch.ones(3), scale=2.0)
        chosen.eval()(torch.ones(7))  # eval-mode calls are not training steps
    chosen.train()(torch.ones(4))  # after the block: the hook is gone
    assert rows == [{"iter": 1, "x": 2.0, "scale": 1.0}, {"iter": 2, "x": 3.0, "scale": 2.0}]


def test_hook_removed_after_an_error():
    chosen = Scaled()
    with pytest.raises(RuntimeError, match="boom"):
        with record_calls(lambda m: True, _stats) as rows:
            chosen(torch.ones(1))
            raise RuntimeError("boom")
    chosen(torch.ones(1))
    assert len(rows) == 1


def test_write_rows_takes_the_union_of_keys(tmp_path):
    path = tmp_path / "t.csv"
    write_rows([{"iter": 1, "a": 0.5}, {"iter": 2, "b": 3}], path)
    with open(path) as f:
        got = list(csv.DictReader(f))
    assert got == [{"iter": "1", "a": "0.5", "b": ""}, {"iter": "2", "a": "", "b": "3"}]
