"""Deformable conv: the grid_sample path against torchvision's kernel, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops
from torch.autograd import gradcheck

from hcral.models.deform import DeformConv2d, deform_conv2d, deform_conv2d_sampled

# Both entry points: the dispatcher (torchvision on CUDA, sampled elsewhere) and the sampled
# path forced, so that on a CUDA machine grid_sample is checked against torchvision too.
FUNCTIONS = [deform_conv2d, deform_conv2d_sampled]


def _inputs(
    device,
    n=2,
    c=4,
    hw=(7, 9),
    o=5,
    k=(3, 3),
    stride=1,
    padding=1,
    dilation=1,
    groups=1,
    offset_groups=1,
    offset_scale=3.0,
    mask=False,
    dtype=torch.float32,
):
    """Random arguments for one call; offsets ``offset_scale · N(0, 1)`` pixels."""
    (h, w), (kh, kw) = hw, k
    ho = (h + 2 * padding - (dilation * (kh - 1) + 1)) // stride + 1
    wo = (w + 2 * padding - (dilation * (kw - 1) + 1)) // stride + 1

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=dtype) * scale).to(device).requires_grad_()

    args = {
        "input": rand(n, c, h, w),
        "offset": rand(n, 2 * offset_groups * kh * kw, ho, wo, scale=offset_scale),
        "weight": rand(o, c // groups, kh, kw),
        "bias": rand(o),
        "mask": rand(n, offset_groups * kh * kw, ho, wo) if mask else None,
    }
    return args, {"stride": stride, "padding": padding, "dilation": dilation}


def _value_and_grads(fn, args, conv):
    out = fn(args["input"], args["offset"], args["weight"], args["bias"], mask=args["mask"], **conv)
    leaves = [t for t in args.values() if t is not None]
    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    return [out, *torch.autograd.grad(out, leaves, upstream)]


def _assert_matches_torchvision(fn, args, conv, tol=1e-5):
    ours = _value_and_grads(fn, args, conv)
    ref = _value_and_grads(torchvision.ops.deform_conv2d, args, conv)
    names = ["output"] + [k for k, v in args.items() if v is not None]
    for name, a, b in zip(names, ours, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize(
    "case",
    [
        {"n": 1, "hw": (8, 8)},
        {"n": 3, "hw": (5, 11)},
        {"n": 2, "hw": (1, 1)},  # a 1×1 map: bilinear sampling needs the zero padding
        {"n": 1, "hw": (2, 3), "c": 3, "o": 2},
        {"n": 2, "hw": (9, 6), "stride": 2, "padding": 2, "dilation": 2},
        {"n": 1, "hw": (6, 7), "k": (2, 3), "padding": 0},
        # offsets far beyond the borders: most samples read (partly) zeros
        {"n": 3, "hw": (4, 5), "offset_scale": 8.0},
    ],
)
def test_values_and_gradients_match_torchvision(fn, case, device):
    args, conv = _inputs(device, **case)
    _assert_matches_torchvision(fn, args, conv)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_groups_offset_groups_and_mask_match_torchvision(fn, device):
    args, conv = _inputs(device, n=2, c=6, o=4, groups=2, offset_groups=3, mask=True)
    _assert_matches_torchvision(fn, args, conv)


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hw", [(7, 13), (8, 8), (1, 2)])
def test_integer_offsets_match_torchvision_exactly(fn, dtype, hw, device):
    # Integer points are kinks of bilinear sampling: the offset gradient there is
    # torchvision's one-sided (floor) derivative only if grid_sample's un-normalised
    # coordinate is the exact integer, i.e. when the coordinate round trip is exact.
    args, conv = _inputs(device, n=2, hw=hw, dtype=dtype)
    with torch.no_grad():
        args["offset"].copy_(torch.randint_like(args["offset"], -4, 5))
        args["offset"][:, :2] = -1.0  # kernel point 0 lands on rows/cols -2: outside
        args["offset"][:, 16:] = 1.0  # point 8 on rows/cols +2, at or past the far border
    _assert_matches_torchvision(fn, args, conv, tol=1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_offsets_exactly_on_the_border_rows_match_torchvision(fn, device):
    # Samples at h = -1 and h = H (w likewise) sit where torchvision's early "return 0"
    # and grid_sample's per-corner zero padding must agree, for values and gradients.
    h, w = 5, 6
    args, conv = _inputs(device, n=1, hw=(h, w), padding=0, k=(1, 1), dtype=torch.float64)
    f64 = {"dtype": torch.float64}
    rows = torch.tensor([-1.0, h, -0.5, h - 0.5, 2.25], **f64)  # one target row per output row
    cols = torch.tensor([-1.0, w, -0.25, w - 0.75, 1.5, 0.0], **f64)
    dy = rows[:, None] - torch.arange(h, **f64)[:, None]  # 1×1 kernel: p0 is the cell itself
    dx = cols[None, :] - torch.arange(w, **f64)[None, :]
    with torch.no_grad():
        args["offset"].copy_(torch.stack(torch.broadcast_tensors(dy, dx))[None])
    _assert_matches_torchvision(fn, args, conv, tol=1e-12)


def test_gradcheck_float64():
    args, conv = _inputs("cpu", n=2, c=2, hw=(3, 4), o=2, mask=True, dtype=torch.float64)
    leaves = tuple(args.values())

    def fn(x, offset, weight, bias, mask):
        return deform_conv2d_sampled(x, offset, weight, bias, mask=mask, **conv)

    assert gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


def test_module_is_torchvisions_with_the_fast_path(device):
    torch.manual_seed(0)
    ours = DeformConv2d(4, 6, 3, padding=1, bias=False).to(device)
    ref = torchvision.ops.DeformConv2d(4, 6, 3, padding=1, bias=False).to(device)
    assert isinstance(ours, torchvision.ops.DeformConv2d)
    ref.load_state_dict(ours.state_dict())  # same parameters, same names
    x = torch.randn(2, 4, 6, 5, device=device)
    offset = torch.randn(2, 18, 6, 5, device=device) * 2
    torch.testing.assert_close(ours(x, offset), ref(x, offset), rtol=1e-5, atol=1e-5)


def test_low_precision_inputs_are_computed_in_float32(device):
    args, conv = _inputs(device, n=1, hw=(6, 6))
    low = {k: v.detach().bfloat16() for k, v in args.items() if v is not None}
    out = deform_conv2d_sampled(low["input"], low["offset"], low["weight"], low["bias"], **conv)
    full = {k: v.float() for k, v in low.items()}
    expected = deform_conv2d_sampled(
        full["input"], full["offset"], full["weight"], full["bias"], **conv
    )
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected.bfloat16(), rtol=0, atol=0)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = deform_conv2d_sampled(args["input"], args["offset"], args["weight"], **conv)
    assert out.dtype == torch.float32  # autocast does not reach into the sampling


def test_bad_shapes_raise_value_error():
    args, conv = _inputs("cpu", n=2, hw=(5, 5))
    x, offset, weight = args["input"], args["offset"], args["weight"]
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d_sampled(x, offset[:, :17], weight, **conv)
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d_sampled(x, offset[..., :4], weight, **conv)
    with pytest.raises(ValueError, match="mask"):
        deform_conv2d_sampled(x, offset, weight, mask=torch.ones(2, 8, 5, 5), **conv)
    with pytest.raises(ValueError, match="weight"):
        deform_conv2d_sampled(x, offset, weight[:, :3], **conv)
    with pytest.raises(ValueError, match="4-D"):
        deform_conv2d_sampled(x[0], offset, weight, **conv)


def test_star_dcn_head_matches_torchvision_kernel(monkeypatch):
    from hcral.models.heads import DenseHead

    head = DenseHead(8, 3, num_levels=2, num_convs=1, ltrb=True, star_dcn=True, bbox_refine=True)
    features = [torch.randn(2, 8, 6, 6), torch.randn(2, 8, 3, 3)]

    def run():
        head.zero_grad()
        out = head(features)
        sum((t * t).sum() for t in out.cls_logits + out.box_reg).backward()
        return [*out.cls_logits, *out.box_reg] + [p.grad.clone() for p in head.parameters()]

    ours = run()
    monkeypatch.setattr("hcral.models.deform.deform_conv2d", torchvision.ops.deform_conv2d)
    for a, b in zip(ours, run(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
