"""The CPU path: the mask contract's keep bits and the apply in one compiled pass.

The loops (``fastdrop._jit``; built ahead of time by ``fastdrop._aot`` where that was run,
else compiled by numba at first use) read x, write y and keep Philox's words in a block that
stays in L1: no temporaries per element, for any strides (x and y are walked in logical
order where they lie in memory). Calls are split by index ranges over
``torch.get_num_threads()`` threads, read at each call: PyTorch's own OpenMP threads where
it runs on libgomp (``run``), else a pool of ours; small calls run inline. Without
numba the same bits come from ``contract.keep_bits`` (numpy) and the values from torch ops
(``_transform``).
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import torch

from . import contract
from ._job import (D_AFFINE, D_AUX, D_AUXN, D_BIAS, D_CONTIG, D_DTYPE, D_FLOATS, D_HAS_BIAS, D_K0, D_K1,
                   D_KIND, D_N, D_NS, D_OFFSET, D_PIECE, D_SHAPE, D_T, D_X, D_XS, D_Y, D_YS, DESC,
                   DTYPE_CODES, KIND_ADD, KIND_KEEP, KIND_NOISE, KIND_ROWS)

# The smallest piece a thread takes; a call this size or smaller runs inline. Handing a piece
# to a pool thread and back costs about 0.1 ms on a 2-core VM (submit + result of a no-op:
# 102 us), so a thread pays only for pieces well above that: measured inline vs 2 threads,
# Philox-bound dropout 2^17 185 vs 232 us, 2^18 316 vs 314, 2^19 680 vs 483; the
# memory-bound loop over precomputed keep bits (one per run: channel dropout) 2^20 211 vs
# 275 us, 2^21 399 vs 387, 2^22 1534 vs 1032.
CHUNK = 1 << 18
BITS_CHUNK = 1 << 21  # loops over keep bits computed before (noise_shape forms)
# On PyTorch's OpenMP threads (``run``'s job; ``_op`` too), awake between its ops, a piece
# pays from much smaller sizes: 2^16 Philox-bound dropout right after a torch op took 114 us
# inline, 62-76 on them (2-core EPYC VM). Through ``_op``, dropout forward (backward) with
# pieces of at least 2^13 against 2^15, medians of alternating rounds, two runs: 2^14
# 31-41 (45-53) us against 38-45 (55), 2^15 46-48 (68-70) against 59-67 (74-76).
OMP_CHUNK = 1 << 13
HALF_TYPES = (torch.float16, torch.bfloat16)
_gomp_parallel = False  # GOMP_parallel once looked up; None where there is none (or after a fork)
_CODES = {np.dtype(name): code for name, code in DTYPE_CODES.items()}  # a loop's storage dtype -> its code
_TEMPLATE = [0] * DESC
_ROW_STRIDES = np.array([1, 0, 0, 0], dtype=np.int64)  # noise_rows: one keep bit per row
_pools: dict = {}  # (pid, workers) -> ThreadPoolExecutor
_pool_lock = threading.Lock()
_jit = False  # the loops once loaded (fastdrop._aot's or fastdrop._jit); None without numba
_numba_loops = False  # fastdrop._jit once imported; None without numba
HUGE_PAGE = 1 << 21  # x86-64 and arm64 transparent huge pages (2 MiB)
# glibc serves requests of 32 MiB and more (its largest dynamic mmap threshold) with a fresh
# mapping, which the first write faults in; smaller ones mostly reuse heap memory already
# faulted in, where the hint only cost its syscall (dropout2d 2^20-2^22 fp32: 5-8% slower
# with it; 2^23: 7.5 vs 18.0 ms, 2^24: 16 vs 33 ms faster).
MMAPPED = 32 << 20
_madvise = False  # libc's madvise once looked up; None where there is none


def loops():
    """The compiled loops, loaded at the first CPU call: the ahead-of-time built module where
    there is one for this machine (``python -m fastdrop._aot``), else numba's JIT (0.5 s to
    import and set up); None where neither is there."""
    global _jit
    if _jit is False:
        from . import _aot
        _jit = _aot.load(numba_loops) or numba_loops()
    return _jit


def numba_loops():
    """fastdrop._jit (numba is slow to import: only when needed); None without numba."""
    global _numba_loops
    if _numba_loops is False:
        try:
            from . import _jit as loaded
        except ImportError:
            loaded = None
        _numba_loops = loaded
    return _numba_loops


def _executor(workers: int) -> ThreadPoolExecutor:
    # One pool per size, kept: a forked child makes its own, and a pool is never shut down
    # under a caller still submitting to it after a torch.set_num_threads elsewhere.
    key = (os.getpid(), workers)
    with _pool_lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastdrop")
        return _pools[key]


def run(fn, n: int, chunk: int = CHUNK, job=None):
    """fn(lo, hi) over pieces of [0, n), on torch.get_num_threads() threads (this one among them),
    each piece at least ``chunk`` elements.

    ``job()``, where given, is the same work as numbers (``_desc``): above ``OMP_CHUNK``
    elements it runs on PyTorch's own OpenMP threads (``_jit.omp_body``), where there are.

    If a piece raises, or the caller is interrupted (KeyboardInterrupt), no piece starts after
    that and the pieces already running finish before the exception reaches the caller: no
    thread writes into the output once the call has returned or raised.
    """
    threads = torch.get_num_threads()
    if job is not None and n > OMP_CHUNK and threads > 1 and _omp() is not None:
        desc, floats = job()
        desc[D_N], desc[D_FLOATS:D_FLOATS + 3] = n, struct.unpack("3q", struct.pack("3d", *floats))
        desc[D_PIECE] = max(OMP_CHUNK, -(-n // (8 * threads)))  # a few pieces per thread: the fast take more
        block = np.array(desc, dtype=np.int64)
        _omp()(loops().omp_body_address(), block.ctypes.data, threads, 0)  # returns when every piece is done
        return
    if n <= chunk or threads <= 1:
        fn(0, n)
        return
    count = min(-(-n // chunk), 4 * threads)  # a few pieces per thread: the fast ones take more
    step = -(-n // count)
    pieces = iter(range(0, n, step))  # shared by the threads: each piece is taken once
    stop = threading.Event()

    def work():
        try:
            for lo in pieces:
                if stop.is_set():
                    return
                fn(lo, min(lo + step, n))
        except BaseException:
            stop.set()  # the other threads take no new piece
            raise

    inference = torch.is_inference_mode_enabled()
    pool = _executor(threads - 1)
    futures = [pool.submit(_in_worker, work, inference) for _ in range(threads - 1)]
    try:
        work()
        for f in futures:
            f.result()
    except BaseException:
        stop.set()
        while True:  # a second Ctrl-C must not leave workers writing either: the wait is short
            try:
                wait(futures)
                break
            except KeyboardInterrupt:
                continue
        raise


def _in_worker(fn, inference):
    # Grad and inference modes are per thread: a worker takes the caller's inference mode and
    # no autograd (the path without numba runs torch ops on the caller's views).
    with torch.inference_mode(inference), torch.no_grad():
        fn()


def _omp():
    """GOMP_parallel of the OpenMP runtime PyTorch runs on (its workers, awake between its
    ops, are the ones that take our pieces); None where PyTorch does not run on libgomp."""
    global _gomp_parallel
    if _gomp_parallel is False:
        _gomp_parallel = None
        if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info():
            try:
                with open("/proc/self/maps") as f:
                    path = next((line.split()[-1] for line in f if "/libgomp" in line), None)
                if path is not None:
                    fn = ctypes.CDLL(path).GOMP_parallel  # the copy already loaded: torch's own
                    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
                    fn.restype = None
                    _gomp_parallel = fn
            except (OSError, AttributeError):
                pass
    return _gomp_parallel


def _no_omp_after_fork():
    # libgomp's team does not survive fork(): a forked child's next parallel region waits
    # forever on the parent's threads (as PyTorch's own ops do there). A child uses our
    # thread pool instead.
    global _gomp_parallel
    _gomp_parallel = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_no_omp_after_fork)


def _addr(t: torch.Tensor) -> int:
    """The address of t's first element."""
    if type(t) is torch.Tensor or type(t) is torch.nn.Parameter:
        return t.data_ptr()
    # A subclass, as a functional collective's AsyncCollectiveTensor (its data_ptr() is 0):
    # its memory as numpy sees it, through its own dispatch.
    return _numpy(t).ctypes.data


