"""The dropout family as one table: which dims a variant's mask is shared along, how its kept
elements are scaled, and alpha dropout's constants.

Every variant draws its keep bits from ``fastdrop.contract`` and runs the one operator,
``fastdrop::dropout``: what differs is the mask's shape (one bit per element, or one shared
along some dims: the noise shape is the input's shape with 1 on those dims) and what a kept or
dropped element becomes. Eager calls (``fastdrop.functional``), the modules' forward under
``torch.jit.script`` (TorchScript compiles the functions here) and ``fastdrop.patch()`` all
read this table.

- ``DROPOUT``: one bit per element (with ``noise_shape``, shared along its size-1 dims).
- ``DROPOUT1D/2D/3D``: one bit per (sample, channel) of (N, C, ...); unbatched inputs
  ((C, L) for dropout1d, (C, D, H, W) for dropout3d) one per channel.
- ``ALPHA`` / ``FEATURE_ALPHA``: dropped elements take SELU's saturation value, with
  PyTorch's affine correction, per element or per (sample, channel).
- ``DROP_PATH``: one bit per sample (stochastic depth), optionally unscaled.
- ``BATCH``: one bit for the whole input (torchvision's ``StochasticDepth(mode="batch")``).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

# Each variant by the name of its function (what its errors name). TorchScript takes no global
# constants, so the functions below spell them out.
DROPOUT, DROPOUT1D, DROPOUT2D, DROPOUT3D = "dropout", "dropout1d", "dropout2d", "dropout3d"
ALPHA, FEATURE_ALPHA, DROP_PATH, BATCH = "alpha_dropout", "feature_alpha_dropout", "drop_path", "stochastic_depth"
KINDS = (DROPOUT, DROPOUT1D, DROPOUT2D, DROPOUT3D, ALPHA, FEATURE_ALPHA, DROP_PATH, BATCH)


def shared_dims(kind: str, dim: int, p: float) -> Optional[List[int]]:
    """The dims along which a variant's keep bit is shared, for an input of ``dim`` dims; None:
    one bit per element. Channel variants need 2 dims (PyTorch's error), but at p == 1, where
    no bit decides anything."""
    if kind == "dropout" or kind == "alpha_dropout":
        return None
    if kind == "drop_path":
        return list(range(1, dim))
    if kind == "stochastic_depth":
        return list(range(dim))
    # dropout1d takes (C, L) unbatched, dropout3d every rank but 5 (as PyTorch's): a leading
    # batch dim of 1 is implied, so their channel is dim 0.
    unbatched = (kind == "dropout1d" and dim == 2) or (kind == "dropout3d" and dim != 5)
    if dim + (1 if unbatched else 0) < 2:
        if p < 1.0:
            raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")  # PyTorch's text
        return None
    return list(range(1 if unbatched else 2, dim))


def scale_of(p: float, kind: str = "dropout", scale_by_keep: bool = True) -> float:
    """What kept elements are multiplied by: 1 / (1 - p) (0 at p == 1), or 1 for drop path
    without ``scale_by_keep``. Alpha forms take ``alpha_constants``' instead."""
    if kind == "drop_path" and not scale_by_keep:
        return 1.0
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def alpha_constants(p: float, dtype: torch.dtype) -> Tuple[float, float, float]:
    """(a, b_kept, b_dropped) in ``dtype``, rounded exactly as ATen's alpha dropout rounds them:
    kept elements become ``round(x * a) + b_kept``, dropped ones ``b_dropped``.

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


_alpha_cache: dict = {}


def assume_constant_result(fn):
    """torch._dynamo.assume_constant_result: torch.compile calls ``fn`` while it traces and takes the
    result as a constant of the graph. It sets this one attribute (tests/test_import.py holds the
    two equal); calling it would import torch._dynamo (about 1 s) at fastdrop's import."""
    fn._dynamo_marked_constant = True
    return fn


@assume_constant_result  # depends on (p, dtype) only: a constant of a compiled graph
def alpha_form(p: float, dtype: torch.dtype) -> Tuple[float, List[float]]:
    """(scale, [add, drop]) of the alpha forms, for eager calls: computed once per (p, dtype),
    on real tensors whatever mode records the call (fake tensors under torch.export, for one)."""
    got = _alpha_cache.get((p, dtype))
    if got is None:
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes(), torch._C._DisableFuncTorch(), torch.no_grad():
            a, add, drop = alpha_constants(p, dtype)
        got = _alpha_cache[(p, dtype)] = (a, [add, drop])
    return got
