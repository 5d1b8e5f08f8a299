"""fastdrop as torch.library operators, the form torch.compile traces without graph breaks.

The seed travels as a 1-element int64 tensor (its bits reinterpreted as signed) on the
input's device, so a compiled graph draws it at run time from PyTorch's generator instead
of baking it in.
Eager calls skip this layer: an autograd.Function is cheaper to dispatch.
"""

from __future__ import annotations

import torch

from . import contract
from ._dispatch import apply_mask


def _unsigned(v: int) -> int:
    return v + contract.UINT64 if v < 0 else v


@torch.library.custom_op("fastdrop::dropout", mutates_args=())
def dropout_op(x: torch.Tensor, p: float, seed: torch.Tensor, offset: int, backend: str) -> torch.Tensor:
    """y = dropout(x) by the mask contract; ``seed`` is a 1-element int64 tensor (signed bits)."""
    # A seed on the GPU stays there (the kernel reads it), so no host sync and CUDA graphs work.
    key = _unsigned(int(seed.item())) if seed.device.type == "cpu" else seed
    return apply_mask(x, torch.empty_like(x), p, key, offset, backend)


@dropout_op.register_fake
def _(x, p, seed, offset, backend):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    _, ctx.p, seed, ctx.offset, ctx.backend = inputs
    ctx.save_for_backward(seed)  # 8 bytes, nothing per element


def _backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    return dropout_op(grad, ctx.p, seed, ctx.offset, ctx.backend), None, None, None, None


dropout_op.register_autograd(_backward, setup_context=_setup_context)


def traced_dropout(x: torch.Tensor, p: float, inplace: bool, seed, offset: int, backend: str):
    """The compiled-graph path of fastdrop.dropout: the seed is a graph value, not a constant."""
    if seed is None:
        # Traced as a random op of the graph, so each run draws anew and torch.manual_seed
        # reproduces it. 62 bits keep the bound inside every backend's randint.
        seed_t = torch.randint(0, 1 << 62, (1,), dtype=torch.int64, device=x.device)
    else:
        signed = seed - contract.UINT64 if seed >= 1 << 63 else seed
        seed_t = torch.tensor([signed], dtype=torch.int64, device=x.device)
    y = dropout_op(x, p, seed_t, offset, backend)
    return x.copy_(y) if inplace else y