def _desc(kind: int, xv: np.ndarray, yv: np.ndarray, x_addr: int, y_addr: int, key=(0, 0), offset=0,
          threshold=0, affine=False) -> list:
    """A job (``_job``) over numpy views xv, yv (4-D; 1-D for dropout_add and keep bits) of
    the memory at x_addr, y_addr (from the tensors: 1.7 us a desc; a first version that took
    them through numpy's __array_interface__ took 8 us)."""
    desc = _TEMPLATE.copy()
    desc[D_KIND], desc[D_DTYPE], desc[D_X], desc[D_Y] = kind, _CODES.get(xv.dtype, 0), x_addr, y_addr
    desc[D_K0], desc[D_K1] = key
    offset = int(offset)
    desc[D_OFFSET] = offset - (1 << 64) if offset >> 63 else offset  # its bits as an int64
    desc[D_T], desc[D_AFFINE] = int(threshold), int(affine)
    desc[D_CONTIG] = int(xv.flags.c_contiguous and yv.flags.c_contiguous)
    if xv.ndim == 4:
        desc[D_SHAPE:D_SHAPE + 4], desc[D_XS:D_XS + 4], desc[D_YS:D_YS + 4] = xv.shape, xv.strides, yv.strides
    return desc


def _noise_desc(xv, yv, x_addr, y_addr, bits_addr, bits_size, ns, affine) -> list:
    desc = _desc(KIND_NOISE, xv, yv, x_addr, y_addr, affine=affine)
    desc[D_AUX], desc[D_AUXN], desc[D_NS:D_NS + 4] = bits_addr, bits_size, ns
    return desc


