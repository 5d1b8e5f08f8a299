"""The checks a call's arguments get before any work, as PyTorch's own functions check them:
one copy of each rule (p and keep_prob, the input, training, seed, offset and generator, a
writable input, noise shapes)."""

from __future__ import annotations

import math
import numbers
import sys
from typing import List, Optional

import torch

from . import contract
from .backends import NAMES as BACKENDS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INFERENCE_INPLACE = ("Inplace update to inference tensor outside InferenceMode is not allowed.You can make a "
                     "clone to get a normal tensor before doing inplace update.See "
                     "https://github.com/pytorch/rfcs/pull/17 for more details.")  # PyTorch's text


class _DefaultP(float):
    """The default p (0.5), told apart from an explicit p=0.5 so keep_prob can conflict."""

    def __repr__(self):
        return "0.5"


P_DEFAULT = _DefaultP(0.5)
NO_GRAD_VIEW_INPLACE = (
    "A view was created in no_grad mode and is being modified inplace with grad mode enabled. Given that this use "
    "case is ambiguous and error-prone, it is forbidden. You can clarify your code by moving both the view and the "
    "inplace either both inside the no_grad block (if you don't want the inplace to be tracked) or both outside (if "
    "you want the inplace to be tracked).")  # PyTorch's text
_NO_GRAD_VIEW = torch._C._autograd.CreationMeta.NO_GRAD_MODE


def resolve_p(p, keep_prob, fn="dropout") -> float:
    """p as a float, from p or from TensorFlow's keep_prob = 1 - p (not both), checked as
    ``fn`` (the function called) checks it.

    keep_prob's p is 1 - keep_prob rounded to 15 significant digits, so keep_prob=0.9 is
    p=0.1 (not 0.09999999999999998): the rounding moves p by at most 5e-16 relative, far below
    the 2**-32 steps in which the keep threshold resolves it.
    """
    if keep_prob is None:
        return contract.check_p(p, fn=fn)
    if p is not P_DEFAULT:
        raise ValueError(f"give p or keep_prob, not both (got p={p}, keep_prob={keep_prob})")
    return float(f"{1.0 - contract.check_p(keep_prob, name='keep_prob', fn=fn):.15g}")


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


def check_call_args(training, seed, offset, generator, backend, name="dropout"):
    """Checks that need no tensor, done before any early return; returns (seed, offset).
    The offset's range against the tensor's size is checked once the size is known."""
    if not isinstance(training, bool) and not _is_numpy_bool(training):  # PyTorch's parser refuses None, ints, strings
        raise TypeError(f"{name}(): argument 'training' must be bool, not {type(training).__name__}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"{name}(): generator must be a torch.Generator, but got {type(generator).__name__}")
        if training and not torch.compiler.is_compiling() and _in_checkpoint():
            # checkpoint restores only the default generators: the recompute would draw another mask.
            raise ValueError(f"{name}(): generator= inside torch.utils.checkpoint would recompute a different "
                             f"mask (checkpoint restores only PyTorch's default generators); pass seed= or use "
                             f"the default generator")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, but got {backend!r}")
    if seed is None:
        if offset != 0:
            raise ValueError("offset needs an explicit seed")
        return None, 0
    return contract.check_seed(seed), contract.check_offset(offset)


def _is_numpy_bool(v) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(v, np.bool_)


def _in_checkpoint():
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith(("torch/utils/checkpoint.py", "torch\\utils\\checkpoint.py")):
            return True
        frame = frame.f_back
    return False


def check_writable(t):
    # Before writing, as PyTorch does: a refused call leaves the tensor untouched.
    if t.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(INFERENCE_INPLACE)
    if torch.is_grad_enabled() and t.requires_grad:
        if t._is_view() and torch._C._autograd._get_creation_meta(t) == _NO_GRAD_VIEW:
            raise RuntimeError(NO_GRAD_VIEW_INPLACE)
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


# ---- noise shapes ---------------------------------------------------------------------------------

def broadcast_noise(noise_shape: List[Optional[int]], shape: List[int]) -> List[int]:
    """The rule: ``noise_shape`` right-aligned to ``shape`` as broadcasting aligns it. Missing
    leading dims are 1 (shared); None (or a negative entry, as a trace writes it) takes the
    input's size; every dim must be 1 or the input's size. TorchScript compiles it too."""
    lead = len(shape) - len(noise_shape)
    if lead < 0:
        raise ValueError("noise_shape has more dims than the input")
    out = [1] * lead
    for i, s in enumerate(noise_shape):
        size = shape[lead + i]
        v = size if s is None or s < 0 else s
        if v != 1 and v != size:
            raise ValueError("noise_shape is not broadcastable to the input: each dim must be 1 or the input's size")
        out.append(v)
    return out


def resolve_noise_shape(noise_shape, shape) -> tuple:
    """``broadcast_noise`` for the Python API: type checks first, errors that show both shapes."""
    if isinstance(noise_shape, (torch.Tensor, str)) or not hasattr(noise_shape, "__iter__"):
        raise TypeError(f"noise_shape must be a sequence of ints, but got {type(noise_shape).__name__}")
    given = tuple(noise_shape)
    for s in given:
        # type(s) is int first: the abstract Integral check costs ~1 us a dim on every call
        if s is not None and type(s) is not int and (isinstance(s, bool) or not isinstance(s, numbers.Integral)):
            raise TypeError(f"noise_shape must be a sequence of ints (or None), but got {given}")
    shape = tuple(shape)
    try:
        if any(s is not None and s < 0 for s in given):
            raise ValueError
        return tuple(broadcast_noise([None if s is None else int(s) for s in given], list(shape)))
    except ValueError:
        raise ValueError(
            f"noise_shape {given} is not broadcastable to the input's shape {shape}: it needs at most "
            f"{len(shape)} dims, each 1 or the input's size (None takes the input's size)"
        ) from None


def noise_count(noise_shape, numel: int) -> int:
    """Stream elements a call draws: one per element of the noise shape, or of the input."""
    return numel if noise_shape is None else math.prod(noise_shape)
