"""The one path every masked variant takes once training is on and p > 0 is settled.

Checks, the seed, then one autograd Function (eager, torch.func, forward-mode AD) or one
torch.library operator (compiled graphs, jit.trace, jit.script). Autograd saves a ``Mask``:
what decides the op, nothing per element.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.autograd.forward_ad as _fwd

from . import _rng, _sharded, contract, ops
from .backends import cpu
from ._dispatch import BACKENDS, apply_mask, check_input, resolve_backend

INFERENCE_INPLACE = ("Inplace update to inference tensor outside InferenceMode is not allowed.You can make a "
                     "clone to get a normal tensor before doing inplace update.See "
                     "https://github.com/pytorch/rfcs/pull/17 for more details.")  # PyTorch's text
VMAP_RANDOMNESS_ERROR = ("vmap: called random operation while in randomness error mode. Please either use the "
                         "'same' or 'different' randomness flags on vmap or perform the randomness operation out "
                         "of vmap")  # PyTorch's text
VMAP_INPLACE_UNBATCHED = ("vmap: Cannot ask for different inplace randomness on an unbatched tensor. This will "
                          "appear like same randomness. If this is necessary for your usage, please file an issue "
                          "with functorch.")  # PyTorch's text


@dataclass(slots=True)  # slots: built on every call, and cheap so
class Mask:
    """Everything that decides a masked op, and nothing per element."""

    p: float
    seed: int | torch.Tensor  # a 1-element device tensor under CUDA-graph capture
    offset: int
    backend: str
    noise_shape: tuple | None  # None: one bit per element
    scale: float
    affine: tuple | None = None  # (add, drop): keep ? x * scale + add : drop
    # torch.func.vmap levels active when the seed was drawn: ((level, randomness, batch size), ...).
    vmaps: tuple = ()
    pinned: bool = True  # the caller gave the seed
    # A DTensor shard: (lead, offsets), one stream range per index over x's first ``lead`` dims
    # (row-major), each over ``noise_shape`` (the trailing dims). See ``_sharded``.
    rows: tuple | None = None

    def apply(self, x, y):
        if self.backend == "meta":  # a shape and no values: nothing to compute
            return y
        if self.rows is None:
            return apply_mask(x, y, self.p, self.seed, self.offset, self.backend, noise_shape=self.noise_shape,
                              scale=self.scale, affine=self.affine)
        lead, offsets = self.rows
        for idx, off in zip(itertools.product(*(range(s) for s in x.shape[:lead])), offsets):
            apply_mask(x[idx], y[idx], self.p, self.seed, off, self.backend, noise_shape=self.noise_shape,
                       scale=self.scale, affine=self.affine)
        return y

    def linear(self):
        """The derivative's mask: keep * scale, the same bits without the affine part."""
        return self if self.affine is None else replace(self, affine=None)


class MaskedDropout(torch.autograd.Function):
    # y = keep ? x * scale (+ add) : (0 or drop). dy/dx = keep * scale: the linear form of the
    # same op, so backward and jvp are this Function again (and so on, for higher orders).
    @staticmethod
    def forward(x, mask, inplace):
        return mask.apply(x, x if inplace else torch.empty_like(x))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.mask, ctx.inplace = inputs
        if ctx.inplace:
            ctx.mark_dirty(x)

    @staticmethod
    def backward(ctx, grad):
        # Through autograd again only when it records (create_graph=True, or under torch.func).
        return run_mask(grad, ctx.mask.linear(), False), None, None

    @staticmethod
    def jvp(ctx, tangent, _mask, _inplace):
        # An in-place op updates its input's tangent in place.
        return run_mask(tangent, ctx.mask.linear(), ctx.inplace)

    @staticmethod
    def vmap(info, in_dims, x, mask, inplace):
        """One batch level of torch.func.vmap: the mask over the batched tensor, batch dim first.

        A mask drawn under this vmap level follows its randomness: "different" (and "error", with
        a pinned seed) takes the bits of the whole (batch, *sample) tensor, "same" one sample's
        bits for every sample. A mask drawn outside this level (a forward's mask in the
        backward of jacrev, say) is the same for every batch element.
        """
        randomness = _drawn_under(mask, info.batch_size)
        bdim = in_dims[0]  # x is the one tensor argument: the rule runs only when it is batched
        xb = x.movedim(bdim, 0)
        sample = tuple(xb.shape[1:]) if mask.noise_shape is None else tuple(mask.noise_shape)
        batch = info.batch_size if randomness in ("different", "error") else 1
        if mask.pinned and batch > 1:
            contract.check_offset(mask.offset, batch * math.prod(sample))
        inner = replace(mask, noise_shape=(batch,) + sample)
        y = MaskedDropout.apply(xb, inner, inplace)
        return (x, bdim) if inplace else (y, 0)


