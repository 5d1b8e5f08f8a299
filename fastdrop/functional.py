"""fastdrop's functional API: drop-in for torch.nn.functional.dropout."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch.overrides import handle_torch_function, has_torch_function_unary

from . import contract, ops
from ._args import P_DEFAULT, check_call_args, check_input, resolve_noise_shape, resolve_p, scale_of
from ._masked import masked
from .backends import cpu

@ops.not_scriptable
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
    if has_torch_function_unary(input):  # FX proxies and tensor subclasses get the call, as with F.dropout
        return handle_torch_function(dropout, (input,), input, p, training, inplace, noise_shape=noise_shape,
                                     seed=seed, offset=offset, generator=generator, backend=backend)
    seed, offset = check_call_args(training, seed, offset, generator, backend)
    if noise_shape is not None:
        if not isinstance(input, torch.Tensor) or input.is_nested:
            check_input(input)  # raises its TypeError
        noise_shape = resolve_noise_shape(noise_shape, input.shape)
    if not training or p == 0.0:
        return input
    return masked(input, p, noise_shape, inplace, seed, offset, generator, backend, scale=scale_of(p))


def dropout_mask(shape, p, *, seed, offset=0, device="cpu"):
    """The boolean keep mask that ``dropout`` applies with this seed and offset."""
    p = contract.check_p(p, fn="dropout_mask")
    shape = torch.Size(shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"dropout_mask(): shape must have no negative dimension, but got {tuple(shape)}")
    seed = contract.check_seed(seed)
    offset = contract.check_offset(offset, shape.numel())
    # Written piece by piece into the output: it costs its own size and no more.
    mask = cpu.keep_mask(torch.empty(shape, dtype=torch.bool), seed, offset, contract.keep_threshold(p))
    return mask.to(device)


def philox(counter, key, rounds=contract.PHILOX_ROUNDS):
    """Philox4x32 on uint32 values: counter (..., 4), key (2,) -> (..., 4) as int64.

    counter and key may be tensors, numpy arrays or lists of any integer dtype whose values
    lie in [0, 2**32); ``rounds`` is the round count, 1..255 (Random123 defines 7 and 10).
    """
    if isinstance(rounds, (bool, np.bool_)) or not isinstance(rounds, numbers.Integral):
        raise TypeError(f"philox(): rounds must be an int in [1, 255], but got {type(rounds).__name__} {rounds!r}")
    if not 1 <= rounds <= 255:
        raise ValueError(f"philox(): rounds must be in [1, 255] (Random123 defines 7 and 10), but got {rounds}")
    device = counter.device if isinstance(counter, torch.Tensor) else torch.device("cpu")
    arrays = []
    for name, v, want in (("counter", counter, "(..., 4)"), ("key", key, "(2,)")):
        # Through numpy, which orders and compares every integer dtype (torch lacks min/max
        # for its unsigned dtypes beyond uint8).
        a = v.detach().cpu().resolve_neg().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        big_ints = a.dtype == object and all(isinstance(e, numbers.Integral) and not isinstance(e, bool)
                                             for e in a.flat)  # Python ints past 2**64: the range check names them
        if a.dtype.kind not in "iu" and not big_ints:
            raise TypeError(f"philox(): {name} must hold integers (any signed or unsigned integer dtype), "
                            f"but got {v.dtype if isinstance(v, torch.Tensor) else a.dtype}")
        if not (a.shape[-1:] == (4,) if name == "counter" else a.shape == (2,)):
            raise ValueError(f"philox(): {name} must have shape {want}, but got {tuple(a.shape)}")
        if a.size and (a.min() < 0 or a.max() > contract.UINT32 - 1):
            raise ValueError(f"philox(): {name} values must be in [0, 2**32), but got {a.min()}..{a.max()}")
        arrays.append(a.astype(np.uint64))
    c, (k0, k1) = arrays[0], (int(k) for k in arrays[1])
    out = contract.philox_numpy(c[..., 0], c[..., 1], c[..., 2], c[..., 3], k0, k1, int(rounds))
    return torch.from_numpy(np.stack(out, axis=-1).astype(np.int64)).to(device)
