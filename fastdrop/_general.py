"""The general path: every call that does not go straight to the C++ operator.

``fastdrop.functional``'s functions send a call here unless it is the common case (a plain CPU or
CUDA tensor in eager mode, no seed, nothing watching). Here each case is chosen once, at the top:

- tensor subclasses: DTensor shards compute their part of the global mask (``_sharded``);
  ``__torch_dispatch__`` wrappers get the operator, which their dispatch unwraps;
- recorded calls (torch.compile, torch.export, jit.trace, TorchDispatchModes such as make_fx):
  the operator with the seed as a tensor drawn in the graph, so each run draws anew and two
  identical calls stay two;
- torch.func transforms and forward-mode AD: ``DropoutFunction``, whose vmap rule batches the mask;
- explicit seeds, in-place calls, ``generator=``, the reference and Triton backends.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as _fwd

from . import _library, _rng, _sharded, contract
from ._args import check_call_args, check_input, check_writable, noise_count
from .autograd import DropoutFunction, apply, run
from .backends import Plan, load_native, native, resolve
from .variants import assume_constant_result

VMAP_RANDOMNESS_ERROR = ("vmap: called random operation while in randomness error mode. Please either use the "
                         "'same' or 'different' randomness flags on vmap or perform the randomness operation out "
                         "of vmap")  # PyTorch's text
VMAP_INPLACE_UNBATCHED = ("vmap: Cannot ask for different inplace randomness on an unbatched tensor. This will "
                          "appear like same randomness. If this is necessary for your usage, please file an issue "
                          "with functorch.")  # PyTorch's text
_transforms_active = torch._C._are_functorch_transforms_active
_dispatch_modes = torch._C._len_torch_dispatch_stack
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def recording() -> bool:
    """True where a graph is recorded or a TorchDispatchMode (make_fx, FlopCounterMode, ...)
    watches the ops: the seed is then a tensor of the graph, not a host integer."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or _dispatch_modes() > 0


def _shared(noise_shape):
    return None if noise_shape is None else [d for d, s in enumerate(noise_shape) if s == 1]


def _signed(v):
    return None if v is None else contract.signed64(v)


def masked(input, p, noise_shape, inplace, seed, offset, generator, backend, *, scale, affine=None,
           name="dropout"):
    """keep ? x * scale (+ add) : (0 or drop), keep bits from the contract (per noise element),
    once the public function has checked its arguments, training is on and p > 0."""
    check_input(input, name)
    if input.numel() == 0:
        return input
    if type(input) not in _PLAIN:
        if _sharded.is_dtensor(input):
            return _dtensor(input, p, noise_shape, inplace, seed, offset, generator, backend, scale, affine, name)
        if _sharded.is_wrapper(input) and not torch.compiler.is_compiling():
            # Its __torch_dispatch__ gets the operator and hands it plain tensors, with the seed
            # drawn here, once, so that every tensor it holds gets the call's one mask.
            ops = load_native()
            if ops is not None:
                count = noise_count(noise_shape, input.numel())
                seed, offset = seed_offset(seed, offset, count, p, input.device, generator)
                fn = ops.dropout_ if inplace else ops.dropout
                return fn(input, p, _shared(noise_shape), scale, None if affine is None else list(affine),
                          _signed(seed), contract.signed64(offset))
    if recording():
        return _graph(input, p, noise_shape, inplace, seed, offset, generator, scale, affine)
    if input.is_neg():  # a lazily negated view (torch._neg_view): resolve it, as PyTorch's ops do
        y = masked(input.resolve_neg(), p, noise_shape, False, seed, offset, generator, backend, scale=scale,
                   affine=affine, name=name)
        return input.copy_(y) if inplace else y
    be = resolve(backend, input.device)
    count = noise_count(noise_shape, input.numel())
    if _transforms_active():
        return _transformed(input, p, noise_shape, inplace, seed, offset, count, generator, be, scale, affine)
    if inplace:
        check_writable(input)
    if be is native and _fwd._current_level < 0 and type(input) in _PLAIN:
        if seed is not None:
            contract.check_offset(offset, count)
        fn = _library.ops.dropout_ if inplace else _library.ops.dropout
        return fn(input, p, _shared(noise_shape), scale, None if affine is None else list(affine), _signed(seed),
                  contract.signed64(offset), generator)
    seed, offset = seed_offset(seed, offset, count, p, input.device, generator)
    return run(input, Plan(p, seed, offset, be, noise_shape, scale, affine, inplace))


def seed_offset(seed, offset, count, p, device, generator):
    """The (seed, offset) of a call drawn in Python: the given ones (offset checked against the
    call's size), or reserved from the generator as the C++ operators draw them."""
    if seed is not None:
        return seed, contract.check_offset(offset, count)
    # p == 1 and meta tensors draw nothing: no stream bit decides anything there.
    if p == 1.0 or device.type == "meta":
        return 0, 0
    return _rng.reserve(count, device, generator)


@assume_constant_result
def _loaded() -> bool:
    """Whether the C++ operators are loaded (built and loaded now if need be): called while a
    graph is traced, as plain Python, before the graph names the operator."""
    return load_native() is not None


