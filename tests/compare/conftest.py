from __future__ import annotations

from pathlib import Path

import pytest
from tests.compare._fakes import write_base_cfg


@pytest.fixture
def base_cfg(tmp_path) -> Path:
    """A minimal base config (ATSS, mu 5, theta 0.7, seed 10) in tmp_path/base.yaml."""
    return write_base_cfg(tmp_path)
