"""Training checkpoints: atomic writes, safe loading, RNG state, weight export.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it without unpickling arbitrary objects; a file
that needs more (a crafted pickle) is refused. Writes go to a temporary file in the
target directory, are fsynced and then renamed over the final name, so a crash or a
kill mid-write leaves the previous checkpoint untouched. ``last.pt`` in a run directory
always names the newest complete checkpoint (a hard link, or a copy where links are not
supported).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hcral.fileio import atomic_path, fsync_dir

LAST = "last.pt"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsafe or not a hcral checkpoint; the message names it."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` so that ``path`` is either the old or the new file.

    Args:
        obj: anything ``torch.save`` accepts; keep it to tensors and plain containers so
            that it loads with ``weights_only=True``.
        path: final file name; its directory is created if needed.

    Returns:
        ``path`` as a :class:`Path`.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def point_last(path: str | Path) -> Path:
    """Make ``last.pt`` next to ``path`` name the same checkpoint, atomically.

    Returns:
        The path of ``last.pt``.
    """
    path = Path(path)
    last = path.parent / LAST
    if path.name == LAST:
        return last
    tmp = path.parent / f".{LAST}.{os.getpid()}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)  # no second copy of a large file
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, last)
    fsync_dir(path.parent)
    return last


def save_checkpoint(state: dict[str, Any], path: str | Path, update_last: bool = True) -> Path:
    """Atomically write a checkpoint dict and (by default) point ``last.pt`` at it."""
    path = atomic_save(state, path)
    if update_last:
        point_last(path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; unsafe or foreign files are refused.

    Raises:
        CheckpointError: the file is missing, holds objects other than tensors and plain
            containers (e.g. a pickle that would run code), or is not a hcral checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load checkpoint {str(path)!r}: it holds objects other than tensors "
            f"and plain containers, which could run code when unpickled ({e})"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable or truncated: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} is not a hcral training checkpoint (format {FORMAT_VERSION})"
        )
    return state


def get_rng_state() -> dict[str, Any]:
    """All global RNG states (torch, CUDA, ``random``, numpy) as weights_only-safe values."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64)},
        "python_gauss": gauss,
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA only where GPUs are present)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), state["python_gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    legacy = (n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002 - the global state is what needs restoring


def export_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write the model's ``state_dict`` (buffers included) to a ``.safetensors`` file.

    Args:
        model: the bare model (unwrap DDP first).
        path: output file; must end in ``.safetensors``.
        metadata: optional string key/values stored in the header (e.g. the config).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"export path must end in .safetensors, got {str(path)!r}")
    # clone() breaks storage sharing between tied tensors, which safetensors rejects
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


WEIGHT_CHOICES = ("auto", "ema", "raw")


def inference_weights(
    ckpt: dict[str, Any], which: str = "auto", where: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The state dict of a training checkpoint to run inference with.

    Args:
        ckpt: a dict from :func:`load_checkpoint`.
        which: ``"auto"``: the EMA weights if the run kept them (``train.ema_decay`` > 0),
            else the trained ones; ``"ema"``: the EMA weights (an error if there are none);
            ``"raw"``: the trained weights.
        where: names the file in error messages.
    """
    if which not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {which!r}")
    ema = ckpt.get("ema")  # absent in checkpoints written before EMA existed
    if which == "ema" and ema is None:
        raise CheckpointError(f"{where} holds no EMA weights (trained with train.ema_decay 0)")
    return ema["module"] if ema is not None and which != "raw" else ckpt["model"]


def load_weights(
    model: nn.Module, path: str | Path, strict: bool = True, which: str = "auto"
) -> nn.Module:
    """Load a ``.safetensors`` export or a training checkpoint's weights into ``model``.

    ``which`` picks a checkpoint's EMA or trained weights (:func:`inference_weights`); an
    export holds one set of weights.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"weights file {str(path)!r} does not exist")
        state = load_file(path)
    else:
        state = inference_weights(load_checkpoint(path), which, repr(str(path)))
    model.load_state_dict(state, strict=strict)
    return model
