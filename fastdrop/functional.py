"""fastdrop's functional API: drop-ins for torch.nn.functional's dropout family (timm's for
``drop_path``), on one mask contract, no stored mask.

Each function runs PyTorch's checks with PyTorch's error texts, then makes one call: to the C++
operator where the call is the common case (a plain CPU or CUDA tensor, in eager mode, no seed,
nothing watching: ``_native``), else to the general path (``fastdrop._general``), which chooses
once between subclasses, recorded graphs, torch.func and the other backends. What a variant's
mask and scale are comes from one table, ``fastdrop.variants``. Signatures follow PyTorch;
additions are keyword-only.
"""

from __future__ import annotations

import numbers
import warnings

import torch
import torch.autograd.forward_ad as _fwd
from torch.overrides import handle_torch_function, has_torch_function, has_torch_function_unary

from . import _general, _library, contract, variants
from ._args import P_DEFAULT, check_call_args, check_input, resolve_noise_shape, resolve_p
from .backends import load_native, resolve
from .variants import (ALPHA, BATCH, DROP_PATH, DROPOUT1D, DROPOUT2D, DROPOUT3D, FEATURE_ALPHA, alpha_form,
                       scale_of, shared_dims)

_Tensor, _Parameter = torch.Tensor, torch.nn.Parameter
_compiling = torch.compiler.is_compiling
_transforms = torch._C._are_functorch_transforms_active
_function_modes = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_alpha_cache = variants._alpha_cache


def _shared_table():
    # The table's shared dims for the ranks the common case meets, looked up without a call.
    out = {}
    for kind in variants.KINDS:
        for dim in range(9):
            try:
                out[kind, dim] = shared_dims(kind, dim, 0.5)
            except RuntimeError:  # channel variants below 2 dims: the general path raises
                pass
    return out


_SHARED = _shared_table()


def _not_scriptable(fn):
    """torch.jit.script of a functional form (or of code calling it) says what to do instead."""
    fn.__script_unsupported = (
        f"fastdrop.{fn.__name__} takes keyword-only arguments, which TorchScript cannot compile. Script "
        f"fastdrop's modules (their forward runs the fastdrop::dropout operator), or use torch.compile or "
        f"torch.export for the functional API.")
    return fn
_NONE = object()


def _native(input, training, inplace=False, seed=None, offset=0, generator=None, backend="auto"):
    """The C++ operators, where a call goes straight to them: training, out of place, no seed or
    generator, the default backend, a plain non-empty tensor (an empty one is returned as it is,
    as PyTorch does), in eager mode, with no torch.func transform, forward-mode AD or mode
    watching. None otherwise: the general path."""
    if (training is True and not inplace and seed is None and offset == 0 and generator is None
            and backend == "auto" and (type(input) is _Tensor or type(input) is _Parameter) and not _compiling()
            and not _transforms() and _fwd._current_level < 0 and not _function_modes() and not _dispatch_modes()
            and input.numel()):
        return _library.ops or load_native()
    return None


