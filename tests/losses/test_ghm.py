"""GHM-C: values against a loop reference and by hand, EMA rules, ranks, edge cases."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hcral.losses import build_cls_loss
from hcral.losses.ghm import (
    GHMCLoss,
    bin_histogram,
    ghm_beta,
    ghmc_loss,
    gradient_bins,
)


def reference_ghmc(logits, labels, bins, acc=None):
    """GHM-C written as in the paper's reference code: a loop over bins."""
    c = logits.shape[1]
    target = F.one_hot(labels, c + 1)[:, :c].to(logits.dtype)
    g = (logits.detach().sigmoid() - target).abs()
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] += 1e-6
    weights = torch.zeros_like(logits)
    tot, n = logits.numel(), 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1])
        num = int(inds.sum())
        if num > 0:
            weights[inds] = tot / (num if acc is None else acc[i])
            n += 1
    weights = weights / max(n, 1)
    loss = F.binary_cross_entropy_with_logits(logits, target, weights, reduction="sum")
    return loss / tot


def _batch(p=40, c=5, device="cpu", dtype=torch.float32):
    logits = (torch.randn(p, c, dtype=dtype) * 3).to(device).requires_grad_()
    labels = torch.randint(0, c + 1, (p,)).to(device)
    return logits, labels


def test_matches_loop_reference(device):
    logits, labels = _batch(device=device, dtype=torch.float64)
    ours = ghmc_loss(logits, labels, bins=10)
    torch.testing.assert_close(ours, reference_ghmc(logits, labels, 10))


def test_hand_computed_two_bins():
    # g = sigmoid(x) for background: [0.018, 0.018, 0.5] -> bins [0, 0, 1] of M = 2,
    # counts [2, 1], N = 3, n = 2: β0 = 3/(2·2), β1 = 3/(1·2).
    logits = torch.tensor([[-4.0], [-4.0], [0.0]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 1])
    sp4, sp0 = math.log1p(math.exp(-4)), math.log(2)
    expected = (0.75 * 2 * sp4 + 1.5 * sp0) / 3
    assert ghmc_loss(logits, labels, bins=2).item() == pytest.approx(expected, rel=1e-12)


