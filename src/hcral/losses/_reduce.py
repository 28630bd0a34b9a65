"""Shared helpers for loss functions: argument checks, reductions, safe numerics.

Every pure loss function validates its arguments with these helpers, so a malformed
call fails with a ``ValueError`` that names the argument and the offending value
instead of a shape error deep inside autograd. Criteria (the ``nn.Module`` wrappers)
use :func:`check_cls_call` / :func:`check_reg_call` for the uniform call of
docs/architecture.md and :func:`normalise` for ``sum(loss * weight) / avg_factor``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "check_avg_factor",
    "check_cls_call",
    "check_pair",
    "check_reduction",
    "check_reg_call",
    "normalise",
    "one_hot_targets",
    "reduce_loss",
    "safe_pow",
    "to_float",
]

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of :data:`REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction``; the mean of an empty tensor is 0 (with grad), not NaN."""
    check_reduction(reduction)
    if reduction == "none":
        return loss
    total = loss.sum()
    return total if reduction == "sum" else total / max(loss.numel(), 1)


def to_float(t: Tensor) -> Tensor:
    """Upcast half precision to float32: ``log``/``exp`` of fp16 under- and overflow."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def check_pair(a: Tensor, b: Tensor, names: tuple[str, str], last: int | None = None) -> None:
    """Check that two loss arguments are floating tensors of one shape.

    Args:
        a, b: the tensors, e.g. predictions and targets.
        names: their argument names, used in the error message.
        last: when given, the size the last dimension must have (4 for boxes).
    """
    for t, name in zip((a, b), names):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")
        if last is not None and (t.dim() == 0 or t.shape[-1] != last):
            raise ValueError(f"{name} must have shape (..., {last}), got {tuple(t.shape)}")
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def safe_pow(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent`` for ``x ≥ 0`` whose gradient at 0 is finite, never ``inf`` or NaN.

    ``d/dx x^e = e x^(e-1)`` is infinite at 0 for ``e < 1``, and autograd multiplies it
    by the zero gradient of whatever produced ``x`` (a saturated sigmoid, a zero IoU),
    giving NaN. For ``exponent < 1`` values ``≤ tiny`` are mapped to exactly 0 with zero
    gradient; ``exponent ≥ 1`` is plain ``pow``. ``exponent`` must be ≥ 0.
    """
    if exponent == 0:
        return torch.ones_like(x)
    if exponent >= 1:  # the gradient is finite at 0 already; keep plain pow's exact values
        return x**exponent
    tiny = torch.finfo(x.dtype).tiny
    positive = x > tiny
    # The clamp keeps the unselected branch finite: torch.where still differentiates it.
    return torch.where(positive, x.clamp(min=tiny) ** exponent, torch.zeros_like(x))


def check_avg_factor(avg_factor: float | Tensor) -> None:
    """Python numbers must be > 0; tensors are trusted (checking them would sync CUDA)."""
    if isinstance(avg_factor, Tensor):
        if avg_factor.numel() != 1:
            raise ValueError(f"avg_factor must be a scalar, got shape {tuple(avg_factor.shape)}")
        return
    if not avg_factor > 0:
        raise ValueError(f"avg_factor must be > 0, got {avg_factor}")


def check_cls_call(
    logits: Tensor, labels: Tensor, ious: Tensor, avg_factor: float | Tensor
) -> None:
    """Validate the classification criterion call ``(logits, labels, ious, avg_factor)``.

    Args:
        logits: ``(P, C)`` floating.
        labels: ``(P,)`` integer in ``0..C`` (``C`` = background).
        ious: ``(P,)`` floating.
        avg_factor: > 0.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating (P, C) tensor, got {_describe(logits)}")
    p, c = logits.shape
    if not isinstance(labels, Tensor) or labels.shape != (p,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer ({p},) tensor, got {_describe(labels)}")
    if labels.dtype == torch.bool:
        raise ValueError("labels must be an integer tensor, got dtype torch.bool")
    if not isinstance(ious, Tensor) or ious.shape != (p,) or not ious.is_floating_point():
        raise ValueError(f"ious must be a floating ({p},) tensor, got {_describe(ious)}")
    check_avg_factor(avg_factor)
    # One device sync; an out-of-range label would otherwise be a CUDA device assert.
    if p and bool(((labels < 0) | (labels > c)).any()):
        bad = labels[(labels < 0) | (labels > c)][:5].tolist()
        raise ValueError(f"labels must be in 0..{c} (C = background), got values {bad}")


def check_reg_call(
    pred_boxes: Tensor, target_boxes: Tensor, weight: Tensor | None, avg_factor: float | Tensor
) -> None:
    """Validate the regression criterion call: boxes ``(P, 4)``, ``weight`` ``(P,)``."""
    check_pair(pred_boxes, target_boxes, ("pred_boxes", "target_boxes"), last=4)
    if pred_boxes.dim() != 2:
        raise ValueError(f"pred_boxes must have shape (P, 4), got {tuple(pred_boxes.shape)}")
    p = pred_boxes.shape[0]
    if weight is not None and (
        not isinstance(weight, Tensor) or weight.shape != (p,) or not weight.is_floating_point()
    ):
        raise ValueError(f"weight must be a floating ({p},) tensor, got {_describe(weight)}")
    check_avg_factor(avg_factor)


def one_hot_targets(labels: Tensor, num_classes: int, values: Tensor | None = None) -> Tensor:
    """Dense targets ``(P, C)`` from labels ``(P,)`` in ``0..C``; background rows are 0.

    Args:
        labels: ``(P,)`` integer, ``C`` = background.
        num_classes: C.
        values: ``(P,)`` optional value for the labelled entry (e.g. an IoU soft target);
            1 when omitted.
    Returns:
        ``(P, C)`` float32 (``values``' dtype when given, upcast from half).
    """
    dtype = torch.float32 if values is None else to_float(values).dtype
    onehot = F.one_hot(labels.long(), num_classes + 1)[:, :num_classes].to(dtype)
    if values is not None:
        onehot = onehot * to_float(values)[:, None]
    return onehot


def normalise(
    loss: Tensor, weight: Tensor | None, avg_factor: float | Tensor, loss_weight: float
) -> Tensor:
    """``loss_weight * sum(loss * weight) / avg_factor`` for per-positive ``loss`` ``(P,)``."""
    if weight is not None:
        loss = loss * to_float(weight)
    return loss.sum() * loss_weight / avg_factor


def _describe(t: object) -> str:
    if isinstance(t, Tensor):
        return f"shape {tuple(t.shape)} dtype {t.dtype}"
    return type(t).__name__
