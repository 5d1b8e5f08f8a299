"""The dropout family on one mask contract: noise shapes, channel, alpha, drop-path, residual.

Every variant draws its keep bits from ``fastdrop.contract`` (seed, offset, index), stores
no mask and regenerates it in backward. What differs is the shape of the mask and what a
kept or dropped element becomes:

- ``noise_dropout``: one bit per element of ``noise_shape``, shared along its size-1 dims;
  the bit of an input element is the contract bit at the row-major index of its
  coordinates in the noise shape (size-1 dims at coordinate 0), plus ``offset``.
- ``dropout1d/2d/3d``: noise shape (N, C, 1, ...), one bit per (sample, channel).
- ``alpha_dropout`` / ``feature_alpha_dropout``: dropped elements take SELU's saturation
  value, with PyTorch's affine correction.
- ``drop_path``: noise shape (N, 1, ...), one bit per sample (stochastic depth).
- ``dropout_add`` / ``bias_dropout_add``: ``residual + dropout(x [+ bias])`` in one pass.

Signatures follow PyTorch (timm for ``drop_path``); additions are keyword-only.
"""

from __future__ import annotations

import warnings

import torch
import torch.autograd.forward_ad as _fwd
from torch.overrides import handle_torch_function, has_torch_function, has_torch_function_unary

from . import contract, ops
from ._args import P_DEFAULT, check_call_args, check_input, resolve_noise_shape, resolve_p, scale_of
from ._masked import Plan, masked, recording, run, seed_offset
from .backends import cpu, resolve


def _assume_constant_result(fn):
    # torch._dynamo.assume_constant_result sets this one attribute (tests/test_import.py holds
    # the two equal); calling it would import torch._dynamo (about 1 s) at fastdrop's import.
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result  # depends on (p, dtype) only: a constant of a compiled graph
def _alpha_constants(p: float, dtype: torch.dtype):
    return ops.alpha_constants(p, dtype)


def _masked(input, p, noise_shape, inplace, seed, offset, generator, backend, *, scale=None, alpha=False,
            name="dropout"):
    """Scale and affine form of a variant, then the one masked path."""
    affine = None
    if alpha and p < 1.0:  # p == 1: PyTorch gives x * 0, the plain form with scale 0
        scale, add, drop = _alpha_constants(p, input.dtype)
        affine = (add, drop)
    elif scale is None:
        scale = scale_of(p)
    return masked(input, p, noise_shape, inplace, seed, offset, generator, backend, scale=scale, affine=affine,
                  name=name)


def _tensor(input, name):
    if not isinstance(input, torch.Tensor) or input.is_nested:
        check_input(input, name)  # raises its TypeError


@ops.not_scriptable
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
    return _masked(input, p, noise_shape, inplace, seed, offset, generator, backend, name="noise_dropout")


# ---- channel dropout (PyTorch's feature dropout) -------------------------------------------

def _feature(input, p, training, inplace, seed, offset, generator, backend, *, batched=True, alpha=False,
             name):
    # ATen's _dropout_impl order: identity first, then p == 1 (no rank check), then the
    # (N, C, 1, ...) noise, which needs 2 dims. Unbatched inputs are seen as (1, *shape).
    seed, offset = check_call_args(training, seed, offset, generator, backend, name)
    if not training or p == 0.0 or (isinstance(input, torch.Tensor) and input.numel() == 0):
        return input
    check_input(input, name)
    shape = tuple(input.shape) if batched else (1,) + tuple(input.shape)
    if len(shape) < 2:
        if p < 1.0:
            raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
        noise = None
    else:
        noise = (shape[0], shape[1]) + (1,) * (len(shape) - 2)
        noise = noise if batched else noise[1:]
    return _masked(input, p, noise, inplace, seed, offset, generator, backend, alpha=alpha, name=name)


