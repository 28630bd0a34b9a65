"""GHM-C, the gradient harmonizing classification loss (Li et al. 2019, AAAI), SPEC §2 base.

Every valid entry ``(i, c)`` of the ``(P, C)`` logits gets the gradient norm
``g = |sigmoid(x) - y|`` (``y`` the one-hot of the labels), ``g`` is binned into ``M``
equal bins on [0, 1] and the entry is weighted by ``β = N / (R_bin · n)``, where ``R_j``
is the (EMA-smoothed) number of entries in bin ``j``, ``N`` the number of entries and
``n`` the number of non-empty bins; the loss is ``(1/N) Σ β · BCE``.

Three fixes over the common GHM-C code (SPEC §2):

* the EMA of ``R`` starts from the first counts a bin sees, not from 0 (which would
  inflate early weights by ``1 / (1 - m_ghm)``);
* it is updated once per call, over all pyramid levels at once;
* counts are summed over ranks before use, so the weights do not depend on the number
  of processes (:class:`BinCountEMA`).

The histogram is one ``bincount`` over an int32 bin index; β is gathered per entry
from an ``(M,)`` table. No Python loop over bins, classes or priors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from hcral.losses._reduce import check_avg_factor, check_reduction, one_hot_targets, to_float
from hcral.losses._state import all_reduce_sum

__all__ = [
    "BinCountEMA",
    "GHMCLoss",
    "bin_histogram",
    "bin_weights",
    "check_logits_labels",
    "ghm_beta",
    "ghmc_loss",
    "gradient_bins",
    "weighted_bce",
]


def check_logits_labels(logits: Tensor, labels: Tensor) -> None:
    """Raise ``ValueError`` unless logits is floating ``(P, C)`` and labels ``(P,)`` in 0..C.

    The range check costs one device sync; an out-of-range label would otherwise be a
    silent wrong one-hot (or a CUDA device assert).
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating (P, C) tensor, got {shape}")
    p, c = logits.shape
    if c < 1:
        raise ValueError(f"logits must have at least one class column, got shape {(p, c)}")
    if (
        not isinstance(labels, Tensor)
        or labels.shape != (p,)
        or labels.is_floating_point()
        or labels.dtype == torch.bool
    ):
        got = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor) else labels
        raise ValueError(f"labels must be an integer ({p},) tensor, got {got}")
    if p and bool(((labels < 0) | (labels > c)).any()):
        bad = labels[(labels < 0) | (labels > c)][:5].tolist()
        raise ValueError(f"labels must be in 0..{c} (C = background), got values {bad}")


def _check_bins(bins: int) -> None:
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")