def _graph(input, p, noise_shape, inplace, seed, offset, generator, scale, affine):
    """A recorded call: the operator, its seed a tensor of the graph."""
    if generator is not None:
        raise ValueError("generator= is not supported under torch.compile, torch.export, torch.jit.trace or a "
                         "TorchDispatchMode (make_fx): seed with torch.manual_seed, or pass seed=")
    if seed is None:
        # Drawn as a random op of the graph, so each run draws anew and torch.manual_seed
        # reproduces it.
        seed_t = _rng.graph_seed(input.device, torch.compiler.is_compiling())
    else:
        contract.check_offset(offset)  # against the call's size by the operator: sizes may be symbolic here
        seed_t = torch.tensor([contract.signed64(seed)], dtype=torch.int64, device=input.device)
    if not _loaded():  # no C++ operators: the reference path, in torch ops, traced as they are
        from .backends import reference

        return run(input, Plan(p, seed_t, offset, reference, noise_shape, scale, affine, inplace))
    y = torch.ops.fastdrop.dropout.default(input, p, _shared(noise_shape), scale,
                                           None if affine is None else list(affine), None,
                                           contract.signed64(offset), None, seed_t)
    return input.copy_(y) if inplace else y


def _dtensor(input, p, noise_shape, inplace, seed, offset, generator, backend, scale, affine, name):
    """A DTensor: each rank computes its local shard's part of the global mask."""
    local, noise, local_shape, start = _sharded.local_part(input, noise_shape, affine, name)
    be = resolve(backend, local.device)
    # Every rank reserves the whole tensor's range: the same (seed, offset) on ranks whose
    # generators agree (the same torch.manual_seed on every rank, as DTensor expects).
    seed, offset = seed_offset(seed, offset, math.prod(noise), p, local.device, generator)
    lead, rows, local_noise = _sharded.shard_rows(noise, local_shape, start, offset)
    if lead:
        plan = Plan(p, seed, offset, be, local_noise, scale, affine, rows=(lead, rows))
    else:
        plan = Plan(p, seed, rows[0], be, local_noise, scale, affine)
    out = _sharded.as_dtensor(run(local, plan), input)
    return input.copy_(out) if inplace else out


def _transformed(input, p, noise_shape, inplace, seed, offset, count, generator, backend, scale, affine):
    """Under torch.func transforms: a fresh seed drawn below them, then the Function (whose vmap
    rule batches the mask)."""
    vmaps = _vmap_levels()
    pinned = seed is not None
    if pinned:
        contract.check_offset(offset, count)
    elif any(r == "error" for _, r, _ in vmaps):
        raise RuntimeError(VMAP_RANDOMNESS_ERROR)
    different = [lv for lv, r, _ in vmaps if r == "different"]
    if different and torch._C._functorch.maybe_get_level(input) < max(different):
        # Not batched under a "different" level, whose rule would then never run: batch it there,
        # as PyTorch's random ops do, so each batch element gets its own mask.
        if inplace:
            raise RuntimeError(VMAP_INPLACE_UNBATCHED)
        input = input + torch.rand((), dtype=input.dtype, device=input.device).mul_(0)
    if not pinned:
        seed = 0 if p == 1.0 or input.device.type == "meta" else _rng.under_transforms(input.device, generator)
    plan = Plan(p, seed, offset, backend, noise_shape, scale, affine, inplace, vmaps, pinned)
    return apply(input, plan)


def _vmap_levels():
    from torch._functorch import pyfunctorch

    return tuple((i.level(), i.randomness(), i.batch_size())
                 for i in pyfunctorch.retrieve_all_functorch_interpreters() if hasattr(i, "randomness"))


# ---- fused residual forms -------------------------------------------------------------------

class _DropoutAdd(torch.autograd.Function):
    # The reference and Triton backends' residual form. Saves the Plan only. d/dx = the dropout
    # mask (regenerated), d/dbias = its sum over the leading dims, d/dresidual = identity.
    @staticmethod
    def forward(ctx, x, bias, residual, plan):
        ctx.plan = plan
        return plan.backend.dropout_add(x, bias, residual, plan)

    @staticmethod
    def backward(ctx, grad):
        gx = gb = gr = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gx = run(grad, ctx.plan.linear())
        if ctx.needs_input_grad[1]:
            gb = gx.reshape(-1, gx.shape[-1]).sum(0)
        if ctx.needs_input_grad[2]:
            gr = grad
        return gx, gb, gr, None


def dropout_add(x, bias, residual, p, training, seed, offset, generator, backend, name):
    """``residual + dropout(x + bias)`` after the public function's p check."""
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
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    plain = all(type(t) in _PLAIN for t in [x] + others)
    if not plain or _transforms_active() or _fwd._current_level >= 0:
        # Transforms, forward-mode AD and subclasses take the composite: the same mask (dropout's,
        # for the same seed and offset) through the one masked path, with the unfused expression's
        # rounding.
        return residual + masked(x if bias is None else x + bias, p, None, False, seed, offset, generator, backend,
                                 scale=scale, name=name)
    if recording():
        if generator is not None:
            raise ValueError("generator= is not supported under torch.compile, torch.export, torch.jit.trace or a "
                             "TorchDispatchMode (make_fx): seed with torch.manual_seed, or pass seed=")
        if not _loaded():
            return residual + masked(x if bias is None else x + bias, p, None, False, seed, offset, None, backend,
                                     scale=scale, name=name)
        if seed is None:
            seed_t = _rng.graph_seed(x.device, torch.compiler.is_compiling())
        else:
            contract.check_offset(offset)
            seed_t = torch.tensor([contract.signed64(seed)], dtype=torch.int64, device=x.device)
        return torch.ops.fastdrop.dropout_add.default(x, bias, residual, p, None, contract.signed64(offset), None,
                                                      seed_t)
    be = resolve(backend, x.device)
    if be is native:
        if seed is not None:
            contract.check_offset(offset, x.numel())
        return _library.ops.dropout_add(x, bias, residual, p, _signed(seed), contract.signed64(offset), generator)
    seed, offset = seed_offset(seed, offset, x.numel(), p, x.device, generator)
    return _DropoutAdd.apply(x, bias, residual, Plan(p, seed, offset, be, None, scale))


__all__ = ["DropoutFunction", "dropout_add", "masked", "recording"]
