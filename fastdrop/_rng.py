"""Seeds drawn in Python: the calls that do not reach the C++ operators' own draw.

The C++ operators draw an unseeded eager call's seed themselves (``fastdrop/csrc/ops.cpp``), as
ATen's random ops do. The draws here follow the same rules, for the paths that run elsewhere:

- ``reserve``: eager calls on the reference and Triton backends. CUDA tensors take the CUDA
  generator's seed and offset, advanced past the call's range: the generator's offset counts
  Philox calls (4 stream elements each), rounded up to a multiple of 4 as PyTorch keeps it, and
  the call's stream offset is 4 times it. CPU tensors take a fresh 63-bit seed from the CPU
  generator (what ATen's ``random_()`` of an int64 tensor draws), offset 0.
- ``under_transforms``: under torch.func, a 63-bit seed drawn below the transforms.
- ``graph_seed``: compiled graphs, jit.trace and TorchDispatchModes get the seed as a 1-element
  int64 tensor drawn in the graph, so each run draws anew, and two identical calls in one graph
  stay two. (TorchScript calls the operator without a seed: it draws its own at each run.)
"""

from __future__ import annotations

import threading

import torch

_lock = threading.Lock()  # get_offset/set_offset is not atomic
_local = threading.local()


def reserve(count: int, device: torch.device, generator: torch.Generator | None):
    """A (seed, offset) whose stream range [offset, offset + count) no other call gets. Under
    CUDA-graph capture the seed is a 1-element int64 device tensor drawn by each replay."""
    cuda = device.type == "cuda"  # read once: each read of torch.device.type costs about 0.6 us
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if generator is not None and generator.device != device:
        raise ValueError(
            f"generator is on {generator.device} but the input is on {device}: "
            f"pass a generator of the input's device"
        )
    if cuda:
        gen = generator or torch.cuda.default_generators[device.index]
        if torch.cuda.is_current_stream_capturing():
            # Host integers would be baked into the graph (one mask on every replay). A seed
            # drawn on the device by PyTorch's graph-safe RNG is drawn anew by each replay;
            # the kernels read it through a pointer.
            return torch.empty(1, dtype=torch.int64, device=device).random_(generator=gen), 0
        with _lock:
            base = gen.get_offset()
            gen.set_offset(base + ((count + 3) // 4 + 3) // 4 * 4)
            return gen.initial_seed(), 4 * base
    # random_() and random_(generator=None) draw the same; the keyword costs 0.3 us
    t = _seed_tensor()
    return (t.random_() if generator is None else t.random_(generator=generator)).item(), 0


def _seed_tensor() -> torch.Tensor:
    # One per thread, reused: a fresh tensor per call cost 2.4 us of a 3.7 us draw.
    t = getattr(_local, "seed", None)
    if t is None:
        t = _local.seed = torch.empty((), dtype=torch.int64)
    return t


def under_transforms(device: torch.device, generator: torch.Generator | None) -> int:
    """A 63-bit seed, offset 0, drawn outside torch.func's transforms (the batched size of the
    call is not known until its vmap rules run, so no offset range is reserved)."""
    with torch._C._DisableFuncTorch():
        return int(torch.empty((), dtype=torch.int64, device=device).random_(generator=generator))


def graph_seed(device: torch.device, compiled: bool) -> torch.Tensor:
    """The seed of a recorded call, as a graph value. Compiled graphs take randint below 2**62,
    inside every backend's randint bound; jit.trace and dispatch modes the eager CPU draw itself,
    so that a CPU call draws the mask it draws eagerly."""
    if compiled:
        return torch.randint(0, 1 << 62, [1], dtype=torch.int64, device=device)
    return torch.empty(1, dtype=torch.int64, device=device).random_()
