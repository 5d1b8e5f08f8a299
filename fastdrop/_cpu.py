"""The CPU path: the mask contract in vectorized numpy, applied chunk by chunk."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

from . import contract

CHUNK = 1 << 16  # elements per task: the Philox temporaries stay in cache
_pool: ThreadPoolExecutor | None = None
_pool_pid = -1


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():  # a forked child needs its own threads
        _pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()))
        _pool_pid = os.getpid()
    return _pool


def _apply_flat(xf, yf, seed, offset, threshold, scale, start, stop):
    keep = torch.from_numpy(contract.keep_bits(seed, offset + start, stop - start, threshold))
    xs, ys = xf[start:stop], yf[start:stop]
    if xs.dtype in (torch.float16, torch.bfloat16):
        vals = xs.float().mul_(scale)  # float32 math for 16-bit types, as PyTorch does
    else:
        vals = xs * torch.tensor(scale, dtype=xs.dtype)
    # masked_fill, not a multiply by 0: dropped inf/NaN become 0.
    ys.copy_(vals.masked_fill_(~keep, 0))


def apply(x: torch.Tensor, y: torch.Tensor, seed: int, offset: int, threshold: int, scale: float):
    """y = dropout(x) by the mask contract, for CPU tensors of one shape."""
    n = x.numel()
    if n == 0:
        return y
    if not (x.is_contiguous() and y.is_contiguous()):
        # Walk in logical order on contiguous copies; the mask is the same.
        tmp = torch.empty(x.shape, dtype=x.dtype)
        apply(x.contiguous(), tmp, seed, offset, threshold, scale)
        return y.copy_(tmp)
    xf, yf = x.view(-1), y.view(-1)
    starts = range(0, n, CHUNK)
    if len(starts) == 1:
        _apply_flat(xf, yf, seed, offset, threshold, scale, 0, n)
        return y
    futures = [_executor().submit(_apply_flat, xf, yf, seed, offset, threshold, scale, s, min(s + CHUNK, n))
               for s in starts]
    for f in futures:
        f.result()
    return y