@torch.no_grad()
def gradient_bins(logits: Tensor, labels: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """GHM bin of every entry, and the score of each prior's labelled class.

    Args:
        logits: ``(P, C)`` logits.
        labels: ``(P,)`` int in ``0..C`` (``C`` = background).
        bins: M, the number of equal bins on [0, 1]; ``g = 1`` falls in the last.
    Returns:
        idx: ``(P, C)`` int32 bin index of ``g = |sigmoid(x) - y|``.
        scores: ``(P,)`` float32 ``sigmoid(x[i, min(label_i, C - 1)])``: the detached
            score ``s_i`` of a positive (meaningless for background rows).
    """
    c = logits.shape[1]
    g = torch.sigmoid(logits.detach().float())  # (P, C), becomes g in place
    col = labels.clamp(max=c - 1)[:, None]  # (P, 1)
    scores = g.gather(1, col)  # (P, 1), a copy
    positive = (labels < c)[:, None]
    # y is 1 only at (i, label_i) of positives, so g = p except there, where g = 1 - p.
    g.scatter_(1, col, torch.where(positive, 1 - scores, scores))
    idx = g.mul_(bins).to(torch.int32).clamp_(max=bins - 1)
    return idx, scores.squeeze(1)


def bin_weights(beta: Tensor, idx: Tensor) -> Tensor:
    """``beta[idx]``: the per-bin weight of every entry, ``(M,), (P, C) int32 -> (P, C)``.

    ``index_select`` takes the int32 index as it is; ``beta[idx]`` first copies it to
    int64 and goes through the general indexing kernel (16× slower on one CPU thread
    at P·C = 8M).
    """
    return beta.index_select(0, idx.reshape(-1)).view(idx.shape)


def bin_histogram(idx: Tensor, bins: int) -> Tensor:
    """Entries per bin, ``(P, C)`` int bin index -> ``(M,)`` float32 counts."""
    return torch.bincount(idx.reshape(-1), minlength=bins).float()


def ghm_beta(bin_counts: Tensor, batch_counts: Tensor) -> Tensor:
    """Per-bin GHM weight ``β_j = N / (R_j · n)`` (SPEC §2).

    Args:
        bin_counts: ``(M,)`` smoothed counts ``R_j``; a bin with ``R_j ≤ 0`` but data in
            this batch falls back to its batch count.
        batch_counts: ``(M,)`` counts of this batch (summed over ranks in DDP); they
            define ``N = Σ batch_counts`` and ``n`` = number of non-empty bins.
    Returns:
        ``(M,)`` float32, 0 for bins without data in this batch.
    """
    batch_counts = batch_counts.float()
    has_data = batch_counts > 0
    r = torch.where(bin_counts > 0, bin_counts.float(), batch_counts).clamp(min=1e-12)
    n_nonempty = has_data.sum().clamp(min=1)
    return torch.where(has_data, batch_counts.sum() / (r * n_nonempty), 0.0)


def weighted_bce(logits: Tensor, labels: Tensor, weight: Tensor, reduction: str = "sum") -> Tensor:
    """``Σ w · BCE(x, onehot(labels))`` without building the one-hot targets.

    ``BCE(x, y) = softplus(x) - x·y``, and ``y`` is 1 only at ``(i, label_i)`` of
    positives, so the sum is ``⟨w, softplus(x)⟩ - Σ_pos w·x``: one ``(P, C)``
    temporary instead of the four of ``binary_cross_entropy_with_logits``.

    Args:
        logits: ``(P, C)``; half precision is computed in float32, autocast off.
        labels: ``(P,)`` in ``0..C``.
        weight: ``(P, C)`` float32, detached.
        reduction: ``"sum"``, or ``"none"`` for the ``(P, C)`` elementwise loss.
    Returns:
        a scalar, or ``(P, C)`` for ``"none"`` (float32 for half precision logits).
    """
    with torch.autocast(logits.device.type, enabled=False):
        x = to_float(logits)
        weight = weight.to(x.dtype)
        if reduction == "none":
            target = one_hot_targets(labels, x.shape[1]).to(x.dtype)
            return F.binary_cross_entropy_with_logits(x, target, reduction="none") * weight
        col = labels.clamp(max=x.shape[1] - 1)[:, None]
        positive = labels < x.shape[1]
        total = torch.dot(weight.reshape(-1), F.softplus(x).reshape(-1))
        x_at = x.gather(1, col).squeeze(1)
        w_at = torch.where(positive, weight.gather(1, col).squeeze(1), 0.0)
        return total - torch.dot(w_at, x_at)


def ghmc_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    bin_counts: Tensor | None = None,
    bins: int = 20,
    reduction: str = "mean",
) -> Tensor:
    """GHM-C loss (Li et al. 2019) of one batch, SPEC §2 with ω = ρ = 1.

    Args:
        logits: ``(P, C)`` raw logits of the valid priors.
        labels: ``(P,)`` int64 in ``0..C`` (``C`` = background); the targets are their
            one-hot rows.
        bin_counts: ``(M,)`` smoothed bin counts ``R_j`` (e.g. an EMA); ``None`` uses
            this batch's histogram (GHM-C without momentum).
        bins: M.
        reduction: ``"mean"`` (``Σ β·BCE / N``, N = P·C, SPEC's normalisation),
            ``"sum"`` or ``"none"`` (``(P, C)``).
    Returns:
        a float32 scalar, or ``(P, C)`` for ``"none"``.
    """
    check_logits_labels(logits, labels)
    check_reduction(reduction)
    _check_bins(bins)
    labels = labels.long()
    idx, _ = gradient_bins(logits, labels, bins)
    with torch.no_grad():
        counts = bin_histogram(idx, bins)
        beta = ghm_beta(counts if bin_counts is None else bin_counts.to(counts), counts)
        weight = bin_weights(beta, idx)  # (P, C)
    loss = weighted_bce(logits, labels, weight, "none" if reduction == "none" else "sum")
    if reduction == "mean":
        loss = loss / max(logits.numel(), 1)
    return loss


