"""Tensor subclasses: DTensor shards take their part of the global tensor's mask; wrapper
subclasses get the operator through their ``__torch_dispatch__``.

A DTensor's local shard starts at global coordinates ``start``; its element at local
coordinates ``c`` is the global tensor's element ``start + c``, whose mask index (the
contract's logical index, over the noise shape) is ``sum((start_k + c_k) * m_k)`` with ``m``
the noise shape's row-major strides (0 on its size-1 dims). Every dim after the last one the
shard cuts is whole, so each row over the leading dims is one contiguous range of the stream:
one masked call per row, no communication, no copy.
"""

from __future__ import annotations

import itertools

import torch

from .contract import noise_strides


def is_dtensor(t) -> bool:
    cls = type(t)
    return cls.__name__ == "DTensor" and cls.__module__.startswith("torch.distributed")


def is_wrapper(t) -> bool:
    """A __torch_dispatch__ subclass: its data is not in its own storage."""
    return type(t).__torch_dispatch__ is not torch.Tensor.__torch_dispatch__


def shard_rows(noise, local_shape, start, offset):
    """(lead, row offsets, local noise): the local shard's mask as rows of the stream.

    ``lead`` leading dims are iterated (row-major); each row's bits are the contiguous range
    at its offset, over the local noise shape's trailing dims.
    """
    strides = noise_strides(noise)
    local_noise = tuple(1 if n == 1 else s for n, s in zip(noise, local_shape))
    cut = [d for d, (n, ln) in enumerate(zip(noise, local_noise)) if n != ln]  # dims the shard cuts
    lead = cut[-1] if cut else 0
    base = offset + sum(s * m for s, m in zip(start, strides))
    rows = tuple(base + sum(c * m for c, m in zip(coords, strides))
                 for coords in itertools.product(*(range(s) for s in local_shape[:lead])))
    return lead, rows, local_noise[lead:]


def local_part(input, noise_shape, affine, name):
    """(local shard, global noise shape, the shard's local shape and global start) of a DTensor."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    from torch.distributed.tensor.placement_types import Partial

    if affine is not None and any(isinstance(pl, Partial) for pl in input.placements):
        raise ValueError(
            f"{name}(): alpha dropout is affine, so it cannot act on a Partial DTensor (every rank would add "
            f"the offset to its partial sum): redistribute to Replicate or Shard first")
    noise = tuple(input.shape) if noise_shape is None else tuple(noise_shape)
    local_shape, start = compute_local_shape_and_global_offset(tuple(input.shape), input.device_mesh,
                                                               input.placements)
    return input.to_local(), noise, tuple(local_shape), tuple(start)


def as_dtensor(y, like):
    """The local result y as a DTensor placed as ``like``."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(y, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                              stride=like.stride())


def rng_in_sync(group=None, device="cpu") -> bool:
    """Whether every rank of ``group`` holds the same generator state on ``device`` (a
    collective: call it on every rank). Unseeded fastdrop calls on DTensors draw their seed
    from that generator, so ranks that disagree would draw different masks."""
    import hashlib

    import torch.distributed as dist

    device = torch.device(device)
    state = torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device)
    digest = hashlib.sha256(state.numpy().tobytes()).hexdigest()
    digests = [None] * dist.get_world_size(group)
    dist.all_gather_object(digests, digest, group=group)
    return len(set(digests)) == 1
