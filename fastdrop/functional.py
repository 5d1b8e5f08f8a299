"""fastdrop's functional API: drop-in for torch.nn.functional.dropout."""

from __future__ import annotations

import numpy as np
import torch

from . import _jit, _rng, contract, ops
from ._dispatch import BACKENDS, P_DEFAULT, apply_mask, check_input, resolve_backend, resolve_p

def _masked(x, y, p, seed, offset, backend):
    # A meta tensor has a shape and no values: nothing to compute.
    return y if backend == "meta" else apply_mask(x, y, p, seed, offset, backend)


class _Dropout(torch.autograd.Function):
    # Saves (p, seed, offset): zero bytes per element. Backward is the same op on the gradient.
    @staticmethod
    def forward(ctx, x, p, seed, offset, inplace, backend):
        y = _masked(x, x if inplace else torch.empty_like(x), p, seed, offset, backend)
        if inplace:
            ctx.mark_dirty(x)
        ctx.args = (p, seed, offset, backend)
        return y

    @staticmethod
    def backward(ctx, grad):
        return (_Dropout.apply(grad, *ctx.args[:3], False, ctx.args[3]),) + (None,) * 5


def _check_writable(t):
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
    if not isinstance(training, (bool, np.bool_)):  # PyTorch's parser refuses None, ints, strings
        raise TypeError(f"dropout(): argument 'training' must be bool, not {type(training).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"dropout(): generator must be a torch.Generator, but got {type(generator).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, but got {backend!r}")
    if seed is not None:
        seed = contract.check_seed(seed)
        offset = contract.check_offset(offset, 0)
    elif offset != 0:
        raise ValueError("offset needs an explicit seed")
    if not training or p == 0.0:
        return input
    check_input(input)
    if input.numel() == 0:
        return input
    backend = resolve_backend(backend, input.device)
    if seed is not None:
        contract.check_offset(offset, input.numel())
    if torch.compiler.is_compiling():
        return ops.traced_dropout(input, p, inplace, seed, offset, backend)
    if inplace:
        _check_writable(input)
    if seed is None:
        # p == 1 and meta tensors draw nothing: no stream bit decides anything there.
        draws = p < 1.0 and backend != "meta"
        seed, offset = _rng.reserve(input.numel(), input.device, generator) if draws else (0, 0)
    if torch.is_grad_enabled() and input.requires_grad:
        return _Dropout.apply(input, p, seed, offset, inplace, backend)
    return _masked(input, input if inplace else torch.empty_like(input), p, seed, offset, backend)


def dropout_mask(shape, p, *, seed, offset=0, device="cpu"):
    """The boolean keep mask that ``dropout`` applies with this seed and offset."""
    p = contract.check_p(p)
    shape = torch.Size(shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"dropout_mask(): shape must have no negative dimension, but got {tuple(shape)}")
    seed = contract.check_seed(seed)
    offset = contract.check_offset(offset, shape.numel())
    bits = _jit.keep_bits(seed, offset, shape.numel(), contract.keep_threshold(p))
    return torch.from_numpy(bits).reshape(shape).to(device)


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