def _add_desc(xv, yv, x_addr, y_addr, res_addr, bias_addr, bias_size, has_bias, key, offset,
              threshold) -> list:
    desc = _desc(KIND_ADD, xv, yv, x_addr, y_addr, key, offset, threshold)
    desc[D_AUX], desc[D_BIAS], desc[D_AUXN], desc[D_HAS_BIAS] = res_addr, bias_addr, bias_size, int(has_bias)
    return desc


def huge_pages(y: torch.Tensor):
    """Ask Linux for transparent huge pages under the fresh output y before its first write.

    A new large tensor is a fresh mapping: its first write faults every 4 KiB page in, which
    cost more than the dropout itself here (64 MiB: 28 ms of faults against 15 ms of work,
    on a 2-core VM); faulted in 2 MiB at a time it took 7 ms. Only whole 2 MiB pages inside
    y are marked: the hint touches no one else's memory. Where THP is off, or not Linux,
    nothing changes.
    """
    global _madvise
    nbytes = y.numel() * y.element_size()
    if nbytes < MMAPPED or not y.is_contiguous():
        return
    if _madvise is False:
        _madvise = None
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
                _madvise = fn
            except (OSError, AttributeError):
                pass
    if _madvise is not None:
        start = y.data_ptr()
        lo, hi = -(-start // HUGE_PAGE) * HUGE_PAGE, (start + nbytes) // HUGE_PAGE * HUGE_PAGE
        if hi > lo:
            _madvise(lo, hi - lo, 14)  # MADV_HUGEPAGE; an error only means no huge pages


# ---- views --------------------------------------------------------------------------------

def _pieces(shape, *strides):
    """(sizes, [strides per array], [start per array], first logical index) of 4-D pieces that
    cover ``shape`` in row-major order. Size-1 dims go, and neighbours that every array walks
    as one dim merge; leftover leading dims beyond 4 are looped here (rare: 5-D and more)."""
    dims = []
    for d, size in enumerate(shape):
        if size == 1:
            continue
        sts = tuple(st[d] for st in strides)
        if dims and all(prev == size * s for prev, s in zip(dims[-1][1], sts)):
            dims[-1] = (dims[-1][0] * size, sts)
        else:
            dims.append((size, sts))
    outer, inner = dims[:-3] if len(dims) > 4 else [], dims[-3:] if len(dims) > 4 else dims
    inner = [(1, (0,) * len(strides))] * (4 - len(inner)) + inner
    sizes = tuple(s for s, _ in inner)
    inner_strides = [tuple(sts[a] for _, sts in inner) for a in range(len(strides))]
    inner_n = math.prod(sizes)
    for flat, idx in enumerate(itertools.product(*(range(s) for s, _ in outer))):
        starts = [sum(i * sts[a] for i, (_, sts) in zip(idx, outer)) for a in range(len(strides))]
        yield sizes, inner_strides, starts, flat * inner_n


def _numpy(t: torch.Tensor, sizes=None, strides=None, start=0) -> np.ndarray:
    """A numpy view of t's memory (of t, or of the view with these sizes, strides and start);
    float16 as uint16 and bfloat16 as int16 (see ``_jit``)."""
    v = t.detach() if t.requires_grad else t
    if sizes is not None:
        v = v.as_strided(sizes, strides, t.storage_offset() + start)
    if t.dtype == torch.float16:
        return v.view(torch.int16).numpy().view(np.uint16)
    if t.dtype == torch.bfloat16:
        return v.view(torch.int16).numpy()
    return v.numpy()


def _key(seed: int):
    return seed & 0xFFFFFFFF, seed >> 32


# ---- the ops ------------------------------------------------------------------------------

def apply(x: torch.Tensor, y: torch.Tensor, seed: int, offset: int, threshold: int, scale: float, *,
          noise_shape=None, affine=None):
    """y = dropout(x) by the mask contract, for CPU tensors of one shape (y may be x).

    ``noise_shape`` (x.dim() entries, each 1 or x's size): one keep bit per element of
    that shape, the bit at its row-major index, shared along the size-1 dims.
    ``affine=(add, drop)``: alpha dropout's form (see ``_transform``).
    """
    n = x.numel()
    if n == 0:
        return y
    jit = loops()
    if jit is None:
        return _apply_torch(x, y, seed, offset, threshold, scale, noise_shape, affine)
    if y is not x:
        huge_pages(y)
    k0, k1 = _key(seed)
    add, drop = affine if affine is not None else (0.0, 0.0)
    t, is_affine = np.int64(threshold), affine is not None
    if noise_shape is None and x.is_contiguous() and y.is_contiguous():  # the common case, fast
        xv, yv = _numpy(x).reshape(1, 1, 1, n), _numpy(y).reshape(1, 1, 1, n)
        o = np.uint64(offset)
        run(lambda lo, hi: jit.dropout_rows(xv, yv, k0, k1, o, t, scale, add, drop, is_affine, lo, hi), n,
            job=lambda: (_desc(KIND_ROWS, xv, yv, _addr(x), _addr(y), (k0, k1), o, t, is_affine),
                         (scale, add, drop)))
        return y
    item = x.element_size()
    if noise_shape is None:
        for sizes, (xs, ys), (x0, y0), base in _pieces(x.shape, x.stride(), y.stride()):
            xv, yv = _numpy(x, sizes, xs, x0), _numpy(y, sizes, ys, y0)
            o = np.uint64(offset + base)
            run(lambda lo, hi: jit.dropout_rows(xv, yv, k0, k1, o, t, scale, add, drop, is_affine, lo, hi),
                xv.size, job=lambda: (_desc(KIND_ROWS, xv, yv, _addr(x) + x0 * item, _addr(y) + y0 * item,
                                            (k0, k1), o, t, is_affine), (scale, add, drop)))
        return y
    bits = torch.empty(math.prod(noise_shape), dtype=torch.bool)  # one byte per noise element
    keep_mask(bits, seed, offset, threshold)
    lead = len(noise_shape) - next((i for i, s in enumerate(reversed(noise_shape)) if s != 1), len(noise_shape))
    if lead < len(noise_shape) and x.is_contiguous() and y.is_contiguous():
        # The bit changes only along leading dims (channel dropout, drop path, (1, C, 1)):
        # one bit per row of (prod(leading dims), rest), broadcast to the rows if needed.
        # The general walk below costs ~20-80 us of Python per call here.
        bits = bits.view(noise_shape[:lead]).expand(x.shape[:lead]).reshape(-1)
        row_bits, rows = bits.numpy(), bits.numel()
        xv, yv = _numpy(x).reshape(rows, 1, 1, n // rows), _numpy(y).reshape(rows, 1, 1, n // rows)
        run(lambda lo, hi: jit.noise_rows(xv, yv, row_bits, _ROW_STRIDES, scale, add, drop, is_affine, lo, hi), n,
            BITS_CHUNK, job=lambda: (_noise_desc(xv, yv, _addr(x), _addr(y), bits.data_ptr(), rows,
                                                 _ROW_STRIDES, is_affine), (scale, add, drop)))
        return y
    bits_np = bits.numpy()
    noise_strides = [0 if s == 1 else st for s, st in zip(noise_shape, contract.row_major(noise_shape))]
    for sizes, (xs, ys, ns), (x0, y0, n0), _ in _pieces(x.shape, x.stride(), y.stride(), noise_strides):
        xv, yv, nv = _numpy(x, sizes, xs, x0), _numpy(y, sizes, ys, y0), np.array(ns, dtype=np.int64)
        bv = bits_np[n0:]
        run(lambda lo, hi: jit.noise_rows(xv, yv, bv, nv, scale, add, drop, is_affine, lo, hi), xv.size,
            BITS_CHUNK, job=lambda: (_noise_desc(xv, yv, _addr(x) + x0 * item, _addr(y) + y0 * item,
                                                 bits.data_ptr() + n0, bv.size, ns, is_affine),
                                     (scale, add, drop)))
    return y


def keep_mask(out: torch.Tensor, seed: int, offset: int, threshold: int) -> torch.Tensor:
    """Keep bits of stream elements [offset, offset + out.numel()) into the contiguous bool
    tensor ``out``, piece by piece (no temporary beyond one block of words)."""
    flat = out.view(-1).numpy()
    if flat.size == 0:  # offset may be 2**64 here
        return out
    jit = loops()
    if jit is None:
        def fill(lo, hi):
            flat[lo:hi] = contract.keep_bits(seed, offset + lo, hi - lo, threshold)
        run(fill, flat.size)
    else:
        k0, k1 = _key(seed)
        o, t = np.uint64(offset), np.int64(threshold)
        run(lambda lo, hi: jit.keep_into(k0, k1, o, t, flat, lo, hi), flat.size,
            job=lambda: (_desc(KIND_KEEP, flat, flat, 0, _addr(out), (k0, k1), o, t), (0.0, 0.0, 0.0)))
    return out


def dropout_add(x, bias, residual, y, seed: int, offset: int, threshold: int, scale: float):
    """y = residual + dropout(x + bias) in one pass; contiguous tensors of one shape.

    Float32 arithmetic for 16/32-bit types (float64 for float64), rounded once at the end,
    in the order of the fused kernel: (x + bias) * scale, masked, + residual.
    """
    n = x.numel()
    if n == 0:
        return y
    jit = loops()
    if jit is None:
        return _dropout_add_torch(x, bias, residual, y, seed, offset, threshold, scale)
    huge_pages(y)
    xv, rv, yv = _numpy(x).reshape(n), _numpy(residual).reshape(n), _numpy(y).reshape(n)
    bv = xv[:1] if bias is None else _numpy(bias)
    k0, k1 = _key(seed)
    o, t, has_bias = np.uint64(offset), np.int64(threshold), bias is not None
    run(lambda lo, hi: jit.dropout_add(xv, bv, has_bias, rv, yv, k0, k1, o, t, scale, lo, hi), n,
        job=lambda: (_add_desc(xv, yv, _addr(x), _addr(y), _addr(residual), _addr(bias) if has_bias else 0,
                               bv.size, has_bias, (k0, k1), o, t), (scale, 0.0, 0.0)))
    return y


# ---- without numba: torch ops on the keep bits ------------------------------------------

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


def _apply_torch(x, y, seed, offset, threshold, scale, noise_shape, affine):
    shape = x.shape if noise_shape is None else noise_shape
    keep = keep_mask(torch.empty(shape, dtype=torch.bool), seed, offset, threshold)
    return y.copy_(_transform(x, keep, scale, affine))


def _dropout_add_torch(x, bias, residual, y, seed, offset, threshold, scale):
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    keep = keep_mask(torch.empty(x.shape, dtype=torch.bool), seed, offset, threshold)
    vals = x.to(compute, copy=True)
    if bias is not None:
        vals = vals.add_(bias.to(compute))
    vals = vals.mul_(torch.tensor(scale, dtype=compute)).masked_fill_(~keep, 0)
    return y.copy_(vals.add_(residual.to(compute)))
