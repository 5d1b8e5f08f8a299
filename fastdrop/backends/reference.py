"""The reference backend: the mask contract in torch ops (``fastdrop.contract.keep_bits``), on any
device, the same bits and arithmetic as the native and Triton paths. It runs where fastdrop's C++
operators cannot be built (no compiler, not Linux), and compiled graphs trace it there; it is
correct and slower, with full-size temporaries. The tests hold the other backends to it."""

from __future__ import annotations

import torch

from .. import contract

HALF_TYPES = (torch.float16, torch.bfloat16)


def _scaled(xs, scale):
    # x * scale in the kernels' arithmetic: float32 for 16-bit types (as PyTorch does).
    if xs.dtype in HALF_TYPES:
        return xs.float().mul_(scale)
    return xs * torch.tensor(scale, dtype=xs.dtype, device=xs.device)


def transform(xs, keep, scale, affine):
    """keep ? x * scale : 0, or with affine=(add, drop): keep ? x * scale + add : drop.

    The affine form rounds as PyTorch's alpha dropout, x.mul(noise).add_(b): x * scale is
    rounded to x's dtype before the add. ``keep`` broadcasts to ``xs``.
    """
    vals = _scaled(xs, scale)
    if affine is None:
        # masked_fill, not a multiply by 0: dropped inf/NaN become 0.
        return vals.masked_fill_(~keep, 0)
    add, drop = affine
    if xs.dtype in HALF_TYPES:
        vals = vals.to(xs.dtype).float()
    return vals.add_(add).masked_fill_(~keep, drop)


def _keep(plan, shape, device):
    n = 1
    for s in shape:
        n *= s
    return contract.keep_bits(plan.seed, plan.offset, n, plan.threshold, device).view(shape)


def run(x, plan):
    if x.device.type == "meta":
        return x if plan.inplace else torch.empty_like(x)
    shape = tuple(x.shape) if plan.noise_shape is None else tuple(plan.noise_shape)
    y = transform(x, _keep(plan, shape, x.device), plan.scale, plan.affine)
    if plan.inplace:
        return x.copy_(y)
    return torch.empty_like(x).copy_(y)  # x's layout, as the other backends give


def dropout_add(x, bias, residual, plan):
    """residual + dropout(x + bias), with one rounding, through torch ops."""
    if x.device.type == "meta":
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    keep = _keep(plan, tuple(x.shape), x.device)
    vals = x.to(compute, copy=True)
    if bias is not None:
        vals = vals.add_(bias.to(compute))
    vals = vals.mul_(torch.tensor(plan.scale, dtype=compute, device=x.device)).masked_fill_(~keep, 0)
    return vals.add_(residual.to(compute)).to(x.dtype).contiguous()


def keep_mask(shape, p, seed, offset):
    n = 1
    for s in shape:
        n *= s
    return contract.keep_bits(seed, offset, n, contract.keep_threshold(p)).view(tuple(shape))