@_not_scriptable
def dropout(input, p=P_DEFAULT, training=True, inplace=False, *, keep_prob=None, noise_shape=None, seed=None,
            offset=0, generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.dropout`` with a reproducible, seed-driven mask.

    ``keep_prob`` is the TensorFlow spelling (``1 - p``). ``noise_shape`` (as in
    ``tf.nn.dropout``) draws one keep bit per element of a shape broadcastable to the input,
    shared along its size-1 dims. ``seed``/``offset`` pin the mask (see ``fastdrop.contract``);
    without ``seed`` each call draws its own from PyTorch's generator of the input's device, or
    from ``generator``.
    """
    if type(p) is not float or keep_prob is not None or not 0.0 <= p <= 1.0:
        p = resolve_p(p, keep_prob)
    if p != 0.0 and noise_shape is None:
        ops = _native(input, training, inplace, seed, offset, generator, backend)
        if ops is not None:
            try:
                return ops.dropout(input, p)
            except (TypeError, RuntimeError):
                pass  # the general path says what is wrong, in fastdrop's words
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
    return _general.masked(input, p, noise_shape, inplace, seed, offset, generator, backend, scale=scale_of(p))


@_not_scriptable
def noise_dropout(input, p, noise_shape, training=True, inplace=False, *, seed=None, offset=0, generator=None,
                  backend="auto"):
    """Dropout with one keep bit per element of ``noise_shape`` (as ``tf.nn.dropout``).

    ``noise_shape`` broadcasts to the input: (N, C, 1, 1) drops whole channels, (1, L, 1) a
    mask shared across the batch. Missing leading dims and None entries take the input's
    size. Kept elements are scaled by 1/(1-p). Draws ``prod(noise_shape)`` stream elements.
    """
    p = contract.check_p(p, fn="noise_dropout")
    if has_torch_function_unary(input):
        return handle_torch_function(noise_dropout, (input,), input, p, noise_shape, training, inplace, seed=seed,
                                     offset=offset, generator=generator, backend=backend)
    _tensor(input, "noise_dropout")
    seed, offset = check_call_args(training, seed, offset, generator, backend, "noise_dropout")
    noise_shape = resolve_noise_shape(noise_shape, input.shape)
    if not training or p == 0.0:
        return input
    return _general.masked(input, p, noise_shape, inplace, seed, offset, generator, backend, scale=scale_of(p),
                           name="noise_dropout")


def _tensor(input, name):
    if not isinstance(input, torch.Tensor) or input.is_nested:
        check_input(input, name)  # raises its TypeError


def _variant(kind, input, p, training, inplace, seed, offset, generator, backend, scale_by_keep=True):
    """A variant of the table on the general path, after its public function's checks: ATen's
    order (identity first, then p == 1, which needs no rank, then the variant's noise)."""
    name = kind
    seed, offset = check_call_args(training, seed, offset, generator, backend, name)
    if not training or p == 0.0 or (isinstance(input, torch.Tensor) and input.numel() == 0):
        return input
    check_input(input, name)
    shared = shared_dims(kind, input.dim(), p)
    noise = None
    if shared:
        noise = tuple(1 if d in shared else s for d, s in enumerate(input.shape))
    scale, affine = scale_of(p, kind, scale_by_keep), None
    if kind in (ALPHA, FEATURE_ALPHA) and p < 1.0:  # p == 1: PyTorch gives x * 0, the plain form with scale 0
        scale, (add, drop) = alpha_form(p, input.dtype)
        affine = (add, drop)
    return _general.masked(input, p, noise, inplace, seed, offset, generator, backend, scale=scale, affine=affine,
                           name=name)


# ---- channel dropout (PyTorch's feature dropout) -------------------------------------------

@_not_scriptable
def dropout1d(input, p=P_DEFAULT, training=True, inplace=False, *, keep_prob=None, seed=None, offset=0,
              generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.dropout1d``: zeroes whole channels of (N, C, L) or (C, L)."""
    if type(p) is not float or keep_prob is not None or not 0.0 <= p <= 1.0:
        p = resolve_p(p, keep_prob, "dropout1d")
    if p != 0.0:
        ops = _native(input, training, inplace, seed, offset, generator, backend)
        shared = _SHARED.get((DROPOUT1D, input.dim()), _NONE) if ops is not None else _NONE
        if shared is not _NONE and input.dim() in (2, 3):
            try:
                return ops.dropout(input, p, shared)
            except (TypeError, RuntimeError):
                pass
    if has_torch_function_unary(input):
        return handle_torch_function(dropout1d, (input,), input, p, training, inplace, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    _tensor(input, "dropout1d")
    inp_dim = input.dim()
    if inp_dim not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {inp_dim}D input. "
            "Note that dropout1d exists to provide channel-wise dropout on inputs with 1 "
            "spatial dimension, a channel dimension, and an optional batch dimension "
            "(i.e. 2D or 3D inputs)."
        )
    return _variant(DROPOUT1D, input, p, training, inplace, seed, offset, generator, backend)


def _warn(message):
    # Not under torch.compile, where a warnings.warn would break the graph.
    if not _compiling():
        warnings.warn(message, stacklevel=3)


@_not_scriptable
def dropout2d(input, p=P_DEFAULT, training=True, inplace=False, *, keep_prob=None, seed=None, offset=0,
              generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.dropout2d``: zeroes whole channels of (N, C, H, W).

    As PyTorch: other ranks warn (except under torch.compile), and a 3-D input is taken as (N, C, L).
    """
    if type(p) is not float or keep_prob is not None or not 0.0 <= p <= 1.0:
        p = resolve_p(p, keep_prob, "dropout2d")
    if p != 0.0:
        ops = _native(input, training, inplace, seed, offset, generator, backend)
        if ops is not None and input.dim() == 4:
            try:
                return ops.dropout(input, p, _SHARED[DROPOUT2D, 4])
            except (TypeError, RuntimeError):
                pass
    if has_torch_function_unary(input):
        return handle_torch_function(dropout2d, (input,), input, p, training, inplace, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    _tensor(input, "dropout2d")
    inp_dim = input.dim()
    if inp_dim not in (3, 4):
        _warn(f"dropout2d: Received a {inp_dim}-D input to dropout2d, which is deprecated "
              "and will result in an error in a future release. To retain the behavior "
              "and silence this warning, please use dropout instead. Note that dropout2d "
              "exists to provide channel-wise dropout on inputs with 2 spatial dimensions, "
              "a channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs).")
    if inp_dim == 3:
        _warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
              "1D dropout behavior is desired - input is interpreted as shape (N, C, L), where C "
              "is the channel dim. This behavior will change in a future release to interpret the "
              "input as one without a batch dimension, i.e. shape (C, H, W). To maintain the 1D "
              "channel-wise dropout behavior, please switch to using dropout1d instead.")
    return _variant(DROPOUT2D, input, p, training, inplace, seed, offset, generator, backend)


@_not_scriptable
def dropout3d(input, p=P_DEFAULT, training=True, inplace=False, *, keep_prob=None, seed=None, offset=0,
              generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.dropout3d``: zeroes whole channels of (N, C, D, H, W) or (C, D, H, W)."""
    if type(p) is not float or keep_prob is not None or not 0.0 <= p <= 1.0:
        p = resolve_p(p, keep_prob, "dropout3d")
    if p != 0.0:
        ops = _native(input, training, inplace, seed, offset, generator, backend)
        if ops is not None and input.dim() in (4, 5):
            try:
                return ops.dropout(input, p, _SHARED[DROPOUT3D, input.dim()])
            except (TypeError, RuntimeError):
                pass
    if has_torch_function_unary(input):
        return handle_torch_function(dropout3d, (input,), input, p, training, inplace, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    _tensor(input, "dropout3d")
    inp_dim = input.dim()
    if inp_dim not in (4, 5):
        _warn(f"dropout3d: Received a {inp_dim}-D input to dropout3d, which is deprecated "
              "and will result in an error in a future release. To retain the behavior "
              "and silence this warning, please use dropout instead. Note that dropout3d "
              "exists to provide channel-wise dropout on inputs with 3 spatial dimensions, "
              "a channel dimension, and an optional batch dimension (i.e. 4D or 5D inputs).")
    return _variant(DROPOUT3D, input, p, training, inplace, seed, offset, generator, backend)


def feature_dropout(input, p, training=True, inplace=False):
    """ATen's feature dropout (``torch.feature_dropout``, which ``patch()`` routes here): one bit
    per (sample, channel) of an (N, C, ...) input, any rank, no warnings."""
    return _variant(DROPOUT2D, input, p, training, inplace, None, 0, None, "auto")


# ---- alpha dropout ---------------------------------------------------------------------------

@_not_scriptable
def alpha_dropout(input, p=P_DEFAULT, training=False, inplace=False, *, keep_prob=None, seed=None, offset=0,
                  generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.alpha_dropout`` (for SELU networks).

    y = a * x + a * alpha * p where kept, a * alpha * (p - 1) where dropped, with
    a = ((1 - p) * (1 + p * alpha**2)) ** -0.5: zero mean and unit variance are kept.
    Rounded as PyTorch rounds it; p == 1 gives zeros, as PyTorch does.
    """
    if type(p) is not float or keep_prob is not None or not 0.0 <= p <= 1.0:
        p = resolve_p(p, keep_prob, "alpha_dropout")
    if 0.0 < p < 1.0:
        ops = _native(input, training, inplace, seed, offset, generator, backend)
        if ops is not None:
            try:
                form = _alpha_cache.get((p, input.dtype)) or alpha_form(p, input.dtype)
                return ops.dropout(input, p, None, form[0], form[1])
            except (TypeError, RuntimeError):
                pass
    if has_torch_function_unary(input):
        return handle_torch_function(alpha_dropout, (input,), input, p, training, inplace, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    return _variant(ALPHA, input, p, training, inplace, seed, offset, generator, backend)


@_not_scriptable
def feature_alpha_dropout(input, p=P_DEFAULT, training=False, inplace=False, *, keep_prob=None, seed=None,
                          offset=0, generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.feature_alpha_dropout``: alpha dropout of whole channels."""
    if type(p) is not float or keep_prob is not None or not 0.0 <= p <= 1.0:
        p = resolve_p(p, keep_prob, "feature_alpha_dropout")
    if has_torch_function_unary(input):
        return handle_torch_function(feature_alpha_dropout, (input,), input, p, training, inplace, seed=seed,
                                     offset=offset, generator=generator, backend=backend)
    return _variant(FEATURE_ALPHA, input, p, training, inplace, seed, offset, generator, backend)


# ---- stochastic depth -----------------------------------------------------------------------

@_not_scriptable
def drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True, *, seed=None, offset=0, generator=None,
              backend="auto"):
    """Drop-in for timm's ``drop_path``: drops whole samples (dim 0) of a residual branch.

    Kept samples are scaled by 1/(1 - drop_prob) when ``scale_by_keep``.
    """
    p = drop_prob
    if type(p) is not float or not 0.0 <= p <= 1.0:
        p = contract.check_p(drop_prob, name="drop_prob", fn="drop_path")
    if p != 0.0:
        ops = _native(x, training, False, seed, offset, generator, backend)
        shared = _SHARED.get((DROP_PATH, x.dim()), _NONE) if ops is not None else _NONE
        if shared is not _NONE:
            try:
                return ops.dropout(x, p, shared, None if scale_by_keep is True else scale_of(p, DROP_PATH,
                                                                                              scale_by_keep))
            except (TypeError, RuntimeError):
                pass
    if has_torch_function_unary(x):
        return handle_torch_function(drop_path, (x,), x, p, training, scale_by_keep, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    if p == 0.0 or not training:
        check_call_args(training, seed, offset, generator, backend, "drop_path")
        return x
    _tensor(x, "drop_path")
    return _variant(DROP_PATH, x, p, training, False, seed, offset, generator, backend, scale_by_keep)


def stochastic_depth(input, p, mode, training=True):
    """torchvision's ``ops.stochastic_depth``: ``mode="row"`` one keep bit per sample, ``"batch"``
    one for the whole input."""
    kind = DROP_PATH if mode == "row" else BATCH
    return _variant(kind, input, p, training, False, None, 0, None, "auto")


# ---- fused residual forms -------------------------------------------------------------------

@_not_scriptable
def dropout_add(x, residual, p=0.5, training=True, *, seed=None, offset=0, generator=None, backend="auto"):
    """``residual + dropout(x, p)`` in one pass: reads x and residual once, writes one output.

    The mask is ``fastdrop.dropout``'s for the same seed and offset. Arithmetic is float32
    (float64 for float64) with one rounding, so 16-bit results can differ from the unfused
    expression by its extra rounding. Output is contiguous; non-contiguous inputs are copied.
    """
    if type(p) is not float or not 0.0 <= p <= 1.0:
        p = contract.check_p(p, fn="dropout_add")
    if p != 0.0 and type(residual) is type(x):
        ops = _native(x, training, False, seed, offset, generator, backend)
        if ops is not None:
            try:
                return ops.dropout_add(x, None, residual, p)
            except (TypeError, RuntimeError, ValueError):
                pass
    if has_torch_function((x, residual)):
        return handle_torch_function(dropout_add, (x, residual), x, residual, p, training, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    return _general.dropout_add(x, None, residual, p, training, seed, offset, generator, backend, "dropout_add")


@_not_scriptable
def bias_dropout_add(x, bias, residual, p=0.5, training=True, *, seed=None, offset=0, generator=None,
                     backend="auto"):
    """``residual + dropout(x + bias, p)`` in one pass (Megatron's pattern); bias is (x.shape[-1],).

    ``bias=None`` is ``dropout_add``. Same mask and arithmetic as ``dropout_add``.
    """
    if type(p) is not float or not 0.0 <= p <= 1.0:
        p = contract.check_p(p, fn="bias_dropout_add")
    if p != 0.0 and type(residual) is type(x) and (bias is None or type(bias) is type(x)):
        ops = _native(x, training, False, seed, offset, generator, backend)
        if ops is not None:
            try:
                return ops.dropout_add(x, bias, residual, p)
            except (TypeError, RuntimeError, ValueError):
                pass
    if has_torch_function((x, bias, residual)):
        return handle_torch_function(bias_dropout_add, (x, bias, residual), x, bias, residual, p, training,
                                     seed=seed, offset=offset, generator=generator, backend=backend)
    return _general.dropout_add(x, bias, residual, p, training, seed, offset, generator, backend,
                                "bias_dropout_add")


# ---- the mask and the Philox core ------------------------------------------------------------

def dropout_mask(shape, p, *, seed, offset=0, device="cpu"):
    """The boolean keep mask that ``dropout`` applies with this seed and offset. ``shape`` is a
    size (an int or a sequence of ints), as PyTorch's factories take it."""
    p = contract.check_p(p, fn="dropout_mask")
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = torch.Size(shape)
    except TypeError:
        raise TypeError(f"dropout_mask(): shape must be an int or a sequence of ints, but got "
                        f"{type(shape).__name__} {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"dropout_mask(): shape must have no negative dimension, but got {tuple(shape)}")
    seed = contract.check_seed(seed)
    offset = contract.check_offset(offset, shape.numel())
    if shape.numel() == 0:
        return torch.empty(shape, dtype=torch.bool, device=device)
    return resolve("cpu", torch.device("cpu")).keep_mask(shape, p, seed, offset).to(device)


def philox(counter, key, rounds=contract.PHILOX_ROUNDS):
    """Philox4x32 on uint32 values: counter (..., 4), key (2,) -> (..., 4) as int64.

    counter and key may be tensors, numpy arrays or lists of any integer dtype whose values
    lie in [0, 2**32); ``rounds`` is the round count, 1..255 (Random123 defines 7 and 10).
    """
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral):
        raise TypeError(f"philox(): rounds must be an int in [1, 255], but got {type(rounds).__name__} {rounds!r}")
    if not 1 <= rounds <= 255:
        raise ValueError(f"philox(): rounds must be in [1, 255] (Random123 defines 7 and 10), but got {rounds}")
    device = counter.device if isinstance(counter, torch.Tensor) else torch.device("cpu")
    c = _uint32_values(counter, "counter", "(..., 4)")
    k = _uint32_values(key, "key", "(2,)")
    words = contract.philox(c[..., 0], c[..., 1], c[..., 2], c[..., 3], int(k[0]), int(k[1]), int(rounds))
    return torch.stack(words, dim=-1).to(device)


def _uint32_values(v, name, want):
    """v as an int64 CPU tensor, checked: integers in [0, 2**32), of the wanted shape."""
    if isinstance(v, torch.Tensor):
        if v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
            raise TypeError(f"philox(): {name} must hold integers (any signed or unsigned integer dtype), "
                            f"but got {v.dtype}")
        t = v.detach().cpu().resolve_neg()
        big = t.dtype == torch.uint64 and t.numel() and bool((t.view(torch.int64) < 0).any())
        t = t.to(torch.int64)
    else:
        if type(v).__module__ == "numpy":  # numpy orders every integer dtype, uint64 included
            import numpy as np

            a = np.asarray(v)
            if a.dtype.kind not in "iu":
                raise TypeError(f"philox(): {name} must hold integers (any signed or unsigned integer dtype), "
                                f"but got {a.dtype}")
            big = a.size and a.max() > contract.UINT32 - 1
            t = torch.from_numpy((a.astype(np.int64) if not big else np.zeros(a.shape, np.int64)).copy())
            if big:
                raise ValueError(f"philox(): {name} values must be in [0, 2**32), but got {a.min()}..{a.max()}")
        else:
            flat = _flatten(v)
            if not all(isinstance(e, numbers.Integral) and not isinstance(e, bool) for e in flat):
                raise TypeError(f"philox(): {name} must hold integers (any signed or unsigned integer dtype), "
                                f"but got {v!r}")
            if flat and (min(flat) < 0 or max(flat) > contract.UINT32 - 1):
                raise ValueError(f"philox(): {name} values must be in [0, 2**32), but got {min(flat)}..{max(flat)}")
            t = torch.tensor(v, dtype=torch.int64)
        big = False
    if not (tuple(t.shape[-1:]) == (4,) if name == "counter" else tuple(t.shape) == (2,)):
        raise ValueError(f"philox(): {name} must have shape {want}, but got {tuple(t.shape)}")
    if big or (t.numel() and (int(t.min()) < 0 or int(t.max()) > contract.UINT32 - 1)):
        lo = "..." if big else f"{int(t.min())}..{int(t.max())}"
        raise ValueError(f"philox(): {name} values must be in [0, 2**32), but got {lo}")
    return t


def _flatten(v):
    if isinstance(v, (list, tuple)):
        return [e for item in v for e in _flatten(item)]
    return [v]


__all__ = ["alpha_dropout", "bias_dropout_add", "drop_path", "dropout", "dropout1d", "dropout2d", "dropout3d",
           "dropout_add", "dropout_mask", "feature_alpha_dropout", "noise_dropout", "philox"]
