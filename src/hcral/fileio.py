"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file hcral writes for a later reader (checkpoints, exported weights, metrics,
result tables, detections, configs, traces) goes through :func:`atomic_path`: it is
written under a temporary name in the target directory, fsynced, and renamed over the
final name. An exception, a crash or a kill mid-write leaves the previous file (or none);
an exception also removes the temporary file, a kill leaves it as a hidden
``.NAME.<pid>.<hex>.tmp`` beside the final name.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(directory: str | Path) -> None:
    """Flush a directory entry (a rename) to disk; best effort where the OS (Windows)
    does not let a directory be opened for it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for the caller to write; on a clean exit
    it is fsynced and renamed over ``path``, on an exception it is removed.

    The directory is created if needed. The temporary name is unique per call (process
    id and random suffix), so two writers never share one, and the writer creates the
    file itself, so it gets the usual permissions (umask), not mkstemp's 0600.

    Example:
        >>> with atomic_path(out / "metrics.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path`` as a :class:`Path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
