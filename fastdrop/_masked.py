"""The one path every masked variant takes once training is on and p > 0 is settled.

``masked`` routes a call (tensor subclasses, recorded graphs, torch.func), draws its seed,
builds its ``Plan`` and runs it: through the backend's native autograd node where it has one
(the CPU backend's C++ operator), else through one autograd Function (which torch.func and
forward-mode AD also see), else straight to the backend. A ``Plan`` is everything that decides
the op and nothing per element: autograd saves it, and the backward runs it again.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import torch
import torch.autograd.forward_ad as _fwd

from . import _rng, _sharded, contract, ops
from ._args import check_input, check_writable, noise_count
from .backends import meta, resolve

VMAP_RANDOMNESS_ERROR = ("vmap: called random operation while in randomness error mode. Please either use the "
                         "'same' or 'different' randomness flags on vmap or perform the randomness operation out "
                         "of vmap")  # PyTorch's text
VMAP_INPLACE_UNBATCHED = ("vmap: Cannot ask for different inplace randomness on an unbatched tensor. This will "
                          "appear like same randomness. If this is necessary for your usage, please file an issue "
                          "with functorch.")  # PyTorch's text


@dataclass(slots=True)  # slots: built on every call, and cheap so
class Plan:
    """Everything that decides a masked op, and nothing per element."""

    p: float
    seed: int | torch.Tensor  # a 1-element device tensor under CUDA-graph capture
    offset: int
    backend: object  # a module of fastdrop.backends
    noise_shape: tuple | None  # None: one bit per element
    scale: float
    affine: tuple | None = None  # (add, drop): keep ? x * scale + add : drop
    # torch.func.vmap levels active when the seed was drawn: ((level, randomness, batch size), ...).
    vmaps: tuple = ()
    pinned: bool = True  # the caller gave the seed
    # A DTensor shard: (lead, offsets), one stream range per index over x's first ``lead`` dims
    # (row-major), each over ``noise_shape`` (the trailing dims). See ``_sharded``.
    rows: tuple | None = None
    threshold: int = field(init=False)

    def __post_init__(self):
        self.threshold = contract.keep_threshold(self.p)

    def apply(self, x, y):
        """y = the op on x (y may be x)."""
        if self.rows is None:
            return self.backend.apply(x, y, self.seed, self.offset, self.threshold, self.scale,
                                      noise_shape=self.noise_shape, affine=self.affine)
        lead, offsets = self.rows
        for idx, off in zip(itertools.product(*(range(s) for s in x.shape[:lead])), offsets):
            self.backend.apply(x[idx], y[idx], self.seed, off, self.threshold, self.scale,
                               noise_shape=self.noise_shape, affine=self.affine)
        return y

    def linear(self):
        """The derivative's plan: keep * scale, the same bits without the affine part."""
        return self if self.affine is None else replace(self, affine=None)


class MaskedDropout(torch.autograd.Function):
    # y = keep ? x * scale (+ add) : (0 or drop). dy/dx = keep * scale: the linear form of the
    # same op, so backward and jvp are this Function again (and so on, for higher orders).
    @staticmethod
    def forward(x, plan, inplace):
        y = x if inplace else torch.empty_like(x)
        if plan.rows is not None:
            return plan.apply(x, y)
        return plan.backend.apply(x, y, plan.seed, plan.offset, plan.threshold, plan.scale,
                                  noise_shape=plan.noise_shape, affine=plan.affine)  # one frame less than plan.apply

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.plan, ctx.inplace = inputs
        if ctx.inplace:
            ctx.mark_dirty(x)

    @staticmethod
    def backward(ctx, grad):
        # Through autograd again only when it records (create_graph=True, or under torch.func).
        return run(grad, ctx.plan.linear(), False), None, None

    @staticmethod
    def jvp(ctx, tangent, _plan, _inplace):
        # An in-place op updates its input's tangent in place.
        return run(tangent, ctx.plan.linear(), ctx.inplace)

    @staticmethod
    def vmap(info, in_dims, x, plan, inplace):
        """One batch level of torch.func.vmap: the mask over the batched tensor, batch dim first.

        A mask drawn under this vmap level follows its randomness: "different" (and "error", with
        a pinned seed) takes the bits of the whole (batch, *sample) tensor, "same" one sample's
        bits for every sample. A mask drawn outside this level (a forward's mask in the
        backward of jacrev, say) is the same for every batch element.
        """
        randomness = _drawn_under(plan, info.batch_size)
        bdim = in_dims[0]  # x is the one tensor argument: the rule runs only when it is batched
        xb = x.movedim(bdim, 0)
        sample = tuple(xb.shape[1:]) if plan.noise_shape is None else tuple(plan.noise_shape)
        batch = info.batch_size if randomness in ("different", "error") else 1
        if plan.pinned and batch > 1:
            contract.check_offset(plan.offset, batch * math.prod(sample))
        inner = replace(plan, noise_shape=(batch,) + sample)
        y = MaskedDropout.apply(xb, inner, inplace)
        return (x, bdim) if inplace else (y, 0)


