"""fastdrop's functional API: drop-in for torch.nn.functional.dropout."""

from __future__ import annotations

import os
import struct

import numpy as np
import torch

from . import _cpu, _rng, contract

try:  # the kernels need triton; the CPU path does not
    from .kernels import dropout as _kernels
except ImportError:  # pragma: no cover - exercised by a subprocess test
    _kernels = None

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "triton", "cpu")


class _DefaultP(float):
    """The default p (0.5), told apart from an explicit p=0.5 so keep_prob can conflict."""

    def __repr__(self):
        return "0.5"


_P_DEFAULT = _DefaultP(0.5)


def resolve_p(p, keep_prob) -> float:
    if keep_prob is None:
        return contract.check_p(p)
    if p is not _P_DEFAULT:
        raise ValueError(f"give p or keep_prob, not both (got p={p}, keep_prob={keep_prob})")
    if isinstance(keep_prob, bool) or not isinstance(keep_prob, (int, float)) or not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f"keep_prob has to be between 0 and 1, but got {keep_prob}")
    return 1.0 - float(keep_prob)


def _check_input(input, name="dropout"):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}(): input must be a Tensor, but got {type(input).__name__}")
    if input.layout != torch.strided:
        raise TypeError(f"{name}(): input must be a dense (strided) tensor, but got layout {input.layout}")
    if input.dtype not in FLOAT_DTYPES:
        accepted = ", ".join(str(d) for d in FLOAT_DTYPES)
        raise TypeError(f"{name}(): expected a floating-point input ({accepted}), but got {input.dtype}")


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, but got {backend!r}")
    if device.type == "meta":
        return "meta"
    if backend == "auto":
        backend = "cpu" if device.type == "cpu" else "triton"
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' needs a CPU tensor, but the input is on {device}")
    if backend == "triton":
        if _kernels is None:
            raise RuntimeError("backend='triton' needs triton, which is not importable here")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                "backend='triton' on a CPU tensor runs only under TRITON_INTERPRET=1 "
                "(set before triton is imported); use backend='cpu' or 'auto'"
            )
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"fastdrop runs on cpu and cuda tensors, but the input is on {device}")
    return backend


def _scale(p: float) -> float:
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def apply_mask(x, y, p, seed, offset, backend):
    """y = x * keep * 1/(1-p) by the mask contract (x and y may be the same tensor)."""
    threshold = contract.keep_threshold(p)
    if backend == "cpu":
        _cpu.apply(x, y, seed, offset, threshold, _scale(p))
    elif backend == "triton":
        scale_bits = struct.unpack("<q", struct.pack("<d", _scale(p)))[0]
        _kernels.launch(x, y, seed, offset, threshold, scale_bits)
    return y


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


def dropout(input, p=_P_DEFAULT, training=True, inplace=False, *, keep_prob=None, seed=None, offset=0,
            generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.dropout`` with a reproducible, seed-driven mask.

    ``keep_prob`` is the TensorFlow spelling (``1 - p``). ``seed``/``offset`` pin the mask
    (see ``fastdrop.contract``); without ``seed`` each call reserves its own from PyTorch's
    generator of the input's device, or from ``generator``.
    """
    p = resolve_p(p, keep_prob)
    if not training or p == 0.0:
        return input
    _check_input(input)
    if input.numel() == 0:
        return input
    backend = _resolve_backend(backend, input.device)
    if inplace and torch._debug_has_internal_overlap(input) == 1:
        raise RuntimeError(
            "unsupported operation: more than one element of the written-to tensor refers to a single "
            "memory location. Please clone() the tensor before performing the operation."
        )
    if seed is None:
        if offset != 0:
            raise ValueError("offset needs an explicit seed")
        # p == 1 draws nothing: every element is dropped whatever the stream says.
        seed, offset = (0, 0) if p == 1.0 else _rng.reserve(input.numel(), input.device, generator)
    else:
        seed = contract.check_seed(seed)
        offset = contract.check_offset(offset, input.numel())
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
