"""fastdrop's functional API: drop-in for torch.nn.functional.dropout."""

from __future__ import annotations

import numpy as np
import torch

from . import _cpu, contract
from ._dispatch import P_DEFAULT, resolve_p, scale_of
from ._masked import check_call_args, masked

def dropout(input, p=P_DEFAULT, training=True, inplace=False, *, keep_prob=None, noise_shape=None, seed=None,
            offset=0, generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.dropout`` with a reproducible, seed-driven mask.

    ``keep_prob`` is the TensorFlow spelling (``1 - p``). ``noise_shape`` (as in
    ``tf.nn.dropout``) draws one keep bit per element of a shape broadcastable to the input,
    shared along its size-1 dims. ``seed``/``offset`` pin the mask (see ``fastdrop.contract``);
    without ``seed`` each call reserves its own from PyTorch's generator of the input's
    device, or from ``generator``.
    """
    p = resolve_p(p, keep_prob)
    if noise_shape is not None:
        from .family import noise_dropout  # the family builds on this module
        return noise_dropout(input, p, noise_shape, training, inplace, seed=seed, offset=offset,
                             generator=generator, backend=backend)
    seed, offset = check_call_args(training, seed, offset, generator, backend)
    if not training or p == 0.0:
        return input
    return masked(input, p, None, inplace, seed, offset, generator, backend, scale=scale_of(p))


def dropout_mask(shape, p, *, seed, offset=0, device="cpu"):
    """The boolean keep mask that ``dropout`` applies with this seed and offset."""
    p = contract.check_p(p)
    shape = torch.Size(shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"dropout_mask(): shape must have no negative dimension, but got {tuple(shape)}")
    seed = contract.check_seed(seed)
    offset = contract.check_offset(offset, shape.numel())
    # Written piece by piece into the output: it costs its own size and no more.
    mask = _cpu.keep_mask(torch.empty(shape, dtype=torch.bool), seed, offset, contract.keep_threshold(p))
    return mask.to(device)


def philox(counter, key, rounds=contract.PHILOX_ROUNDS):
    """Philox4x32 on int64 tensors holding uint32 values: counter (..., 4), key (2,) -> (..., 4)."""
    counter, key = torch.as_tensor(counter), torch.as_tensor(key)
    for name, t, shape_ok in (("counter", counter, counter.dim() >= 1 and counter.shape[-1] == 4),
                              ("key", key, tuple(key.shape) == (2,))):
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"philox(): {name} must be an integer tensor, but got {t.dtype}")
        if not shape_ok:
            want = "(..., 4)" if name == "counter" else "(2,)"
            raise ValueError(f"philox(): {name} must have shape {want}, but got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= contract.UINT32):
            raise ValueError(f"philox(): {name} values must be in [0, 2**32)")
    c = counter.detach().cpu().numpy().astype(np.uint64)
    k0, k1 = (int(v) for v in key.tolist())
    out = contract.philox_numpy(c[..., 0], c[..., 1], c[..., 2], c[..., 3], k0, k1, rounds)
    return torch.from_numpy(np.stack(out, axis=-1).astype(np.int64)).to(counter.device)