# Function.apply binds its arguments with inspect.signature on every call (about 20 us) when
# setup_context is defined; outside torch.func the C++ apply below it does the same work.
_base_apply = super(torch.autograd.Function, MaskedDropout).apply
_transforms_active = torch._C._are_functorch_transforms_active
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def run(x, mask, inplace):
    """MaskedDropout.apply(x, mask, inplace), without its per-call signature binding; through
    the C++ operator where it applies (``native``)."""
    if _transforms_active() or _wrapped(x):
        return MaskedDropout.apply(x, mask, inplace)
    if _fwd._current_level < 0:  # the operator has no jvp
        y = native(x, mask, inplace)
        if y is not None:
            return y
    return _base_apply(x, mask, inplace)


def native(x, mask, inplace):
    """The masked op through the CPU backend's C++ operator (its node runs the backward
    without Python), for a CPU tensor written out of place; None where it does not apply or
    is not built. Same bits as ``Mask.apply``."""
    if (inplace or mask.backend != "cpu" or mask.rows is not None
            or (type(x) is not torch.Tensor and type(x) is not torch.nn.Parameter)):
        return None
    return cpu.dropout(x, mask.seed, mask.offset, contract.keep_threshold(mask.p), mask.scale, mask.noise_shape,
                       mask.affine)


def _vmap_levels():
    from torch._functorch import pyfunctorch

    return tuple((i.level(), i.randomness(), i.batch_size())
                 for i in pyfunctorch.retrieve_all_functorch_interpreters() if hasattr(i, "randomness"))


def _drawn_under(mask, batch_size):
    """The randomness of the vmap level a rule is running for, if the mask was drawn under it.

    A vmap rule runs with its own level and those above it popped: its level is the lowest
    vmap level recorded at the draw above every level still active. None: drawn outside it.
    """
    from torch._functorch import pyfunctorch

    top = max((i.level() for i in pyfunctorch.retrieve_all_functorch_interpreters()), default=0)
    above = [m for m in mask.vmaps if m[0] > top]
    if not above:
        return None
    _, randomness, size = min(above)
    return randomness if size == batch_size else None


def recording() -> bool:
    """True where a graph is recorded or a TorchDispatchMode (make_fx, FlopCounterMode, ...)
    watches the ops: fastdrop is then the fastdrop::dropout operator, which they see. (Eager
    calls write through data pointers, which make_fx would not record: its graph would return
    an unwritten tensor.)"""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or _dispatch_modes() > 0


_dispatch_modes = torch._C._len_torch_dispatch_stack


def check_writable(t):
    # Before writing, as PyTorch does: a refused call leaves the tensor untouched.
    if t.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(INFERENCE_INPLACE)
    if torch.is_grad_enabled() and t.requires_grad:
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


def _in_checkpoint():
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith(("torch/utils/checkpoint.py", "torch\\utils\\checkpoint.py")):
            return True
        frame = frame.f_back
    return False


def check_call_args(training, seed, offset, generator, backend, name="dropout"):
    """Checks that need no tensor, done before any early return; returns (seed, offset)."""
    if not isinstance(training, (bool, np.bool_)):  # PyTorch's parser refuses None, ints, strings
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
    return contract.check_seed(seed), contract.check_offset(offset, 0)


