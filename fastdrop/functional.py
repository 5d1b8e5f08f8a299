"""fastdrop's functional API: drop-in for torch.nn.functional.dropout."""

from __future__ import annotations

import numpy as np
import torch

from . import _rng, contract, ops
from ._dispatch import P_DEFAULT, apply_mask, check_input, resolve_backend, resolve_p

class _Dropout(torch.autograd.Function):
    # Saves (p, seed, offset): zero bytes per element. Backward is the same op on the gradient.
    @staticmethod
    def forward(ctx, x, p, seed, offset, inplace, backend):
        y = x if inplace else torch.empty_like(x)
        apply_mask(x, y, p, seed, offset, backend)
        if inplace:
            ctx.mark_dirty(x)
        ctx.args = (p, seed, offset, backend)
        return y

    @staticmethod
    def backward(ctx, grad):
        return (_Dropout.apply(grad, *ctx.args[:3], False, ctx.args[3]),) + (None,) * 5


def dropout(input, p=P_DEFAULT, training=True, inplace=False, *, keep_prob=None, seed=None, offset=0,
            generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.dropout`` with a reproducible, seed-driven mask.

    ``keep_prob`` is the TensorFlow spelling (``1 - p``). ``seed``/``offset`` pin the mask
    (see ``fastdrop.contract``); without ``seed`` each call reserves its own from PyTorch's
    generator of the input's device, or from ``generator``.
    """
    p = resolve_p(p, keep_prob)
    if not training or p == 0.0:
        return input
    check_input(input)
    if input.numel() == 0:
        return input
    backend = resolve_backend(backend, input.device)
    if seed is not None:
        seed = contract.check_seed(seed)
        offset = contract.check_offset(offset, input.numel())
    elif offset != 0:
        raise ValueError("offset needs an explicit seed")
    if torch.compiler.is_compiling():
        return ops.traced_dropout(input, p, inplace, seed, offset, backend)
    if inplace and torch._debug_has_internal_overlap(input) == 1:
        raise RuntimeError(
            "unsupported operation: more than one element of the written-to tensor refers to a single "
            "memory location. Please clone() the tensor before performing the operation."
        )
    if seed is None:
        if input.is_cuda and torch.cuda.is_current_stream_capturing():
            # Host integers would be baked into the graph: every replay the same mask.
            raise RuntimeError(
                "fastdrop.dropout without an explicit seed cannot be captured in a CUDA graph yet: "
                "pass seed= (a fixed mask on every replay) or run it outside the capture"
            )
        # p == 1 draws nothing: every element is dropped whatever the stream says.
        seed, offset = (0, 0) if p == 1.0 else _rng.reserve(input.numel(), input.device, generator)
    if backend == "meta":
        return input if inplace else torch.empty_like(input)
    return _Dropout.apply(input, p, seed, offset, inplace, backend)


def dropout_mask(shape, p, *, seed, offset=0, device="cpu"):
    """The boolean keep mask that ``dropout`` applies with this seed and offset."""
    p = contract.check_p(p)
    shape = torch.Size(shape)
    seed = contract.check_seed(seed)
    offset = contract.check_offset(offset, shape.numel())
    bits = contract.keep_bits(seed, offset, shape.numel(), contract.keep_threshold(p))
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
