"""fastdrop as a torch.library operator, the form torch.compile traces without graph breaks.

The seed travels as a 1-element int64 tensor (its bits reinterpreted as signed) on the
input's device, so a compiled graph draws it at run time from PyTorch's generator instead
of baking it in. Eager calls skip this layer: an autograd.Function is cheaper to dispatch.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import contract
from ._dispatch import apply_mask


@torch.library.custom_op("fastdrop::dropout", mutates_args=())
def dropout_op(x: torch.Tensor, p: float, seed: torch.Tensor, offset: int, backend: str,
               noise_shape: Optional[list[int]], scale: float, affine: Optional[list[float]]) -> torch.Tensor:
    """keep ? x * scale (+ add) : (0 or drop) by the mask contract; ``offset`` holds signed bits."""
    # A seed on the GPU stays there (the kernel reads it): no host sync, and CUDA graphs work.
    key = int(seed.item()) % contract.UINT64 if seed.device.type == "cpu" else seed
    return apply_mask(x, torch.empty_like(x), p, key, offset % contract.UINT64, backend,
                      noise_shape=None if noise_shape is None else tuple(noise_shape), scale=scale,
                      affine=None if affine is None else tuple(affine))


@dropout_op.register_fake
def _(x, p, seed, offset, backend, noise_shape, scale, affine):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    _, ctx.p, seed, ctx.offset, ctx.backend, ctx.noise_shape, ctx.scale, _ = inputs
    ctx.save_for_backward(seed)  # 8 bytes, nothing per element


def _backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    gx = dropout_op(grad, ctx.p, seed, ctx.offset, ctx.backend, ctx.noise_shape, ctx.scale, None)
    return gx, None, None, None, None, None, None, None


dropout_op.register_autograd(_backward, setup_context=_setup_context)


def traced_dropout(x, p, inplace, seed, offset, backend, noise_shape, scale, affine):
    """The compiled-graph path: the seed is a graph value, not a constant."""
    if seed is None:
        # Traced as a random op of the graph, so each run draws anew and torch.manual_seed
        # reproduces it. 62 bits keep the bound inside every backend's randint.
        seed_t = torch.randint(0, 1 << 62, (1,), dtype=torch.int64, device=x.device)
    else:
        seed_t = torch.tensor([contract.signed64(seed)], dtype=torch.int64, device=x.device)
    y = dropout_op(x, p, seed_t, contract.signed64(offset), backend,
                   None if noise_shape is None else list(noise_shape), scale,
                   None if affine is None else list(affine))
    return x.copy_(y) if inplace else y
