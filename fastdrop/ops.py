"""fastdrop as a torch.library operator: the form compiled graphs, jit.trace and jit.script record.

The seed travels as a 1-element int64 tensor (its bits reinterpreted as signed) on the
input's device, so a compiled graph or a trace draws it at run time from PyTorch's generator
instead of baking it in. Eager calls skip this layer: an autograd.Function is cheaper to
dispatch. A saved trace or script needs ``import fastdrop`` before ``torch.jit.load``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from . import _rng, contract
from ._args import broadcast_noise, noise_count, scale_of
from .backends import resolve

@torch.library.custom_op("fastdrop::dropout", mutates_args=())
def dropout_op(x: torch.Tensor, p: float, seed: torch.Tensor, offset: int, backend: str,
               noise_shape: Optional[list[int]], scale: float, affine: Optional[list[float]]) -> torch.Tensor:
    """keep ? x * scale (+ add) : (0 or drop) by the mask contract; ``offset`` holds signed bits.

    ``backend`` is resolved here, on the tensor that arrives: a trace made on one device runs
    on another.
    """
    if noise_shape is not None:  # -1: the input's size (a trace follows the input's shape)
        noise_shape = tuple(broadcast_noise(list(noise_shape), list(x.shape)))
    offset = contract.check_offset(offset % contract.UINT64, noise_count(noise_shape, x.numel()))
    # A seed on the GPU stays there (the kernel reads it): no host sync, and CUDA graphs work.
    key = int(seed.item()) % contract.UINT64 if seed.device.type == "cpu" else seed
    return resolve(backend, x.device).apply(x, torch.empty_like(x), key, offset, contract.keep_threshold(p), scale,
                                            noise_shape=noise_shape, affine=None if affine is None else tuple(affine))


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
    """The compiled-graph, jit.trace and TorchDispatchMode path: the seed is a graph value,
    not a constant."""
    if seed is None:
        # Traced as a random op of the graph, so each run draws anew and torch.manual_seed
        # reproduces it.
        seed_t = _rng.graph_seed(x.device, torch.compiler.is_compiling())
    else:
        seed_t = torch.tensor([contract.signed64(seed)], dtype=torch.int64, device=x.device)
    if noise_shape is not None:
        # Under jit.trace, sizes taken from the input are tensors: they follow the input's shape.
        noise_shape = [-1 if isinstance(s, torch.Tensor) else s for s in noise_shape]
    y = dropout_op(x, p, seed_t, contract.signed64(offset), backend, noise_shape, scale,
                   None if affine is None else list(affine))
    return x.copy_(y) if inplace else y


# ---- TorchScript: what the modules' forward runs under torch.jit.script ------------------------

def not_scriptable(fn):
    """Mark a functional form: torch.jit.script of it (or of code calling it) says what to do."""
    fn.__script_unsupported = (
        f"fastdrop.{fn.__name__} takes keyword-only arguments, which TorchScript cannot compile. Script "
        f"fastdrop's modules (their forward runs the fastdrop::dropout operator), or use torch.compile or "
        f"torch.export for the functional API.")
    return fn

def alpha_constants(p: float, dtype: torch.dtype) -> Tuple[float, float, float]:
    """(a, b_kept, b_dropped) in ``dtype``, rounded exactly as ATen's alpha dropout rounds them.

    ATen: ``b = noise.add(-1).mul_(alpha * a).add_(alpha * a * p); noise.mul_(a)`` on the 0/1
    noise, then ``y = x.mul(noise).add_(b)``. Running the same ops on a 0/1 tensor of the
    input's dtype gives the very constants its noise holds.
    """
    alpha = 1.7580993408473766  # -alpha' in ATen: SELU's negative saturation value is -lambda * alpha
    a = 1.0 / math.sqrt((alpha * alpha * p + 1) * (1 - p))
    noise = torch.tensor([0.0, 1.0], dtype=dtype)
    b = noise.add(-1).mul_(alpha * a).add_(alpha * a * p)
    noise.mul_(a)
    return float(noise[1]), float(b[1]), float(b[0])


def scripted(x: torch.Tensor, p: float, training: bool, inplace: bool, kind: str, scale_by_keep: bool = True,
             noise_shape: Optional[List[Optional[int]]] = None) -> torch.Tensor:
    """A fastdrop module's forward in TorchScript: the operator, a seed drawn per run.

    ``kind``: "dropout" (with ``noise_shape``: NoiseDropout), "dropout1d/2d/3d" (one bit per
    (N, C); unbatched inputs one per C), "alpha", "feature_alpha", "drop_path", "batch" (one
    bit for the whole input). The module checked p when it was built.
    """
    if not training or p == 0.0 or x.numel() == 0:
        return x
    noise: Optional[List[int]] = None
    if noise_shape is not None:
        noise = broadcast_noise(noise_shape, x.shape)
    scale = scale_of(p)
    affine: Optional[List[float]] = None
    if kind == "batch":  # torchvision's StochasticDepth(mode="batch"): one bit for the whole input
        noise = [1] * x.dim()
    elif kind == "drop_path":
        noise = [x.shape[0]] + [1] * (x.dim() - 1)
        if not scale_by_keep:
            scale = 1.0
    elif kind.startswith("feature") or kind.startswith("dropout") and kind != "dropout":
        # dropout1d/2d/3d: (N, C, ...) or unbatched (C, ...), as the eager functions decide
        batched = not ((kind == "dropout1d" and x.dim() == 2) or (kind == "dropout3d" and x.dim() == 4))
        if x.dim() < 2 and p < 1.0:
            raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
        if x.dim() >= 2:
            if batched:
                noise = [x.shape[0], x.shape[1]] + [1] * (x.dim() - 2)
            else:
                noise = [x.shape[0]] + [1] * (x.dim() - 1)
    if kind.endswith("alpha") and p < 1.0:
        a, add, drop = alpha_constants(p, x.dtype)
        scale = a
        affine = [add, drop]
    y = torch.ops.fastdrop.dropout(x, p, _rng.scripted_seed(x.device), 0, "auto", noise, scale, affine)
    if inplace:
        return x.copy_(y)
    return y
