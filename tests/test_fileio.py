"""Atomic writes: the old file survives a failed write, no temporary file is left."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hcral.fileio import atomic_path, atomic_write_text


def test_write_replaces_and_creates_directories(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    assert atomic_write_text(path, "one") == path
    atomic_write_text(path, "twö")
    assert path.read_text(encoding="utf-8") == "twö"
    assert os.listdir(path.parent) == ["out.txt"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="out.txt"):
        with atomic_path(tmp_path / "out.txt"):
            pass
    assert os.listdir(tmp_path) == []


def test_temporary_names_are_unique_and_hidden(tmp_path):
    with atomic_path(tmp_path / "x") as a, atomic_path(tmp_path / "x") as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(".x.") and a.name.endswith(".tmp")
        a.write_text("a")
        b.write_text("b")
    assert (tmp_path / "x").read_text() == "a"  # the outer block renames last; it wins, whole


def test_file_gets_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "p", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_writer_leaves_the_old_file(tmp_path):
    path = tmp_path / "table.md"
    path.write_text("old")
    code = textwrap.dedent(f"""
        import os, signal
        from hcral.fileio import atomic_path
        with atomic_path({str(path)!r}) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_text() == "old"