@ops.not_scriptable
def dropout1d(input, p=P_DEFAULT, training=True, inplace=False, *, keep_prob=None, seed=None, offset=0,
              generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.dropout1d``: zeroes whole channels of (N, C, L) or (C, L)."""
    p = resolve_p(p, keep_prob, "dropout1d")
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
    return _feature(input, p, training, inplace, seed, offset, generator, backend, batched=inp_dim == 3,
                    name="dropout1d")


@ops.not_scriptable
def dropout2d(input, p=P_DEFAULT, training=True, inplace=False, *, keep_prob=None, seed=None, offset=0,
              generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.dropout2d``: zeroes whole channels of (N, C, H, W).

    As PyTorch: other ranks warn, and a 3-D input is taken as (N, C, L).
    """
    p = resolve_p(p, keep_prob, "dropout2d")
    if has_torch_function_unary(input):
        return handle_torch_function(dropout2d, (input,), input, p, training, inplace, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    _tensor(input, "dropout2d")
    inp_dim = input.dim()
    if inp_dim not in (3, 4):
        warn_msg = (
            f"dropout2d: Received a {inp_dim}-D input to dropout2d, which is deprecated "
            "and will result in an error in a future release. To retain the behavior "
            "and silence this warning, please use dropout instead. Note that dropout2d "
            "exists to provide channel-wise dropout on inputs with 2 spatial dimensions, "
            "a channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs)."
        )
        warnings.warn(warn_msg, stacklevel=2)
    if inp_dim == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
            "1D dropout behavior is desired - input is interpreted as shape (N, C, L), where C "
            "is the channel dim. This behavior will change in a future release to interpret the "
            "input as one without a batch dimension, i.e. shape (C, H, W). To maintain the 1D "
            "channel-wise dropout behavior, please switch to using dropout1d instead.",
            stacklevel=2,
        )
    return _feature(input, p, training, inplace, seed, offset, generator, backend, name="dropout2d")


@ops.not_scriptable
def dropout3d(input, p=P_DEFAULT, training=True, inplace=False, *, keep_prob=None, seed=None, offset=0,
              generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.dropout3d``: zeroes whole channels of (N, C, D, H, W) or (C, D, H, W)."""
    p = resolve_p(p, keep_prob, "dropout3d")
    if has_torch_function_unary(input):
        return handle_torch_function(dropout3d, (input,), input, p, training, inplace, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    _tensor(input, "dropout3d")
    inp_dim = input.dim()
    if inp_dim not in (4, 5):
        warn_msg = (
            f"dropout3d: Received a {inp_dim}-D input to dropout3d, which is deprecated "
            "and will result in an error in a future release. To retain the behavior "
            "and silence this warning, please use dropout instead. Note that dropout3d "
            "exists to provide channel-wise dropout on inputs with 3 spatial dimensions, "
            "a channel dimension, and an optional batch dimension (i.e. 4D or 5D inputs)."
        )
        warnings.warn(warn_msg, stacklevel=2)
    return _feature(input, p, training, inplace, seed, offset, generator, backend, batched=inp_dim == 5,
                    name="dropout3d")


# ---- alpha dropout ---------------------------------------------------------------------------

@ops.not_scriptable
def alpha_dropout(input, p=P_DEFAULT, training=False, inplace=False, *, keep_prob=None, seed=None, offset=0,
                  generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.alpha_dropout`` (for SELU networks).

    y = a * x + a * alpha * p where kept, a * alpha * (p - 1) where dropped, with
    a = ((1 - p) * (1 + p * alpha**2)) ** -0.5: zero mean and unit variance are kept.
    Rounded as PyTorch rounds it; p == 1 gives zeros, as PyTorch does.
    """
    p = resolve_p(p, keep_prob, "alpha_dropout")
    if has_torch_function_unary(input):
        return handle_torch_function(alpha_dropout, (input,), input, p, training, inplace, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    seed, offset = check_call_args(training, seed, offset, generator, backend, "alpha_dropout")
    if not training or p == 0.0:
        return input
    check_input(input, "alpha_dropout")  # before its constants are computed in the input's dtype
    return _masked(input, p, None, inplace, seed, offset, generator, backend, alpha=True, name="alpha_dropout")


@ops.not_scriptable
def feature_alpha_dropout(input, p=P_DEFAULT, training=False, inplace=False, *, keep_prob=None, seed=None,
                          offset=0, generator=None, backend="auto"):
    """Drop-in for ``torch.nn.functional.feature_alpha_dropout``: alpha dropout of whole channels."""
    p = resolve_p(p, keep_prob, "feature_alpha_dropout")
    if has_torch_function_unary(input):
        return handle_torch_function(feature_alpha_dropout, (input,), input, p, training, inplace, seed=seed,
                                     offset=offset, generator=generator, backend=backend)
    return _feature(input, p, training, inplace, seed, offset, generator, backend, alpha=True,
                    name="feature_alpha_dropout")


# ---- stochastic depth -----------------------------------------------------------------------

@ops.not_scriptable
def drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True, *, seed=None, offset=0, generator=None,
              backend="auto"):
    """Drop-in for timm's ``drop_path``: drops whole samples (dim 0) of a residual branch.

    Kept samples are scaled by 1/(1 - drop_prob) when ``scale_by_keep``.
    """
    p = contract.check_p(drop_prob, name="drop_prob", fn="drop_path")
    if has_torch_function_unary(x):
        return handle_torch_function(drop_path, (x,), x, p, training, scale_by_keep, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    seed, offset = check_call_args(training, seed, offset, generator, backend, "drop_path")
    if p == 0.0 or not training:
        return x
    _tensor(x, "drop_path")
    noise = (x.shape[0],) + (1,) * (x.dim() - 1) if x.dim() else ()
    return _masked(x, p, noise, False, seed, offset, generator, backend, scale=None if scale_by_keep else 1.0,
                   name="drop_path")


# ---- fused residual forms -------------------------------------------------------------------

class _DropoutAdd(torch.autograd.Function):
    # Saves the Plan only. d/dx = the dropout mask (regenerated), d/dbias = its sum over
    # the leading dims, d/dresidual = identity.
    @staticmethod
    def forward(ctx, x, bias, residual, plan):
        ctx.plan = plan
        return plan.backend.dropout_add(x, bias, residual, plan.seed, plan.offset, plan.threshold, plan.scale)

    @staticmethod
    def backward(ctx, grad):
        gx = gb = gr = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gx = run(grad, ctx.plan, False)
        if ctx.needs_input_grad[1]:
            gb = gx.reshape(-1, gx.shape[-1]).sum(0)
        if ctx.needs_input_grad[2]:
            gr = grad
        return gx, gb, gr, None


def _dropout_add(x, bias, residual, p, training, seed, offset, generator, backend, name):
    p = contract.check_p(p, fn=name)
    if has_torch_function((x, bias, residual)):
        fn, args = (dropout_add, (x, residual)) if bias is None else (bias_dropout_add, (x, bias, residual))
        return handle_torch_function(fn, (x, bias, residual), *args, p, training, seed=seed, offset=offset,
                                     generator=generator, backend=backend)
    seed, offset = check_call_args(training, seed, offset, generator, backend, name)
    for arg, t in (("x", x), ("residual", residual)) + ((("bias", bias),) if bias is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}(): {arg} must be a Tensor, but got {type(t).__name__}")
        check_input(t, name)
    if residual.shape != x.shape:
        raise ValueError(f"{name}(): residual must have x's shape {tuple(x.shape)}, but got {tuple(residual.shape)}")
    if bias is not None and (x.dim() == 0 or bias.shape != x.shape[-1:]):
        raise ValueError(f"{name}(): bias must have shape (x.shape[-1],) = {tuple(x.shape[-1:])}, "
                         f"but got {tuple(bias.shape)}")
    others = [residual] + ([bias] if bias is not None else [])
    if any(t.dtype != x.dtype for t in others):
        raise TypeError(f"{name}(): x, bias and residual must have one dtype, but got "
                        f"{[str(t.dtype) for t in [x] + others]}")
    if any(t.device != x.device for t in others):
        raise ValueError(f"{name}(): x, bias and residual must be on one device")
    if not training or p == 0.0 or x.numel() == 0:
        return residual + (x if bias is None else x + bias)
    if recording() or torch._C._are_functorch_transforms_active() or _fwd._current_level >= 0:
        # Graphs and transforms take the composite: the same mask (dropout's, for the same seed
        # and offset) through the one masked path, with the unfused expression's rounding.
        return residual + masked(x if bias is None else x + bias, p, None, False, seed, offset, generator, backend,
                                 scale=scale_of(p), name=name)
    be = resolve(backend, x.device)
    seed, offset = seed_offset(seed, offset, x.numel(), p, x.device, generator, be)
    plan = Plan(p, seed, offset, be, None, scale_of(p))
    if be is cpu and (type(x) is torch.Tensor or type(x) is torch.nn.Parameter):
        # The C++ operator's own autograd node: no Python in the backward.
        return cpu.dropout_add(x, bias, residual, seed, offset, plan.threshold, plan.scale)
    return _DropoutAdd.apply(x, bias, residual, plan)


@ops.not_scriptable
def dropout_add(x, residual, p=0.5, training=True, *, seed=None, offset=0, generator=None, backend="auto"):
    """``residual + dropout(x, p)`` in one pass: reads x and residual once, writes one output.

    The mask is ``fastdrop.dropout``'s for the same seed and offset. Arithmetic is float32
    (float64 for float64) with one rounding, so 16-bit results can differ from the unfused
    expression by its extra rounding. Output is contiguous; non-contiguous inputs are copied.
    """
    return _dropout_add(x, None, residual, p, training, seed, offset, generator, backend, "dropout_add")


@ops.not_scriptable
def bias_dropout_add(x, bias, residual, p=0.5, training=True, *, seed=None, offset=0, generator=None,
                     backend="auto"):
    """``residual + dropout(x + bias, p)`` in one pass (Megatron's pattern); bias is (x.shape[-1],).

    ``bias=None`` is ``dropout_add``. Same mask and arithmetic as ``dropout_add``.
    """
    return _dropout_add(x, bias, residual, p, training, seed, offset, generator, backend, "bias_dropout_add")
