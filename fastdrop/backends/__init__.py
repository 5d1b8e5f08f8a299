"""fastdrop's backends behind one interface. Each is a module with

    apply(x, y, seed, offset, threshold, scale, *, noise_shape=None, affine=None) -> y
        y = dropout(x) by the mask contract, for x and y of one shape and any strides (y may be x)
    dropout_add(x, bias, residual, seed, offset, threshold, scale) -> y
        residual + dropout(x + bias) in one pass, bias over the last dim or None; a fresh output
    fresh(x, seed, offset, threshold, scale, noise_shape, affine) -> y or None
        a fresh y = dropout(x) through a native autograd node, where the backend has one

``resolve`` picks one for a call: ``cpu`` (C++ operators, ``backends/cpu``), ``triton`` (the
kernels of ``kernels/``, launched by ``backends/triton.py``) or ``meta`` (shapes, no values).
"""

from __future__ import annotations

import os

from . import cpu, meta

NAMES = ("auto", "triton", "cpu")
_triton = False  # backends.triton once imported; None where triton is not importable


def load_triton():
    """The Triton backend, imported at first need (triton takes 0.1-0.4 s to import and the CPU
    backend never needs it); None where triton is not importable."""
    global _triton
    if _triton is False:
        try:
            from . import triton as loaded
        except ImportError:  # pragma: no cover - exercised by a subprocess test
            loaded = None
        _triton = loaded
    return _triton


def resolve(backend: str, device):
    """The backend module for ``backend`` (one of NAMES) and a tensor on ``device``."""
    kind = device.type  # read once: each read of torch.device.type costs about 0.6 us
    if backend == "auto" and kind == "cuda" and load_triton() is not None:  # the common GPU case
        return _triton
    if backend not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, but got {backend!r}")
    if kind == "meta":
        return meta
    if backend == "auto":
        backend = "cpu" if kind == "cpu" else "triton"
    if backend == "cpu":
        if kind != "cpu":
            raise ValueError(f"backend='cpu' needs a CPU tensor, but the input is on {device}")
        return cpu
    if load_triton() is None:
        raise RuntimeError("backend='triton' needs triton, which is not importable here")
    if kind == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "backend='triton' on a CPU tensor runs only under TRITON_INTERPRET=1 "
            "(set before triton is imported); use backend='cpu' or 'auto'"
        )
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"fastdrop runs on cpu and cuda tensors, but the input is on {device}")
    return _triton
