"""The one path every masked variant takes once training is on and p > 0 is settled.

Checks, the seed, then one autograd Function (eager) or one torch.library operator
(compiled graphs). Autograd saves a ``Mask``: what decides the op, nothing per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import _rng, contract, ops
from ._dispatch import BACKENDS, apply_mask, check_input, resolve_backend


@dataclass(frozen=True)
class Mask:
    """Everything that decides a masked op, and nothing per element."""

    p: float
    seed: int | torch.Tensor  # a 1-element device tensor under CUDA-graph capture
    offset: int
    backend: str
    noise_shape: tuple | None  # None: one bit per element
    scale: float
    affine: tuple | None = None  # (add, drop): keep ? x * scale + add : drop

    def apply(self, x, y):
        if self.backend == "meta":  # a shape and no values: nothing to compute
            return y
        return apply_mask(x, y, self.p, self.seed, self.offset, self.backend, noise_shape=self.noise_shape,
                          scale=self.scale, affine=self.affine)


class MaskedDropout(torch.autograd.Function):
    # y = keep ? x * scale (+ add) : (0 or drop). dy/dx = keep * scale: the linear form of the
    # same op, so backward is this Function again on the gradient (and so on, for higher orders).
    @staticmethod
    def forward(ctx, x, mask, inplace):
        y = mask.apply(x, x if inplace else torch.empty_like(x))
        if inplace:
            ctx.mark_dirty(x)
        ctx.mask = mask
        return y

    @staticmethod
    def backward(ctx, grad):
        return MaskedDropout.apply(grad, replace(ctx.mask, affine=None), False), None, None


def check_writable(t):
    # Before writing, as PyTorch does: a refused call leaves the tensor untouched.
    if torch.is_grad_enabled() and t.requires_grad:
        if t.is_leaf:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
        if t._is_view() and t._base.is_leaf:
            raise RuntimeError(
                "a view of a leaf Variable that requires grad is being used in an in-place operation.")
    if torch._debug_has_internal_overlap(t) == 1:
        raise RuntimeError(
            "unsupported operation: more than one element of the written-to tensor refers to a single "
            "memory location. Please clone() the tensor before performing the operation."
        )


def check_call_args(training, seed, offset, generator, backend, name="dropout"):
    """Checks that need no tensor, done before any early return; returns (seed, offset)."""
    if not isinstance(training, (bool, np.bool_)):  # PyTorch's parser refuses None, ints, strings
        raise TypeError(f"{name}(): argument 'training' must be bool, not {type(training).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}(): generator must be a torch.Generator, but got {type(generator).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, but got {backend!r}")
    if seed is None:
        if offset != 0:
            raise ValueError("offset needs an explicit seed")
        return None, 0
    return contract.check_seed(seed), contract.check_offset(offset, 0)


def seed_offset(seed, offset, count, p, device, generator, backend):
    """The (seed, offset) of a call: the given ones, or reserved from the generator."""
    if seed is not None:
        return seed, contract.check_offset(offset, count)
    # p == 1 and meta tensors draw nothing: no stream bit decides anything there.
    if p == 1.0 or backend == "meta":
        return 0, 0
    return _rng.reserve(count, device, generator)


def masked(input, p, noise_shape, inplace, seed, offset, generator, backend, *, scale, affine=None,
           name="dropout"):
    """keep ? x * scale (+ add) : (0 or drop), keep bits from the contract (per noise element)."""
    check_input(input, name)
    if input.numel() == 0:
        return input
    backend = resolve_backend(backend, input.device)
    count = input.numel() if noise_shape is None else math.prod(noise_shape)
    if torch.compiler.is_compiling():
        if generator is not None:
            raise ValueError("generator= is not supported under torch.compile: seed with torch.manual_seed")
        if seed is not None:
            contract.check_offset(offset, count)
        return ops.traced_dropout(input, p, inplace, seed, offset, backend, noise_shape, scale, affine)
    if inplace:
        check_writable(input)
    seed, offset = seed_offset(seed, offset, count, p, input.device, generator, backend)
    mask = Mask(p, seed, offset, backend, noise_shape, scale, affine)
    if torch.is_grad_enabled() and input.requires_grad:
        return MaskedDropout.apply(input, mask, inplace)
    y = mask.apply(input, input if inplace else torch.empty_like(input))
    if inplace and not input.is_inference():  # written outside autograd: tell it, as in-place ops do
        torch.autograd.graph.increment_version(input)
    return y
