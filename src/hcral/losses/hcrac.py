"""HCRAC, the hybrid classification-regression adaptive classification loss (SPEC §2).

GHM-C (:mod:`hcral.losses.ghm`) reweighted per entry by

* the adaptive matrix ω (paper Eq. 3): positives ``1 + u``; background priors
  ``1 + u`` up to ``u = θ``, then falling linearly to 0 at ``u = 1``; the other-class
  entries of a positive prior 1;
* the RCI factor ρ (Eq. 5), positive entries only:
  ``(exp(μ (u - s)_+) - 1) / max(ρ̄, ε)``, ρ̄ an EMA of the batch mean numerator;

so that ``L = (1/N) Σ_ic ω·β·ρ·BCE(x_ic, y_ic)`` (Eq. 6). All weights are detached.
A positive already scored at or above its IoU gets ρ = 0 on its own class entry (SPEC
P2, "stays 0 above it"): docs/method.md explains why this is kept as written.

``HCRACLoss(base="focal")`` is a variant outside SPEC (docs/method.md §2, "focal base"):
the same ω and ρ on the focal loss instead of GHM-C, ``L = Σ_ic ω·ρ·FL_ic / N_pos``.
It keeps P1–P3 (they are properties of ω·ρ) and reduces to focal loss when ω = ρ = 1,
as the SPEC form reduces to GHM-C (P0).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hcral.losses._reduce import check_cls_call, check_reduction, one_hot_targets
from hcral.losses._state import RunningStat
from hcral.losses.focal import _check_focal_params, sigmoid_focal_loss
from hcral.losses.ghm import (
    BinCountEMA,
    _check_bins,
    bin_histogram,
    bin_weights,
    ghm_beta,
    gradient_bins,
    weighted_bce,
)

__all__ = [
    "HCRACLoss",
    "adaptive_omega",
    "hcrac_loss",
    "hcrac_weight",
    "omega_rho_factors",
    "rci_numerator",
]

BASES = ("ghm", "focal")


def adaptive_omega(ious: Tensor, positive: Tensor, theta: float = 0.7) -> Tensor:
    """ω of paper Eq. 3 at each prior's own entries.

    Args:
        ious: ``(P,)`` u_i in [0, 1] (clamped): IoU with the assigned GT for positives,
            max IoU with the image's GTs for background priors.
        positive: ``(P,)`` bool.
        theta: θ in (0, 1), where the background weight peaks at ``1 + θ``.
    Returns:
        ``(P,)`` float32: ``1 + u`` for positives (their labelled entry) and for
        background with ``u ≤ θ``; ``(1 + θ)(1 - u)/(1 - θ)`` for background above θ.
    """
    u = ious.detach().float().clamp(0, 1)
    decay = (1 + theta) * (1 - u) / (1 - theta)
    return torch.where(positive | (u <= theta), 1 + u, decay)


def rci_numerator(ious: Tensor, scores: Tensor, mu: float = 5.0) -> Tensor:
    """Numerator of the RCI factor (Eq. 5): ``exp(μ (u - s)_+) - 1``, ``(P,)`` ≥ 0."""
    gap = (ious.detach().float() - scores.detach().float()).clamp(min=0)
    return torch.expm1(mu * gap)


def _check_hcrac_params(bins: int, mu: float, theta: float, eps: float) -> None:
    _check_bins(bins)
    if not mu > 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    if not 0 < theta < 1:
        raise ValueError(f"theta must be in (0, 1), got {theta}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


@torch.no_grad()
def omega_rho_factors(
    labels: Tensor,
    ious: Tensor,
    scores: Tensor,
    num_classes: int,
    *,
    rho_mean: Tensor | float | None = None,
    mu: float = 5.0,
    theta: float = 0.7,
    use_omega: bool = True,
    use_rci: bool = True,
    eps: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """ω·ρ as two ``(P,)`` factors: one for a prior's whole row, one for its label entry.

    A background prior's row takes its ω; a positive's row keeps 1 (other-class
    entries: confusion is not localisation) and its labelled entry takes ``ω·ρ``.
    Args as :func:`hcrac_weight`, with ``num_classes`` = C.
    Returns:
        ``row (P,)``, ``at_label (P,)`` float32 (``at_label`` is 1 for background).
    """
    positive = labels < num_classes
    row = torch.ones_like(scores, dtype=torch.float32)
    at_label = torch.ones_like(row)
    if use_omega:
        omega = adaptive_omega(ious, positive, theta)
        row = torch.where(positive, 1.0, omega)
        at_label = torch.where(positive, omega, at_label)
    if use_rci:
        num = rci_numerator(ious, scores, mu)
        if rho_mean is None:
            rho_mean = (num * positive).sum() / positive.sum().clamp(min=1)
        rho_mean = torch.as_tensor(rho_mean, dtype=torch.float32, device=num.device)
        at_label = torch.where(positive, at_label * num / rho_mean.clamp(min=eps), at_label)
    return row, at_label


def _apply_factors(weight: Tensor, labels: Tensor, row: Tensor, at_label: Tensor) -> Tensor:
    """``weight (P, C)`` times ``row`` per row and ``at_label`` at each label, in place."""
    weight.mul_(row[:, None])
    col = labels.clamp(max=weight.shape[1] - 1)[:, None]
    return weight.scatter_(1, col, weight.gather(1, col) * at_label[:, None])


@torch.no_grad()
def hcrac_weight(
    idx: Tensor,
    labels: Tensor,
    ious: Tensor,
    scores: Tensor,
    beta: Tensor,
    *,
    rho_mean: Tensor | float | None = None,
    mu: float = 5.0,
    theta: float = 0.7,
    use_omega: bool = True,
    use_rci: bool = True,
    eps: float = 1e-3,
) -> Tensor:
    """The detached per-entry weight ``CF_cls · ρ = ω · β · ρ`` (Eqs. 3–5).

    Args:
        idx: ``(P, C)`` int GHM bin per entry (:func:`~hcral.losses.ghm.gradient_bins`).
        labels: ``(P,)`` in ``0..C``.
        ious: ``(P,)`` u_i.
        scores: ``(P,)`` s_i, the detached score of a positive's class.
        beta: ``(M,)`` per-bin β (:func:`~hcral.losses.ghm.ghm_beta`).
        rho_mean: ρ̄; ``None`` uses the mean numerator over this batch's positives.
        mu, theta, eps: μ, θ, ε of SPEC §2.
        use_omega, use_rci: switch ω / ρ off (they become 1) for ablations.
    Returns:
        ``(P, C)`` float32.
    """
    row, at_label = omega_rho_factors(
        labels,
        ious,
        scores,
        idx.shape[1],
        rho_mean=rho_mean,
        mu=mu,
        theta=theta,
        use_omega=use_omega,
        use_rci=use_rci,
        eps=eps,
    )
    return _apply_factors(bin_weights(beta, idx), labels, row, at_label)


def hcrac_loss(
    logits: Tensor,
    labels: Tensor,
    ious: Tensor,
    *,
    bin_counts: Tensor | None = None,
    rho_mean: Tensor | float | None = None,
    bins: int = 20,
    mu: float = 5.0,
    theta: float = 0.7,
    use_omega: bool = True,
    use_rci: bool = True,
    eps: float = 1e-3,
    reduction: str = "mean",
) -> Tensor:
    """HCRAC loss of one batch (SPEC §2, Eq. 6), stateless.

    Args:
        logits: ``(P, C)`` raw logits of the non-ignored priors.
        labels: ``(P,)`` int64 in ``0..C`` (``C`` = background).
        ious: ``(P,)`` detached u_i: IoU(predicted box, assigned GT) for positives, max
            IoU with the image's GTs for background (0 without GTs).
        bin_counts: ``(M,)`` smoothed GHM counts R_j; ``None``: this batch's histogram.
        rho_mean: ρ̄ (EMA of the mean RCI numerator); ``None``: this batch's mean.
        bins: M (20). mu: μ (5). theta: θ (0.7). eps: ε, floor of ρ̄ (1e-3).
        use_omega, use_rci: ablation switches; both off gives plain GHM-C.
        reduction: ``"mean"`` (``/ N``, N = P·C), ``"sum"`` or ``"none"`` (``(P, C)``).
    Returns:
        a float32 scalar, or ``(P, C)`` for ``"none"``.
    """
    check_cls_call(logits, labels, ious, 1.0)
    check_reduction(reduction)
    labels = labels.long()
    _check_hcrac_params(bins, mu, theta, eps)
    idx, scores = gradient_bins(logits, labels, bins)
    with torch.no_grad():
        counts = bin_histogram(idx, bins)
        beta = ghm_beta(counts if bin_counts is None else bin_counts.to(counts), counts)
    weight = hcrac_weight(
        idx,
        labels,
        ious,
        scores,
        beta,
        rho_mean=rho_mean,
        mu=mu,
        theta=theta,
        use_omega=use_omega,
        use_rci=use_rci,
        eps=eps,
    )
    loss = weighted_bce(logits, labels, weight, "none" if reduction == "none" else "sum")
    return loss / max(logits.numel(), 1) if reduction == "mean" else loss


class HCRACLoss(nn.Module):
    """HCRAC criterion: GHM counts and ρ̄ kept as EMAs, synced across ranks.

    ``forward(logits, labels, ious, avg_factor)`` per docs/architecture.md. With the
    GHM-C base ``avg_factor`` is unused (the loss normalises by its own N, averaged
    over ranks); with the focal base the loss is ``Σ ω·ρ·FL / avg_factor``.

    Args:
        base: ``"ghm"`` (SPEC §2) or ``"focal"`` (the variant of docs/method.md).
        alpha, gamma: focal loss α and γ (focal base only).
        bins: M (20).
        m_ghm: GHM count EMA momentum, weight of the *old* counts (0.75).
        mu: μ (5.0). theta: θ (0.7).
        m_rci: ρ̄ EMA momentum, weight of the *new* batch mean (0.01).
        eps: ε, floor of ρ̄ (1e-3).
        use_omega, use_rci: ablation switches (config: ``cls_loss_args``).
        loss_weight: multiplier of the returned loss.
    """

    #: ω for negatives needs each negative prior's max IoU with its image's GTs (SPEC §2);
    #: the detector computes those only for criteria that ask.
    needs_negative_ious = True

    def __init__(
        self,
        base: str = "ghm",
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        bins: int = 20,
        m_ghm: float = 0.75,
        mu: float = 5.0,
        theta: float = 0.7,
        m_rci: float = 0.01,
        eps: float = 1e-3,
        use_omega: bool = True,
        use_rci: bool = True,
        loss_weight: float = 1.0,
    ):
        super().__init__()
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        _check_focal_params(alpha, gamma)
        _check_hcrac_params(bins, mu, theta, eps)
        self.base, self.alpha, self.gamma = base, alpha, gamma
        if not 0.0 <= m_ghm < 1.0:
            raise ValueError(f"m_ghm must be in [0, 1), got {m_ghm}")
        if not 0.0 < m_rci <= 1.0:
            raise ValueError(f"m_rci must be in (0, 1], got {m_rci}")
        self.bins, self.m_ghm, self.mu, self.theta = bins, m_ghm, mu, theta
        self.m_rci, self.eps, self.loss_weight = m_rci, eps, loss_weight
        self.use_omega, self.use_rci = use_omega, use_rci
        self.bin_counts = BinCountEMA(bins, momentum=1.0 - m_ghm)
        self.rho_mean = RunningStat(momentum=m_rci, init=1.0)

    def forward(
        self, logits: Tensor, labels: Tensor, ious: Tensor, avg_factor: float | Tensor = 1.0
    ) -> Tensor:
        check_cls_call(logits, labels, ious, avg_factor)
        labels = labels.long()
        if self.base == "focal":
            return self._focal_forward(logits, labels, ious, avg_factor)
        idx, scores = gradient_bins(logits, labels, self.bins)
        with torch.no_grad():
            smoothed, batch, ranks = self.bin_counts.update(bin_histogram(idx, self.bins))
            rho_mean = None
            if self.use_rci:
                positive = labels < logits.shape[1]
                num = rci_numerator(ious, scores, self.mu) * positive
                rho_mean = self.rho_mean.update(num.sum(), positive.sum())
            weight = hcrac_weight(
                idx,
                labels,
                ious,
                scores,
                ghm_beta(smoothed, batch),
                rho_mean=rho_mean,
                mu=self.mu,
                theta=self.theta,
                use_omega=self.use_omega,
                use_rci=self.use_rci,
                eps=self.eps,
            )
        # Σ_local / (N_all / ranks): DDP's mean over ranks then gives Σ_all / N_all.
        mean_entries = (batch.sum() / ranks).clamp(min=1)
        return weighted_bce(logits, labels, weight) / mean_entries * self.loss_weight

    def _focal_forward(
        self, logits: Tensor, labels: Tensor, ious: Tensor, avg_factor: float | Tensor
    ) -> Tensor:
        """``loss_weight · Σ_ic ω·ρ·FL(x_ic, y_ic) / avg_factor`` (ω, ρ detached)."""
        c = logits.shape[1]
        with torch.no_grad():
            positive = labels < c
            p = logits.detach().float().sigmoid()
            scores = p.gather(1, labels.clamp(max=c - 1)[:, None])[:, 0]
            rho_mean = None
            if self.use_rci:
                num = rci_numerator(ious, scores, self.mu) * positive
                rho_mean = self.rho_mean.update(num.sum(), positive.sum())
            row, at_label = omega_rho_factors(
                labels,
                ious,
                scores,
                c,
                rho_mean=rho_mean,
                mu=self.mu,
                theta=self.theta,
                use_omega=self.use_omega,
                use_rci=self.use_rci,
                eps=self.eps,
            )
            weight = _apply_factors(torch.ones_like(p), labels, row, at_label)
        targets = one_hot_targets(labels, c)
        loss = sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, reduction="none")
        return (loss * weight).sum() * self.loss_weight / avg_factor

    def extra_repr(self) -> str:
        if self.base == "focal":
            return (
                f"base=focal, alpha={self.alpha}, gamma={self.gamma}, mu={self.mu}, "
                f"theta={self.theta}, m_rci={self.m_rci}, eps={self.eps}, "
                f"use_omega={self.use_omega}, use_rci={self.use_rci}, "
                f"loss_weight={self.loss_weight}"
            )
        return (
            f"bins={self.bins}, m_ghm={self.m_ghm}, mu={self.mu}, theta={self.theta}, "
            f"m_rci={self.m_rci}, eps={self.eps}, use_omega={self.use_omega}, "
            f"use_rci={self.use_rci}, loss_weight={self.loss_weight}"
        )
