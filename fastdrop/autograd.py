"""``DropoutFunction``: fastdrop's dropout as a ``torch.autograd.Function``.

The C++ operator (``torch.ops.fastdrop.dropout``) has its own autograd node, which every call on a
plain tensor takes. This Function is the form that Python sees: it is what torch.func's
transforms (grad, vmap, jacrev, ...), forward-mode AD, DTensor shards and the reference and
Triton backends run, and it is public, for your own autograd code::

    y = fastdrop.DropoutFunction.apply(x, 0.1, 1234)       # fastdrop.dropout(x, 0.1, seed=1234)
    y = fastdrop.DropoutFunction.apply(x, 0.1, 1234, 64)   # ... seed=1234, offset=64

It saves the plan (seed, offset, p, noise shape, scale), never a mask: the backward regenerates
the mask, and the derivative (keep * scale) is this Function again, so higher orders, jvp and
vmap follow.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.autograd.forward_ad as _fwd

from . import contract
from ._args import check_input, resolve_noise_shape
from .backends import Plan, resolve
from .variants import scale_of


class DropoutFunction(torch.autograd.Function):
    """y = keep ? x * scale : 0 by the mask contract, with no saved mask.

    ``DropoutFunction.apply(input, p, seed, offset=0, noise_shape=None)``: the same bits as
    ``fastdrop.dropout(input, p, seed=seed, offset=offset, noise_shape=noise_shape)``. ``seed`` is
    an int in [0, 2**64) (the mask contract's seed). Usable inside your own ``autograd.Function``,
    under ``torch.func`` (``grad``, ``vmap``, ``jacrev``, ``jvp``) and forward-mode AD. (fastdrop's
    own calls pass a settled ``plan`` instead.)
    """

    @staticmethod
    def forward(input, p, seed, offset=0, noise_shape=None, plan=None):
        return (plan or _plan_of(input, p, seed, offset, noise_shape)).run(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, p, seed, offset, noise_shape, plan = inputs
        ctx.plan = plan or _plan_of(x, p, seed, offset, noise_shape)
        if ctx.plan.inplace:
            ctx.mark_dirty(x)

    @staticmethod
    def backward(ctx, grad):
        # dy/dx = keep * scale: the linear form of the same op (through autograd again only where
        # it records: create_graph=True, or under torch.func).
        return run(grad, ctx.plan.linear()), None, None, None, None, None

    @staticmethod
    def jvp(ctx, tangent, *_):
        # An in-place op updates its input's tangent in place.
        return run(tangent, replace(ctx.plan.linear(), inplace=ctx.plan.inplace))

    @staticmethod
    def vmap(info, in_dims, x, p, seed, offset, noise_shape, plan):
        """One batch level of torch.func.vmap: the mask over the batched tensor, batch dim first.

        A mask drawn under this vmap level follows its randomness: "different" (and "error", with
        a pinned seed) takes the bits of the whole (batch, *sample) tensor, "same" one sample's
        bits for every sample. A mask drawn outside this level (a forward's mask in the
        backward of jacrev, say) is the same for every batch element.
        """
        plan = plan or _plan_of(x, p, seed, offset, noise_shape, batched=in_dims[0])
        randomness = _drawn_under(plan, info.batch_size)
        bdim = in_dims[0]  # x is the one tensor argument: the rule runs only when it is batched
        xb = x.movedim(bdim, 0)
        sample = tuple(xb.shape[1:]) if plan.noise_shape is None else tuple(plan.noise_shape)
        batch = info.batch_size if randomness in ("different", "error") else 1
        if plan.pinned and batch > 1:
            contract.check_offset(plan.offset, batch * math.prod(sample))
        y = apply(xb, replace(plan, noise_shape=(batch,) + sample))
        return (x, bdim) if plan.inplace else (y, 0)


def _plan_of(input, p, seed, offset, noise_shape, batched=None):
    """The plan of a public DropoutFunction.apply call, its arguments checked."""
    if not isinstance(input, torch.Tensor):
        check_input(input, "DropoutFunction")
    shape = input.shape if batched is None else input.movedim(batched, 0).shape[1:]
    p = contract.check_p(p, fn="DropoutFunction")
    seed = contract.check_seed(seed)
    noise = None if noise_shape is None else resolve_noise_shape(noise_shape, shape)
    offset = contract.check_offset(offset, math.prod(shape) if noise is None else math.prod(noise))
    return Plan(p, seed, offset, resolve("auto", input.device), noise, scale_of(p))


# Function.apply binds its arguments with inspect.signature on every call (about 20 us) when
# setup_context is defined; outside torch.func the C++ apply below it does the same work.
_base_apply = super(torch.autograd.Function, DropoutFunction).apply
_function_apply = DropoutFunction.apply
_transforms_active = torch._C._are_functorch_transforms_active
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def apply(x, plan):
    """The Function on x with a settled plan."""
    if _transforms_active() or _wrapped(x):
        return _function_apply(x, None, None, 0, None, plan)
    return _base_apply(x, None, None, 0, None, plan)


def run(x, plan):
    """The op on x through the Function where autograd, forward-mode AD or torch.func must see it,
    else the backend straight."""
    if (_transforms_active() or _wrapped(x) or _fwd._current_level >= 0
            or (torch.is_grad_enabled() and x.requires_grad)):
        return apply(x, plan)
    y = plan.run(x)
    if plan.inplace and not x.is_inference():
        torch.autograd.graph.increment_version(x)  # written outside autograd: tell it, as in-place ops do
    return y


def _drawn_under(plan, batch_size):
    """The randomness of the vmap level a rule is running for, if the mask was drawn under it.

    A vmap rule runs with its own level and those above it popped: its level is the lowest
    vmap level recorded at the draw above every level still active. None: drawn outside it.
    """
    from torch._functorch import pyfunctorch

    top = max((i.level() for i in pyfunctorch.retrieve_all_functorch_interpreters()), default=0)
    above = [m for m in plan.vmaps if m[0] > top]
    if not above:
        return None
    _, randomness, size = min(above)
    return randomness if size == batch_size else None
