"""The CPU path: the mask contract's keep bits (numba, else numpy), applied chunk by chunk."""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from . import _jit

CHUNK = 1 << 16  # elements per task: the temporaries stay in cache
HALF_TYPES = (torch.float16, torch.bfloat16)
_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked child needs its own threads
            _pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()))
            _pool_pid = os.getpid()
        return _pool


def _chunked(fn, n):
    # fn(start, stop) over [0, n) in CHUNK pieces, on the pool when there is more than one.
    starts = range(0, n, CHUNK)
    if len(starts) == 1:
        fn(0, n)
        return
    inference = torch.is_inference_mode_enabled()
    for f in [_executor().submit(_in_worker, fn, s, min(s + CHUNK, n), inference) for s in starts]:
        f.result()


def _in_worker(fn, start, stop, inference):
    # Grad and inference modes are per thread: a worker takes the caller's inference mode and
    # no autograd, so it may write into the caller's views and inference tensors.
    with torch.inference_mode(inference), torch.no_grad():
        fn(start, stop)


def _scaled(xs, scale):
    # x * scale in the kernels' arithmetic: float32 for 16-bit types (as PyTorch does).
    if xs.dtype in HALF_TYPES:
        return xs.float().mul_(scale)
    return xs * torch.tensor(scale, dtype=xs.dtype)


def _transform(xs, keep, scale, affine):
    """keep ? x * scale : 0, or with affine=(add, drop): keep ? x * scale + add : drop.

    The affine form rounds as PyTorch's alpha dropout, x.mul(noise).add_(b): x * scale is
    rounded to x's dtype before the add. ``keep`` broadcasts to ``xs``.
    """
    vals = _scaled(xs, scale)
    if affine is None:
        # masked_fill, not a multiply by 0: dropped inf/NaN become 0.
        return vals.masked_fill_(~keep, 0)
    add, drop = affine
    if xs.dtype in HALF_TYPES:
        vals = vals.to(xs.dtype).float()
    return vals.add_(add).masked_fill_(~keep, drop)


def _apply_flat(xf, yf, seed, offset, threshold, scale, affine, start, stop):
    xs, ys = xf[start:stop], yf[start:stop]
    if _jit.dropout_values is not None and affine is None and xs.dtype in (torch.float32, torch.float64):
        # One compiled pass: read x, write y (numpy views share the tensors' memory).
        _jit.dropout_values(xs.detach().numpy(), ys.detach().numpy(), seed, offset + start, threshold, scale)
        return
    keep = torch.from_numpy(_jit.keep_bits(seed, offset + start, stop - start, threshold))
    ys.copy_(_transform(xs, keep, scale, affine))


def apply(x: torch.Tensor, y: torch.Tensor, seed: int, offset: int, threshold: int, scale: float, *,
          noise_shape=None, affine=None):
    """y = dropout(x) by the mask contract, for CPU tensors of one shape.

    ``noise_shape`` (x.dim() entries, each 1 or x's size): one keep bit per element of
    that shape, the bit at its row-major index, shared along the size-1 dims.
    ``affine=(add, drop)``: alpha dropout's form (see ``_transform``).
    """
    n = x.numel()
    if n == 0:
        return y
    if noise_shape is not None:
        count = math.prod(noise_shape)
        bits = _jit.keep_bits(seed, offset, count, threshold)
        lead = next((d for d, s in enumerate(noise_shape) if s == 1), len(noise_shape))
        if (_jit.block_values is not None and affine is None and x.dtype in (torch.float32, torch.float64)
                and x.is_contiguous() and y.is_contiguous() and all(s == 1 for s in noise_shape[lead:])):
            # Channel dropout and drop path: each keep bit covers one contiguous block of x.
            _jit.block_values(x.detach().view(count, -1).numpy(), y.detach().view(count, -1).numpy(), bits, scale)
            return y
        keep = torch.from_numpy(bits).reshape(noise_shape)
        return y.copy_(_transform(x, keep, scale, affine))
    if not (x.is_contiguous() and y.is_contiguous()):
        # Walk in logical order on contiguous copies; the mask is the same.
        tmp = torch.empty(x.shape, dtype=x.dtype)
        apply(x.contiguous(), tmp, seed, offset, threshold, scale, affine=affine)
        return y.copy_(tmp)
    xf, yf = x.view(-1), y.view(-1)
    _chunked(lambda s, e: _apply_flat(xf, yf, seed, offset, threshold, scale, affine, s, e), n)
    return y


def dropout_add(x, bias, residual, y, seed: int, offset: int, threshold: int, scale: float):
    """y = residual + dropout(x + bias) in one pass; contiguous tensors of one shape.

    Float32 arithmetic for 16/32-bit types (float64 for float64), rounded once at the end,
    in the order of the fused kernel: (x + bias) * scale, masked, + residual.
    """
    n = x.numel()
    if n == 0:
        return y
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, rf, yf = x.view(-1), residual.view(-1), y.view(-1)
    width = x.shape[-1] if x.dim() else 1

    def run(start, stop):
        keep = torch.from_numpy(_jit.keep_bits(seed, offset + start, stop - start, threshold))
        vals = xf[start:stop].to(compute, copy=True)
        if bias is not None:
            idx = torch.arange(start, stop) % width
            vals = vals.add_(bias.to(compute)[idx])
        vals = vals.mul_(torch.tensor(scale, dtype=compute)).masked_fill_(~keep, 0)
        yf[start:stop].copy_(vals.add_(rf[start:stop].to(compute)))

    _chunked(run, n)
    return y