def seed_offset(seed, offset, count, p, device, generator, backend):
    """The (seed, offset) of a call: the given ones, or reserved from the generator."""
    if seed is not None:
        return seed, contract.check_offset(offset, count)
    # p == 1 and meta tensors draw nothing: no stream bit decides anything there.
    if p == 1.0 or backend == "meta":
        return 0, 0
    return _rng.reserve(count, device, generator)


def _transformed(input, p, noise_shape, inplace, seed, offset, generator, backend, scale, affine):
    """Under torch.func transforms: a fresh seed drawn below them, then the Function (whose
    vmap rule batches the mask). The draw is a 63-bit seed with offset 0, as on CPU: the
    batched size of the call is not known until its vmap rules run."""
    vmaps = _vmap_levels()
    pinned = seed is not None
    if not pinned and any(r == "error" for _, r, _ in vmaps):
        raise RuntimeError(VMAP_RANDOMNESS_ERROR)
    different = [lv for lv, r, _ in vmaps if r == "different"]
    if different and torch._C._functorch.maybe_get_level(input) < max(different):
        # Not batched under a "different" level, whose rule would then never run: batch it there,
        # as PyTorch's random ops do, so each batch element gets its own mask.
        if inplace:
            raise RuntimeError(VMAP_INPLACE_UNBATCHED)
        input = input + torch.rand((), dtype=input.dtype, device=input.device).mul_(0)
    if not pinned:
        with torch._C._DisableFuncTorch():
            seed = (0 if p == 1.0 or backend == "meta" else
                    int(torch.empty((), dtype=torch.int64, device=input.device).random_(generator=generator)))
    mask = Mask(p, seed, offset, backend, noise_shape, scale, affine, vmaps, pinned)
    return MaskedDropout.apply(input, mask, inplace)


def masked(input, p, noise_shape, inplace, seed, offset, generator, backend, *, scale, affine=None,
           name="dropout"):
    """keep ? x * scale (+ add) : (0 or drop), keep bits from the contract (per noise element)."""
    check_input(input, name)
    if input.numel() == 0:
        return input
    if type(input) is not torch.Tensor and type(input) is not torch.nn.Parameter:
        if _sharded.is_dtensor(input):
            return _sharded.dtensor_masked(input, p, noise_shape, inplace, seed, offset, generator, backend, scale,
                                           affine, name)
        if _sharded.is_wrapper(input) and not torch.compiler.is_compiling():
            return _sharded.wrapper_masked(input, p, noise_shape, inplace, seed, offset, generator, backend, scale,
                                           affine)
    if recording():
        if generator is not None:
            raise ValueError("generator= is not supported under torch.compile, torch.jit.trace or a "
                             "TorchDispatchMode (make_fx): seed with torch.manual_seed, or pass seed=")
        return ops.traced_dropout(input, p, inplace, seed, offset, backend, noise_shape, scale, affine)
    count = input.numel() if noise_shape is None else math.prod(noise_shape)
    if input.is_neg():  # a lazily negated view (torch._neg_view): resolve it, as PyTorch's ops do
        y = masked(input.resolve_neg(), p, noise_shape, False, seed, offset, generator, backend, scale=scale,
                   affine=affine, name=name)
        return input.copy_(y) if inplace else y
    backend = resolve_backend(backend, input.device)
    if _transforms_active():
        if seed is not None:
            contract.check_offset(offset, count)
        return _transformed(input, p, noise_shape, inplace, seed, offset, generator, backend, scale, affine)
    if inplace:
        check_writable(input)
    seed, offset = seed_offset(seed, offset, count, p, input.device, generator, backend)
    return run_mask(input, Mask(p, seed, offset, backend, noise_shape, scale, affine), inplace)


def run_mask(input, mask, inplace):
    """The masked op: through the Function when autograd or torch.func needs to see it."""
    if _transforms_active() or (torch.is_grad_enabled() and input.requires_grad) or _fwd._current_level >= 0:
        return run(input, mask, inplace)
    y = native(input, mask, inplace)
    if y is not None:
        return y
    y = mask.apply(input, input if inplace else torch.empty_like(input))
    if inplace and not input.is_inference():  # written outside autograd: tell it, as in-place ops do
        torch.autograd.graph.increment_version(input)
    return y
