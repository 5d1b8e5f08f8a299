"""The native backend: fastdrop's C++ operators (``fastdrop/csrc``, loaded by ``fastdrop._library``),
called below autograd with a plan's explicit seed (the Python ``DropoutFunction`` records the
autograd)."""

from __future__ import annotations

import torch

from .. import _library
from ..contract import signed64


def _seed(plan):
    """(int seed bits, seed tensor): one of them."""
    if isinstance(plan.seed, torch.Tensor):
        return None, plan.seed
    return signed64(plan.seed), None


def run(x, plan):
    ops = _library.ops
    seed, seed_tensor = _seed(plan)
    fn = ops.dropout_ if plan.inplace else ops.dropout
    affine = None if plan.affine is None else list(plan.affine)
    return fn(x, plan.p, plan.shared, plan.scale, affine, seed, signed64(plan.offset), None, seed_tensor)


def dropout_add(x, bias, residual, plan):
    seed, seed_tensor = _seed(plan)
    return _library.ops.dropout_add(x, bias, residual, plan.p, seed, signed64(plan.offset), None, seed_tensor)


def keep_mask(shape, p, seed, offset):
    return _library.ops.keep_mask(list(shape), p, signed64(seed), signed64(offset))