def test_hand_computed_positive_and_given_counts():
    # x = 0 everywhere: g = 0.5 for the positive entry and the negative one -> bin 1 of 2.
    logits = torch.zeros(2, 1, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    assert ghmc_loss(logits, labels, bins=2).item() == pytest.approx(math.log(2))
    # With R_1 = 4 (an EMA), β = N / (R n) = 2 / 4: half the plain loss.
    counts = torch.tensor([7.0, 4.0])
    got = ghmc_loss(logits, labels, bins=2, bin_counts=counts)
    assert got.item() == pytest.approx(0.5 * math.log(2))


def test_g_equal_one_goes_to_last_bin():
    logits = torch.tensor([[100.0], [-100.0]])
    idx, scores = gradient_bins(logits, torch.tensor([1, 0]), 20)
    assert idx.flatten().tolist() == [19, 19]
    assert scores.tolist() == [1.0, 0.0]


def test_constant_score_is_best_at_one_half_whatever_the_class_ratio():
    """Every occupied bin weighs the same, so a bias-only classifier is pulled to 0.5:
    the loss is ½(−log p) + ½(−log(1 − p)) once positives and background sit in
    different bins, whatever their numbers (BCE's best constant is the positive share).
    This is why GHM-C lets background scores rise (docs/results.md §15)."""
    for pos, bg in ((10, 3710), (10, 10), (100, 10)):
        labels = torch.cat([torch.zeros(pos), torch.ones(bg)]).long()  # C = 1: 1 = background
        target = torch.cat([torch.ones(pos, 1), torch.zeros(bg, 1)])
        probs = torch.linspace(0.005, 0.995, 199)
        ghm = [
            float(ghmc_loss(torch.full((pos + bg, 1), math.log(p / (1 - p))), labels))
            for p in probs
        ]
        bce = [float(F.binary_cross_entropy(torch.full_like(target, p), target)) for p in probs]
        assert float(probs[min(range(199), key=ghm.__getitem__)]) == pytest.approx(0.5)
        assert min(ghm) == pytest.approx(math.log(2), rel=1e-5)
        assert float(probs[min(range(199), key=bce.__getitem__)]) == pytest.approx(
            pos / (pos + bg), abs=0.005
        )
    # Focal loss (α = 0.25, γ = 2) at 1 positive per 371 background entries: about 0.07.
    from torchvision.ops import sigmoid_focal_loss

    target = torch.cat([torch.ones(10, 1), torch.zeros(3710, 1)])
    focal = [
        float(
            sigmoid_focal_loss(
                torch.full_like(target, math.log(p / (1 - p))), target, 0.25, 2.0, "sum"
            )
        )
        for p in probs
    ]
    assert float(probs[min(range(199), key=focal.__getitem__)]) == pytest.approx(0.07, abs=0.005)


def test_reductions_agree_and_gradient_is_weighted_bce(device):
    logits, labels = _batch(device=device)
    none = ghmc_loss(logits, labels, reduction="none")
    total = ghmc_loss(logits, labels, reduction="sum")
    mean = ghmc_loss(logits, labels)
    torch.testing.assert_close(none.sum(), total)
    torch.testing.assert_close(mean, total / logits.numel())
    (grad,) = torch.autograd.grad(mean, logits)
    idx, _ = gradient_bins(logits, labels, 20)
    counts = bin_histogram(idx, 20)
    beta = ghm_beta(counts, counts)[idx]
    target = F.one_hot(labels, 6)[:, :5].float()
    expected = beta * (logits.detach().sigmoid() - target) / logits.numel()
    torch.testing.assert_close(grad, expected)


def test_gradcheck_float64():
    logits, labels = _batch(p=6, c=3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: ghmc_loss(x, labels), (logits,))


def test_ema_starts_from_first_batch_then_blends():
    crit = GHMCLoss(bins=4, m_ghm=0.75)
    logits, labels = _batch()
    loss = crit(logits, labels, torch.zeros(40), 1.0)
    idx, _ = gradient_bins(logits, labels, 4)
    first = bin_histogram(idx, 4)
    # first batch initialises: the loss is plain GHM-C on it, the state its counts
    torch.testing.assert_close(loss, ghmc_loss(logits, labels, bins=4))
    torch.testing.assert_close(crit.bin_counts.value, first)
    logits2, labels2 = _batch(p=30)
    crit(logits2, labels2, torch.zeros(30), 1.0)
    idx2, _ = gradient_bins(logits2, labels2, 4)
    second = bin_histogram(idx2, 4)
    # exactly one update per call, the new counts weighted 1 - m_ghm
    expected = torch.where(second > 0, 0.75 * first + 0.25 * second, first)
    torch.testing.assert_close(crit.bin_counts.value, expected)


def test_ema_weights_use_smoothed_counts():
    crit = GHMCLoss(bins=4, m_ghm=0.5)
    a, la = _batch()
    b, lb = _batch(p=30)
    crit(a, la, torch.zeros(40), 1.0)
    loss = crit(b, lb, torch.zeros(30), 1.0)
    expected = ghmc_loss(b, lb, bins=4, bin_counts=crit.bin_counts.value.clone())
    torch.testing.assert_close(loss, expected)


def test_bin_first_filled_later_is_initialised_not_inflated():
    crit = GHMCLoss(bins=2, m_ghm=0.75)
    crit(torch.full((4, 1), -5.0), torch.ones(4, dtype=torch.long), torch.zeros(4), 1.0)
    assert crit.bin_counts.value.tolist() == [4.0, 0.0]  # bin 1 never seen yet
    crit(torch.zeros(2, 1), torch.ones(2, dtype=torch.long), torch.zeros(2), 1.0)
    assert crit.bin_counts.value.tolist() == [4.0, 2.0]  # not 0.25 * 2


def test_eval_does_not_update_and_state_round_trips():
    crit = GHMCLoss()
    logits, labels = _batch()
    crit(logits, labels, torch.zeros(40), 1.0)
    before = crit.bin_counts.value.clone()
    crit.eval()
    crit(*_batch(p=25), torch.zeros(25), 1.0)
    torch.testing.assert_close(crit.bin_counts.value, before)
    other = GHMCLoss()
    other.load_state_dict(crit.state_dict())
    torch.testing.assert_close(other.bin_counts.value, before)
    assert bool(other.bin_counts.initialized.any())


def test_no_momentum_is_per_batch_ghmc_and_avg_factor_is_ignored():
    crit = GHMCLoss(m_ghm=0.0, loss_weight=2.0)
    for _ in range(2):
        logits, labels = _batch()
        got = crit(logits, labels, torch.rand(40), 123.0)
        torch.testing.assert_close(got, 2.0 * ghmc_loss(logits, labels))


def test_edge_cases_finite(device):
    crit = GHMCLoss().to(device)
    cases = [
        (torch.full((3, 4), 100.0), torch.tensor([4, 4, 4])),  # no positives, saturated
        (torch.full((3, 4), -100.0), torch.tensor([0, 1, 2])),  # confident misses
        (torch.randn(1, 4), torch.tensor([2])),  # a single sample
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),  # nothing at all
    ]
    for logits, labels in cases:
        logits = logits.to(device).requires_grad_()
        loss = crit(logits, labels.to(device), torch.zeros(len(labels), device=device), 1.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_autocast(dtype, device):
    if device.type == "cpu" and dtype == torch.float16:
        pytest.skip("fp16 autocast is a CUDA feature")
    logits, labels = _batch(device=device)
    lin = torch.nn.Linear(5, 5).to(device)
    with torch.autocast(device.type, dtype=dtype):
        out = lin(logits)
        loss = GHMCLoss().to(device)(out, labels, torch.zeros(40, device=device), 1.0)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(lin.weight.grad).all()
    low = ghmc_loss(logits.detach().to(dtype), labels)
    torch.testing.assert_close(low, ghmc_loss(logits.detach(), labels), atol=0.02, rtol=0.02)


def test_bad_inputs_name_the_argument():
    logits, labels = _batch()
    with pytest.raises(ValueError, match="logits"):
        ghmc_loss(logits[0], labels)
    with pytest.raises(ValueError, match="labels"):
        ghmc_loss(logits, labels.float())
    with pytest.raises(ValueError, match="labels"):
        ghmc_loss(logits, labels[:3])
    with pytest.raises(ValueError, match="labels must be in 0..5"):
        ghmc_loss(logits, torch.full((40,), 6))
    with pytest.raises(ValueError, match="reduction"):
        ghmc_loss(logits, labels, reduction="avg")
    with pytest.raises(ValueError, match="bins"):
        ghmc_loss(logits, labels, bins=0)
    with pytest.raises(ValueError, match="m_ghm"):
        GHMCLoss(m_ghm=1.0)
    with pytest.raises(ValueError, match="avg_factor"):
        GHMCLoss()(logits, labels, torch.zeros(40), 0.0)


def test_registry_builds_it():
    crit = build_cls_loss("ghm", bins=10, m_ghm=0.5)
    assert isinstance(crit, GHMCLoss) and crit.bins == 10


# --- two ranks (gloo, CPU) -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_crit(name: str):
    from hcral.losses.hcrac import HCRACLoss

    return GHMCLoss(bins=8, m_ghm=0.5) if name == "ghm" else HCRACLoss(bins=8, m_ghm=0.5)


def _two_batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for p in (24, 20):
        logits = torch.randn(p, 4, generator=g, dtype=torch.float64) * 3
        labels = torch.randint(0, 5, (p,), generator=g)
        ious = torch.rand(p, generator=g, dtype=torch.float64)
        out.append((logits, labels, ious))
    return out


def _rank_worker(rank: int, port: int, name: str, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    crit = _make_crit(name)
    grads = []
    for logits, labels, ious in _two_batches():
        half = len(labels) // 2
        part = slice(rank * half, (rank + 1) * half)
        x = logits[part].clone().requires_grad_()
        crit(x, labels[part], ious[part], 1.0).backward()
        grads.append(x.grad / 2)  # what DDP's gradient averaging would give
    out[rank] = (grads, crit.state_dict())
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ghm", "hcrac"])
def test_two_ranks_equal_one_process_on_the_whole_batch(name):
    out = mp.Manager().dict()
    mp.spawn(_rank_worker, args=(_free_port(), name, out), nprocs=2)
    crit = _make_crit(name)
    for step, (logits, labels, ious) in enumerate(_two_batches()):
        x = logits.clone().requires_grad_()
        crit(x, labels, ious, 1.0).backward()
        half = len(labels) // 2
        for rank in (0, 1):
            torch.testing.assert_close(out[rank][0][step], x.grad[rank * half : (rank + 1) * half])
    for key, value in crit.state_dict().items():
        torch.testing.assert_close(out[0][1][key], value)
