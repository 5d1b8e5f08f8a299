"""Between the API and the backends: input checks, backend choice, and the mask apply."""

from __future__ import annotations

import os

import torch

from . import contract
from .backends import cpu

_kernels = _residual_kernels = False  # fastdrop.kernels.dropout / .residual once imported; None: no triton


def kernels():
    """The Triton kernels' module, imported at first need (triton takes 0.1-0.4 s to import and
    the CPU path never needs it); None where triton is not importable."""
    global _kernels, _residual_kernels
    if _kernels is False:
        try:
            from .kernels import dropout, residual
        except ImportError:  # pragma: no cover - exercised by a subprocess test
            dropout = residual = None
        _kernels, _residual_kernels = dropout, residual
    return _kernels

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "triton", "cpu")


class _DefaultP(float):
    """The default p (0.5), told apart from an explicit p=0.5 so keep_prob can conflict."""

    def __repr__(self):
        return "0.5"


P_DEFAULT = _DefaultP(0.5)


def resolve_p(p, keep_prob) -> float:
    if keep_prob is None:
        return contract.check_p(p)
    if p is not P_DEFAULT:
        raise ValueError(f"give p or keep_prob, not both (got p={p}, keep_prob={keep_prob})")
    return 1.0 - contract.check_p(keep_prob, name="keep_prob")  # what p accepts, named keep_prob


def check_input(input, name="dropout"):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}(): input must be a Tensor, but got {type(input).__name__}")
    if input.is_nested:  # either layout: the contract indexes a dense shape, which they lack
        raise TypeError(
            f"{name}(): nested tensors are not supported, but got one with layout {input.layout}; apply "
            f"{name} to a dense tensor, such as the packed values() of a jagged nested tensor"
        )
    if input.layout != torch.strided:
        raise TypeError(f"{name}(): input must be a dense (strided) tensor, but got layout {input.layout}")
    if input.dtype not in FLOAT_DTYPES:
        accepted = ", ".join(str(d) for d in FLOAT_DTYPES)
        raise TypeError(f"{name}(): expected a floating-point input ({accepted}), but got {input.dtype}")


def resolve_backend(backend: str, device: torch.device) -> str:
    kind = device.type  # read once: each read of torch.device.type costs about 0.6 us
    if backend == "auto" and kind == "cuda" and kernels() is not None:  # the common GPU case
        return "triton"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, but got {backend!r}")
    if kind == "meta":
        return "meta"
    if backend == "auto":
        backend = "cpu" if kind == "cpu" else "triton"
    if backend == "cpu" and kind != "cpu":
        raise ValueError(f"backend='cpu' needs a CPU tensor, but the input is on {device}")
    if backend == "triton":
        if kernels() is None:
            raise RuntimeError("backend='triton' needs triton, which is not importable here")
        if kind == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                "backend='triton' on a CPU tensor runs only under TRITON_INTERPRET=1 "
                "(set before triton is imported); use backend='cpu' or 'auto'"
            )
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"fastdrop runs on cpu and cuda tensors, but the input is on {device}")
    return backend


def scale_of(p: float) -> float:
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def mask_strides(noise_shape) -> tuple:
    """Row-major strides of ``noise_shape`` with 0 on its size-1 dims: the kernels' mask index."""
    return tuple(0 if s == 1 else st for s, st in zip(noise_shape, contract.row_major(noise_shape)))


def apply_mask(x, y, p, seed, offset, backend, *, noise_shape=None, scale=None, affine=None):
    """y = x * keep * 1/(1-p) by the mask contract (x and y may be the same tensor).

    ``noise_shape`` (x.dim() entries, each 1 or x's size): one keep bit per element of that
    shape, shared along its size-1 dims. ``scale`` replaces 1/(1-p). ``affine=(add, drop)``
    gives ``keep ? x * scale + add : drop`` (alpha dropout).
    """
    threshold = contract.keep_threshold(p)
    scale = scale_of(p) if scale is None else scale
    if noise_shape is not None and tuple(noise_shape) == tuple(x.shape):
        noise_shape = None  # one bit per element: plain dropout
    if backend == "cpu":
        cpu.apply(x, y, seed, offset, threshold, scale, noise_shape=noise_shape, affine=affine)
    elif backend == "triton":
        strides = None if noise_shape is None else mask_strides(noise_shape)
        kernels().launch(x, y, seed, offset, threshold, scale, mask_strides=strides, affine=affine)
    return y


def apply_dropout_add(x, bias, residual, y, p, seed, offset, backend):
    """y = residual + dropout(x + bias) (bias may be None); contiguous tensors, y fresh."""
    threshold = contract.keep_threshold(p)
    if backend == "cpu":
        y.copy_(cpu.dropout_add_torch(x, bias, residual, seed, offset, threshold, scale_of(p)))
    elif backend == "triton":
        kernels()  # imports both kernel modules
        _residual_kernels.launch(x, bias, residual, y, seed, offset, threshold, scale_of(p))
    return y
