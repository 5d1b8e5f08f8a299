"""What runs a call once its plan is settled: fastdrop's backends, behind one interface.

A ``Plan`` is everything that decides a masked op and nothing per element: autograd saves it,
and the backward runs it again (``linear()``). Each backend is a module with

    run(x, plan) -> y
        the op on x by the mask contract: x itself written in place (plan.inplace), else a fresh
        output with x's layout
    dropout_add(x, bias, residual, plan) -> y
        residual + dropout(x + bias) in one pass, bias over the last dim or None
    keep_mask(shape, p, seed, offset) -> a bool CPU tensor of the keep bits

- ``native``: fastdrop's C++ operators (``fastdrop/csrc``, built at first use), CPU and CUDA.
- ``reference``: torch ops on the contract's Philox (``fastdrop.contract``), any device: where
  the operators cannot be built, and what the tests hold the others to.
- ``triton``: the kernels of ``fastdrop/kernels`` launched from Python (``backend="triton"``;
  the C++ CUDA launch's helper).

``resolve`` picks one for a call.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace

import torch

from .. import _library, contract

NAMES = ("auto", "triton", "cpu")
_triton = False  # backends.triton once imported; None where triton is not importable
_helper = False  # the C++ CUDA launch's helper registered (or found missing)


@dataclass(slots=True)  # slots: built on every call of the general path, and cheap so
class Plan:
    """Everything that decides a masked op, and nothing per element."""

    p: float
    seed: int | torch.Tensor  # an int in [0, 2**64), or a 1-element int64 tensor (a graph's seed)
    offset: int
    backend: object  # a module of fastdrop.backends
    noise_shape: tuple | None  # x.dim() entries, each 1 or x's size; None: one bit per element
    scale: float
    affine: tuple | None = None  # (add, drop): keep ? x * scale + add : drop
    inplace: bool = False
    # torch.func.vmap levels active when the seed was drawn: ((level, randomness, batch size), ...).
    vmaps: tuple = ()
    pinned: bool = True  # the caller gave the seed
    # A DTensor shard: (lead, offsets), one stream range per index over x's first ``lead`` dims
    # (row-major), each over ``noise_shape`` (the trailing dims). See ``fastdrop._sharded``.
    rows: tuple | None = None
    threshold: int = field(init=False)

    def __post_init__(self):
        self.threshold = contract.keep_threshold(self.p)

    def run(self, x):
        """The op on x (written in place where self.inplace)."""
        if self.rows is None:
            return self.backend.run(x, self)
        lead, offsets = self.rows
        y = x if self.inplace else torch.empty_like(x)
        for idx, off in zip(itertools.product(*(range(s) for s in x.shape[:lead])), offsets):
            row = replace(self, offset=off, rows=None, inplace=True)
            self.backend.run(y[idx] if self.inplace else y[idx].copy_(x[idx]), row)
        return y

    def linear(self):
        """The derivative's plan: keep * scale, the same bits, out of place, without the affine part."""
        return replace(self, affine=None, inplace=False)

    @property
    def shared(self):
        """The dims the mask is shared along (the noise shape's size-1 dims), or None."""
        return None if self.noise_shape is None else [d for d, s in enumerate(self.noise_shape) if s == 1]


def load_native():
    """fastdrop's C++ operators, built and loaded at first need (``fastdrop._library``), with the
    helper their CUDA launch asks for the kernels it has not seen (Triton's own launch), where
    torch has CUDA; None where they cannot be loaded."""
    global _helper
    ops = _library.load()
    if ops is not None and not _helper and torch.version.cuda is not None:
        _helper = True
        if load_triton() is not None:
            _triton.register_helper()
    return ops


def load_triton():
    """The Triton backend, imported at first need (triton takes 0.1-0.4 s to import and the CPU
    path never needs it); None where triton is not importable."""
    global _triton
    if _triton is False:
        try:
            import triton  # noqa: F401 - only whether it imports is asked here
        except ImportError:
            _triton = None
        else:
            from . import triton as loaded

            _triton = loaded
    return _triton


def resolve(backend: str, device):
    """The backend module for ``backend`` (one of NAMES) and a tensor on ``device``."""
    from . import native, reference

    kind = device.type  # read once: each read of torch.device.type costs about 0.6 us
    if backend not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, but got {backend!r}")
    if kind == "meta":
        return native if load_native() is not None else reference
    if backend == "cpu" and kind != "cpu":
        raise ValueError(f"backend='cpu' needs a CPU tensor, but the input is on {device}")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"fastdrop runs on cpu and cuda tensors, but the input is on {device}")
    if backend == "triton":
        if load_triton() is None:
            raise RuntimeError("backend='triton' needs triton, which is not importable here")
        if kind == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                "backend='triton' on a CPU tensor runs only under TRITON_INTERPRET=1 "
                "(set before triton is imported); use backend='cpu' or 'auto'"
            )
        return _triton
    if load_native() is not None:
        return native
    if kind == "cuda":
        if load_triton() is None:
            raise RuntimeError("fastdrop on CUDA tensors needs its C++ operators or triton, and neither is "
                               "available here (see the warning above)")
        return _triton
    return reference