def _world_size() -> int:
    """Number of ranks whose statistics :func:`all_reduce_sum` sums (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class BinCountEMA(nn.Module):
    """Per-bin EMA of GHM bin counts, summed over ranks.

    Follows :class:`~hcral.losses._state.RunningStat`'s rules per bin: ``momentum`` is the
    weight of the new counts (GHM's ``m_ghm`` is the weight of the old, so pass
    ``1 - m_ghm``), and a bin's first non-empty count initialises it. A bin that is
    empty in a batch keeps its value (GHM-C reference: "if num_in_bin > 0"); with a
    single ``initialized`` flag for all bins, a bin first filled after the first batch
    would start from 0 and get the ``1 / momentum`` inflation SPEC §2 removes.

    Args:
        bins: M.
        momentum: weight of the new counts, in (0, 1]; 1 means no smoothing.
    """

    def __init__(self, bins: int, momentum: float):
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer("value", torch.zeros(bins))
        self.register_buffer("initialized", torch.zeros(bins, dtype=torch.bool))

    @torch.no_grad()
    def update(self, counts: Tensor) -> tuple[Tensor, Tensor, int]:
        """Fold this rank's batch counts in (training mode only).

        Args:
            counts: ``(M,)`` this rank's histogram.
        Returns:
            smoothed: ``(M,)`` counts ``R_j`` to weight this batch with (bins never seen
                fall back to the batch counts).
            batch: ``(M,)`` batch counts, summed over ranks in training mode.
            ranks: how many ranks ``batch`` sums over.
        """
        batch = counts.detach().to(self.value.device, torch.float32)
        if not self.training:
            return torch.where(self.initialized, self.value, batch), batch, 1
        batch = all_reduce_sum(batch.clone())
        has_data = batch > 0
        blended = (1 - self.momentum) * self.value + self.momentum * batch
        new = torch.where(self.initialized, blended, batch)
        self.value.copy_(torch.where(has_data, new, self.value))
        self.initialized.logical_or_(has_data)
        return torch.where(self.initialized, self.value, batch), batch, _world_size()


class GHMCLoss(nn.Module):
    """GHM-C criterion with the SPEC §2 EMA fixes.

    ``forward(logits, labels, ious, avg_factor)`` per docs/architecture.md; ``ious`` and
    ``avg_factor`` are accepted for the uniform call but unused: the loss normalises by
    its own N (valid entries, averaged over ranks so that DDP's gradient averaging
    reproduces the single-process loss on the whole batch).

    Args:
        bins: M, number of gradient-norm bins (20).
        m_ghm: EMA momentum as the weight of the *old* counts (0.75); 0 disables it.
        loss_weight: multiplier of the returned loss.
    """

    def __init__(self, bins: int = 20, m_ghm: float = 0.75, loss_weight: float = 1.0):
        super().__init__()
        _check_bins(bins)
        if not 0.0 <= m_ghm < 1.0:
            raise ValueError(f"m_ghm must be in [0, 1), got {m_ghm}")
        self.bins, self.m_ghm, self.loss_weight = bins, m_ghm, loss_weight
        self.bin_counts = BinCountEMA(bins, momentum=1.0 - m_ghm)

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        ious: Tensor | None = None,
        avg_factor: float | Tensor = 1.0,
    ) -> Tensor:
        check_logits_labels(logits, labels)
        check_avg_factor(avg_factor)
        labels = labels.long()
        idx, _ = gradient_bins(logits, labels, self.bins)
        with torch.no_grad():
            smoothed, batch, ranks = self.bin_counts.update(bin_histogram(idx, self.bins))
            weight = bin_weights(ghm_beta(smoothed, batch), idx)
        # Σ_local / (N_all / ranks): DDP's mean over ranks then gives Σ_all / N_all.
        mean_entries = (batch.sum() / ranks).clamp(min=1)
        return weighted_bce(logits, labels, weight) / mean_entries * self.loss_weight

    def extra_repr(self) -> str:
        return f"bins={self.bins}, m_ghm={self.m_ghm}, loss_weight={self.loss_weight}"