# Function.apply binds its arguments with inspect.signature on every call (about 20 us) when
# setup_context is defined; outside torch.func the C++ apply below it does the same work.
_base_apply = super(torch.autograd.Function, MaskedDropout).apply
_transforms_active = torch._C._are_functorch_transforms_active
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_dispatch_modes = torch._C._len_torch_dispatch_stack


def run(x, plan, inplace):
    """The op: the backend's native node where it has one (out of place, a plain tensor), else
    the autograd Function where autograd, forward-mode AD or torch.func must see it, else the
    backend straight."""
    if _transforms_active() or _wrapped(x):
        return MaskedDropout.apply(x, plan, inplace)
    forward_ad = _fwd._current_level >= 0
    if not (inplace or forward_ad or plan.rows is not None) and (type(x) is torch.Tensor
                                                                 or type(x) is torch.nn.Parameter):
        y = plan.backend.fresh(x, plan.seed, plan.offset, plan.threshold, plan.scale, plan.noise_shape, plan.affine)
        if y is not None:
            return y
    if forward_ad or (torch.is_grad_enabled() and x.requires_grad):
        return _base_apply(x, plan, inplace)
    y = plan.apply(x, x if inplace else torch.empty_like(x))
    if inplace and not x.is_inference():  # written outside autograd: tell it, as in-place ops do
        torch.autograd.graph.increment_version(x)
    return y


def recording() -> bool:
    """True where a graph is recorded or a TorchDispatchMode (make_fx, FlopCounterMode, ...)
    watches the ops: fastdrop is then the fastdrop::dropout operator, which they see. (Eager
    calls write through data pointers, which make_fx would not record: its graph would return
    an unwritten tensor.)"""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or _dispatch_modes() > 0


def seed_offset(seed, offset, count, p, device, generator, backend):
    """The (seed, offset) of a call: the given ones (offset checked against the call's size),
    or reserved from the generator."""
    if seed is not None:
        return seed, contract.check_offset(offset, count)
    # p == 1 and meta tensors draw nothing: no stream bit decides anything there.
    if p == 1.0 or backend is meta:
        return 0, 0
    return _rng.reserve(count, device, generator)


def masked(input, p, noise_shape, inplace, seed, offset, generator, backend, *, scale, affine=None,
           name="dropout"):
    """keep ? x * scale (+ add) : (0 or drop), keep bits from the contract (per noise element)."""
    check_input(input, name)
    if input.numel() == 0:
        return input
    if type(input) is not torch.Tensor and type(input) is not torch.nn.Parameter:
        if _sharded.is_dtensor(input):
            return _dtensor(input, p, noise_shape, inplace, seed, offset, generator, backend, scale, affine, name)
        if _sharded.is_wrapper(input) and not torch.compiler.is_compiling():
            # Its __torch_dispatch__ gets the registered operator, with a seed drawn as in eager.
            count = noise_count(noise_shape, input.numel())
            seed, offset = seed_offset(seed, offset, count, p, input.device, generator, resolve(backend, input.device))
            return ops.traced_dropout(input, p, inplace, seed, offset, backend, noise_shape, scale, affine)
    if recording():
        if generator is not None:
            raise ValueError("generator= is not supported under torch.compile, torch.jit.trace or a "
                             "TorchDispatchMode (make_fx): seed with torch.manual_seed, or pass seed=")
        return ops.traced_dropout(input, p, inplace, seed, offset, backend, noise_shape, scale, affine)
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
    seed, offset = seed_offset(seed, offset, count, p, input.device, generator, be)
    return run(input, Plan(p, seed, offset, be, noise_shape, scale, affine), inplace)


def _dtensor(input, p, noise_shape, inplace, seed, offset, generator, backend, scale, affine, name):
    """A DTensor: each rank computes its local shard's part of the global mask."""
    local, noise, local_shape, start = _sharded.local_part(input, noise_shape, affine, name)
    be = resolve(backend, local.device)
    # Every rank reserves the whole tensor's range: the same (seed, offset) on ranks whose
    # generators agree (the same torch.manual_seed on every rank, as DTensor expects).
    seed, offset = seed_offset(seed, offset, math.prod(noise), p, local.device, generator, be)
    lead, rows, local_noise = _sharded.shard_rows(noise, local_shape, start, offset)
    if lead:
        plan = Plan(p, seed, offset, be, local_noise, scale, affine, rows=(lead, rows))
    else:
        plan = Plan(p, seed, rows[0], be, local_noise, scale, affine)
    out = _sharded.as_dtensor(run(local, plan, False), input)
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
        seed = 0 if p == 1.0 or backend is meta else _rng.under_transforms(input.device, generator)
    plan = Plan(p, seed, offset, backend, noise_shape, scale, affine, vmaps, pinned)
    return MaskedDropout.apply(input, plan, inplace)


def _vmap_levels():
    from torch._functorch import pyfunctorch

    return tuple((i.level(), i.randomness(), i.batch_size())
                 for i in pyfunctorch.retrieve_all_functorch_interpreters() if hasattr(i, "randomness"))


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
