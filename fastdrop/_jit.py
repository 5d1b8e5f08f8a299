"""The CPU path's compiled loops (numba): Philox and the apply in one pass over memory.

Imported at the first CPU call (``fastdrop._cpu``), never at ``import fastdrop``: numba
takes 0.2 s to import and its first compiled call 0.3 s more. ``cache=True`` keeps the
machine code next to this file (``__pycache__``), or in numba's user cache folder where that
is read-only, so only the first-ever process compiles.

Every loop takes logical elements ``[lo, hi)`` of a view (row-major order, whatever the
strides), so the threads of ``fastdrop._cpu`` split a call by index ranges and no loop
allocates more than one block of words. Arithmetic is the kernels': ``x * scale`` in float32
for 16- and 32-bit types (float64 for float64), rounded once to the output's dtype.
Numba has no float16 or bfloat16 type: fp16 storage arrives viewed as uint16 and bf16 as
int16; ``_widen``/``_narrow`` convert fp16 through LLVM's half type (the hardware conversion)
and bf16 with bit arithmetic, both rounding to nearest even as PyTorch's casts do.
Tests hold everything bit-identical to ``contract`` and the kernels.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from . import contract
from ._job import (D_AFFINE, D_AUX, D_AUXN, D_BIAS, D_CONTIG, D_DTYPE, D_FLOATS, D_HAS_BIAS, D_K0, D_K1,
                   D_KIND, D_N, D_NEXT, D_NS, D_OFFSET, D_PIECE, D_SHAPE, D_T, D_X, D_XS, D_Y, D_YS, DESC,
                   KIND_ADD, KIND_KEEP, KIND_ROWS)

_M0, _M1 = np.uint64(contract.PHILOX_M0), np.uint64(contract.PHILOX_M1)
_W0, _W1 = np.uint32(contract.PHILOX_W0), np.uint32(contract.PHILOX_W1)
_ROUNDS = contract.PHILOX_ROUNDS
BLOCK = 2048  # stream elements per Philox batch: their words stay in L1 between the two loops

_jit = numba.njit(nogil=True, cache=True)
_inline = numba.njit(nogil=True, cache=True, inline="always")  # small helpers called per row


# ---- Philox ------------------------------------------------------------------------------

@_inline
def _philox_call(q, k0, k1):
    # The four words of Philox4x32 at counter q (uint64), key (k0, k1). The state is four
    # uint32 values and each product a zero-extended 32 x 32 -> 64 multiply, so LLVM unrolls
    # the rounds and runs calls side by side in vector lanes (vpmuludq), one call per lane.
    c0, c1 = np.uint32(q), np.uint32(q >> np.uint64(32))
    c2 = c3 = np.uint32(0)
    a, b = np.uint32(k0), np.uint32(k1)
    for _ in range(_ROUNDS):
        p0, p1 = np.uint64(c0) * _M0, np.uint64(c2) * _M1
        c0, c1, c2, c3 = (np.uint32(p1 >> np.uint64(32)) ^ c1 ^ a, np.uint32(p1),
                          np.uint32(p0 >> np.uint64(32)) ^ c3 ^ b, np.uint32(p0))
        a, b = np.uint32(a + _W0), np.uint32(b + _W1)
    return c0, c1, c2, c3


@_jit
def _philox(q0, ncalls, k0, k1, out):
    # out[4i + w] = word w of Philox4x32 at counter q0 + i, key (k0, k1). Two halves side by
    # side: two independent chains of 10 dependent multiplies per iteration, where one left the
    # core waiting on their latency (one core, 2^20 calls: 1.33 against 1.14 G words/s).
    h = ncalls // 2
    for i in range(h):
        c0, c1, c2, c3 = _philox_call(np.uint64(q0) + np.uint64(i), k0, k1)
        d0, d1, d2, d3 = _philox_call(np.uint64(q0) + np.uint64(i + h), k0, k1)
        out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3] = c0, c1, c2, c3
        j = 4 * (i + h)
        out[j], out[j + 1], out[j + 2], out[j + 3] = d0, d1, d2, d3
    for i in range(2 * h, ncalls):
        c0, c1, c2, c3 = _philox_call(np.uint64(q0) + np.uint64(i), k0, k1)
        out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3] = c0, c1, c2, c3


@_jit
def _words(k0, k1, offset, i, m, buf):
    # Words of stream elements offset + [i, i + m) (m <= BLOCK) into buf; returns where the
    # first one is. offset is a uint64 (numba mixes uint64 and int64 into float64).
    g = offset + np.uint64(i)
    q0 = g // np.uint64(4)
    skip = np.int64(g - q0 * np.uint64(4))
    _philox(q0, (skip + m + 3) // 4, k0, k1, buf)
    return skip


def _keep(word, t):
    """Keep bit of a random word (t = 2**32 keeps all), or a bool keep bit as it is."""


@overload(_keep)
def _keep_impl(word, t):
    if isinstance(word, types.Boolean):
        return lambda word, t: word
    return lambda word, t: np.int64(word) < t


# ---- 16-bit floats by their bits ---------------------------------------------------------

@intrinsic
def _f32(typingctx, bits):
    # float32 with these uint32 bits
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _u32(typingctx, value):
    # the uint32 bits of a float32
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def _from_f16(typingctx, bits):
    # float16 bits -> float32 (exact): LLVM's half type, one vcvtph2ps per vector on x86 (F16C)
    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _to_f16(typingctx, value):
    # float32 -> float16 bits, rounded to nearest even (vcvtps2ph: NaNs keep sign and top
    # payload bits and are made quiet, as in PyTorch's own conversion)
    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


def _widen(v):
    """Storage value -> compute value (float32, or float64 for float64)."""


def _narrow(v, like):
    """Compute value -> storage value of ``like``'s type, rounded to nearest even."""


def _ct(scale, like):
    """A float64 constant in the compute type of ``like``'s storage."""


@overload(_widen)
def _widen_impl(v):
    if isinstance(v, types.Float):
        return lambda v: v
    if v == types.uint16:  # float16 bits
        return lambda v: _from_f16(v)
    if v == types.int16:  # bfloat16 bits: the top half of a float32
        return lambda v: _f32(np.uint32((np.uint32(v) & np.uint32(0xFFFF)) << np.uint32(16)))


@overload(_narrow)
def _narrow_impl(v, like):
    if isinstance(like, types.Float):
        return lambda v, like: v  # the store converts float32/float64
    if like == types.uint16:
        return lambda v, like: _to_f16(v)
    if like == types.int16:
        def bf16(v, like):
            # float32 -> bfloat16, round to nearest even; NaN -> 0xFFFF, as PyTorch's CPU
            # tensor conversion gives (its vectorized form; c10's scalar one gives 0x7FC0).
            u = _u32(v)
            o = np.uint32(u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            return np.int16(np.uint32(0xFFFF) if v != v else o)
        return bf16


@overload(_ct)
def _ct_impl(scale, like):
    if like == types.float64:
        return lambda scale, like: np.float64(scale)
    return lambda scale, like: np.float32(scale)


# ---- the loops ---------------------------------------------------------------------------

@_jit
def keep_into(k0, k1, offset, t, out, lo, hi):
    """out[j] = keep bit of stream element offset + j, for j in [lo, hi) (out: bool, 1-D)."""
    buf = np.empty(BLOCK + 8, np.uint32)
    for g in range(lo, hi, BLOCK):
        m = min(BLOCK, hi - g)
        skip = _words(k0, k1, offset, g, m, buf)
        words, bits = buf[skip:skip + m], out[g:g + m]  # slices: loops from 0 vectorize
        for j in range(m):
            bits[j] = _keep(words[j], t)


@_jit
def _bits_run(xs, ys, words, t, s, a, d, affine):
    # ys[j] = keep ? xs[j] * s : 0 (affine: keep ? round(xs[j] * s) + a : d), keep bit from
    # words[j] (a random word, or a bool). Loops from 0 over 1-D slices: LLVM drops the
    # index checks and vectorizes.
    if affine:
        for j in range(xs.size):
            v = _widen(_narrow(_widen(xs[j]) * s, xs[0])) + a
            ys[j] = _narrow(v if _keep(words[j], t) else d, ys[0])
    else:
        zero = s - s
        for j in range(xs.size):
            v = _widen(xs[j]) * s
            ys[j] = _narrow(v if _keep(words[j], t) else zero, ys[0])


@_inline
def _bit_run(xs, ys, keep, s, a, d, affine):
    # As _bits_run with one keep bit for the whole run.
    if not keep:
        fill = _narrow(d if affine else s - s, ys[0])
        for j in range(ys.size):
            ys[j] = fill
    elif affine:
        for j in range(xs.size):
            ys[j] = _narrow(_widen(_narrow(_widen(xs[j]) * s, xs[0])) + a, ys[0])
    else:
        for j in range(xs.size):
            ys[j] = _narrow(_widen(xs[j]) * s, ys[0])


@_jit
def _mask_run(xs, ys, k0, k1, g, t, s, a, d, affine, buf):
    # _bits_run over a 1-D run whose first element is stream element g (uint64), block by
    # block: each block's words are written to buf (in L1) by the vectorized Philox loop,
    # then read by the vectorized apply. (One loop holding the words in registers ran 4x
    # slower on AVX2, where LLVM leaves it scalar.)
    m, j = xs.size, 0
    while j < m:
        mm = min(BLOCK, m - j)
        skip = _words(k0, k1, g, j, mm, buf)
        _bits_run(xs[j:j + mm], ys[j:j + mm], buf[skip:skip + mm], t, s, a, d, affine)
        j += mm


@_jit
def _index(i, n1, n2, n3):
    # (i0, i1, i2, i3) of logical index i in a 4-D shape (n0, n1, n2, n3)
    r, i3 = divmod(i, n3)
    r, i2 = divmod(r, n2)
    i0, i1 = divmod(r, n1)
    return i0, i1, i2, i3


@_inline
def _advance(i0, i1, i2, i3, m, n1, n2, n3):
    # The index m elements on (m never crosses a row): no division per row.
    i3 += m
    if i3 == n3:
        i3, i2 = 0, i2 + 1
        if i2 == n2:
            i2, i1 = 0, i1 + 1
            if i1 == n1:
                i1, i0 = 0, i0 + 1
    return i0, i1, i2, i3


@_jit
def dropout_rows(x, y, k0, k1, offset, t, scale, add, drop, affine, lo, hi):
    """y = keep ? x * scale : 0 (affine: keep ? round(x * scale) + add : drop) over logical
    elements [lo, hi) of 4-D views x, y of one shape (any strides); keep bit of element i is
    that of stream element offset + i."""
    n1, n2, n3 = x.shape[1], x.shape[2], x.shape[3]
    s, a, d = _ct(scale, x[0, 0, 0, 0]), _ct(add, x[0, 0, 0, 0]), _ct(drop, x[0, 0, 0, 0])
    if lo >= hi:
        return
    buf = np.empty(BLOCK + 8, np.uint32)
    i = lo
    i0, i1, i2, i3 = _index(lo, n1, n2, n3)
    while i < hi:
        m = min(n3 - i3, hi - i)
        _mask_run(x[i0, i1, i2, i3:i3 + m], y[i0, i1, i2, i3:i3 + m], k0, k1, offset + np.uint64(i), t, s,
                  a, d, affine, buf)
        i += m
        i0, i1, i2, i3 = _advance(i0, i1, i2, i3, m, n1, n2, n3)


@_jit
def noise_rows(x, y, bits, ns, scale, add, drop, affine, lo, hi):
    """As ``dropout_rows``, with the keep bit of element (i0, i1, i2, i3) at
    bits[i0 * ns[0] + ... + i3 * ns[3]] (ns: the noise shape's strides, 0 where it broadcasts)."""
    n1, n2, n3 = x.shape[1], x.shape[2], x.shape[3]
    s, a, d = _ct(scale, x[0, 0, 0, 0]), _ct(add, x[0, 0, 0, 0]), _ct(drop, x[0, 0, 0, 0])
    if lo >= hi:
        return
    i = lo
    i0, i1, i2, i3 = _index(lo, n1, n2, n3)
    if ns[3] == 0 and x.flags.c_contiguous and y.flags.c_contiguous:
        # One bit per row (channel dropout, drop path), rows one after another in memory:
        # the rows that follow with the same bit are one run of the flat arrays. A run per
        # row, of a 4-D slice, cost 2-4x more on short rows (one thread, 2^18 float32 in rows
        # of 64: 94 against 42 us; a multiply: 33).
        xf = numba.carray(_ptr(x.ctypes.data, x.dtype), (x.size,))
        yf = numba.carray(_ptr(y.ctypes.data, y.dtype), (y.size,))
        while i < hi:
            keep = bits[i0 * ns[0] + i1 * ns[1] + i2 * ns[2]]
            j = i
            while True:
                m = min(n3 - i3, hi - j)
                j += m
                i0, i1, i2, i3 = _advance(i0, i1, i2, i3, m, n1, n2, n3)
                if j >= hi or bits[i0 * ns[0] + i1 * ns[1] + i2 * ns[2]] != keep:
                    break
            _bit_run(xf[i:j], yf[i:j], keep, s, a, d, affine)
            i = j
        return
    while i < hi:
        base = i0 * ns[0] + i1 * ns[1] + i2 * ns[2] + i3 * ns[3]
        if ns[3] == 0:  # one bit for the whole run
            m = min(n3 - i3, hi - i)
            _bit_run(x[i0, i1, i2, i3:i3 + m], y[i0, i1, i2, i3:i3 + m], bits[base], s, a, d, affine)
        else:  # one bit per element, taken as the run's words would be
            m = min(n3 - i3, hi - i, BLOCK)
            _bits_run(x[i0, i1, i2, i3:i3 + m], y[i0, i1, i2, i3:i3 + m], bits[base:base + m * ns[3]:ns[3]],
                      0, s, a, d, affine)
        i += m
        i0, i1, i2, i3 = _advance(i0, i1, i2, i3, m, n1, n2, n3)


@_jit
def _add_run(xs, bs, has_bias, rs, ys, words, t, s):
    # ys[k] = rs[k] + (keep ? (xs[k] + bs[k]) * s : 0), in the compute type, rounded once.
    zero = s - s
    for k in range(xs.size):
        v = _widen(xs[k])
        if has_bias:
            v += _widen(bs[k])
        v = v * s if _keep(words[k], t) else zero
        ys[k] = _narrow(v + _widen(rs[k]), ys[0])


@_jit
def dropout_add(x, bias, has_bias, res, y, k0, k1, offset, t, scale, lo, hi):
    """y = res + (keep ? (x + bias) * scale : 0) over elements [lo, hi) of contiguous 1-D x,
    res, y; bias (1-D, the width of a row) is added along rows when ``has_bias``."""
    width = bias.size if has_bias else hi
    s = _ct(scale, x[0])
    buf = np.empty(BLOCK + 8, np.uint32)
    for g in range(lo, hi, BLOCK):
        m = min(BLOCK, hi - g)
        skip = _words(k0, k1, offset, g, m, buf)
        j = 0
        while j < m:  # runs that stay in one row of the bias
            col = (g + j) % width
            run = min(m - j, width - col)
            a, b = g + j, g + j + run
            _add_run(x[a:b], bias[col:col + run] if has_bias else x[a:b], has_bias, res[a:b], y[a:b],
                     buf[skip + j:skip + j + run], t, s)
            j += run


# ---- a job on PyTorch's OpenMP threads ---------------------------------------------------
# PyTorch's OpenMP workers spin for milliseconds after each of its ops, so a thread of our
# own competes with them for the cores (2-core VM: 2^20 dropout right after a torch op,
# 1.8-2.1 ms on two threads of ours, 0.74-0.77 ms on torch's two). ``omp_body`` is the
# function each thread of an OpenMP team runs (GOMP_parallel's fn, called with the job's
# address); the threads take pieces from one counter until none is left.

@intrinsic
def _fetch_add(typingctx, arr, i, v):
    # arr[i] += v atomically; the old value
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", builder.gep(ary.data, [args[1]]), args[2], "monotonic")
    return types.int64(arr, i, types.int64), codegen


def _element(dtype):
    return dtype.dtype if isinstance(dtype, types.DType) else dtype.instance_type


@intrinsic
def _ptr(typingctx, addr, dtype):
    # addr (an int64) as a pointer to dtype
    nb = _element(dtype)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_data_type(nb).as_pointer())
    return types.CPointer(nb)(addr, dtype), codegen


@intrinsic
def _strided(typingctx, addr, shape, strides, dtype):
    # An array over the memory at addr, of this shape and these byte strides
    from numba.core import cgutils
    from numba.np.arrayobj import populate_array
    nb = _element(dtype)
    aryty = types.Array(nb, len(shape), "A")

    def codegen(context, builder, sig, args):
        ary = context.make_array(aryty)(context, builder)
        item = context.get_data_type(nb)
        populate_array(ary, data=builder.inttoptr(args[0], item.as_pointer()),
                       shape=cgutils.unpack_tuple(builder, args[1]),
                       strides=cgutils.unpack_tuple(builder, args[2]),
                       itemsize=context.get_constant(types.intp, context.get_abi_sizeof(item)), meminfo=None)
        return ary._getvalue()
    return aryty(addr, shape, strides, dtype), codegen


@_jit
def _four(desc, at):
    return desc[at], desc[at + 1], desc[at + 2], desc[at + 3]


@_jit
def _piece_as(desc, fdesc, lo, hi, dtype):
    # Elements [lo, hi) of the job in desc, whose arrays hold dtype.
    kind, n = desc[D_KIND], desc[D_N]
    k0, k1, offset, t = desc[D_K0], desc[D_K1], np.uint64(desc[D_OFFSET]), desc[D_T]
    scale, add, drop, affine = fdesc[0], fdesc[1], fdesc[2], desc[D_AFFINE] != 0
    if kind == KIND_KEEP:
        keep_into(k0, k1, offset, t, numba.carray(_ptr(desc[D_Y], np.bool_), (n,)), lo, hi)
    elif kind == KIND_ADD:
        x, res = numba.carray(_ptr(desc[D_X], dtype), (n,)), numba.carray(_ptr(desc[D_AUX], dtype), (n,))
        y = numba.carray(_ptr(desc[D_Y], dtype), (n,))
        has_bias = desc[D_HAS_BIAS] != 0
        bias = numba.carray(_ptr(desc[D_BIAS], dtype), (desc[D_AUXN],)) if has_bias else x
        dropout_add(x, bias, has_bias, res, y, k0, k1, offset, t, scale, lo, hi)
    else:
        shape = _four(desc, D_SHAPE)
        if desc[D_CONTIG] != 0:
            x, y = numba.carray(_ptr(desc[D_X], dtype), shape), numba.carray(_ptr(desc[D_Y], dtype), shape)
            _rows(desc, x, y, k0, k1, offset, t, scale, add, drop, affine, lo, hi)
        else:
            x = _strided(desc[D_X], shape, _four(desc, D_XS), dtype)
            y = _strided(desc[D_Y], shape, _four(desc, D_YS), dtype)
            _rows(desc, x, y, k0, k1, offset, t, scale, add, drop, affine, lo, hi)


@_jit
def _rows(desc, x, y, k0, k1, offset, t, scale, add, drop, affine, lo, hi):
    # dropout_rows or noise_rows over 4-D x, y (C-contiguous or strided: typed apart)
    if desc[D_KIND] == KIND_ROWS:
        dropout_rows(x, y, k0, k1, offset, t, scale, add, drop, affine, lo, hi)
    else:
        bits = numba.carray(_ptr(desc[D_AUX], np.bool_), (desc[D_AUXN],))
        noise_rows(x, y, bits, desc[D_NS:D_NS + 4], scale, add, drop, affine, lo, hi)


@_jit
def omp_body(job):
    """Take pieces of the job at address ``job`` (an int64 array, ``_job``) until none is
    left: every thread of the team runs this, each piece is taken once."""
    desc = numba.carray(_ptr(job, np.int64), (DESC,))
    fdesc = numba.carray(_ptr(job + 8 * D_FLOATS, np.float64), (3,))
    n, piece, dt = desc[D_N], desc[D_PIECE], desc[D_DTYPE]
    lo = _fetch_add(desc, D_NEXT, 1) * piece
    while lo < n:
        hi = min(lo + piece, n)
        if dt == 0:
            _piece_as(desc, fdesc, lo, hi, np.float32)
        elif dt == 1:
            _piece_as(desc, fdesc, lo, hi, np.float64)
        elif dt == 2:
            _piece_as(desc, fdesc, lo, hi, np.uint16)
        else:
            _piece_as(desc, fdesc, lo, hi, np.int16)
        lo = _fetch_add(desc, D_NEXT, 1) * piece


_omp_cfunc = None


def omp_body_address() -> int:
    """The address of ``omp_body`` as a C function ``void (void *job)`` (numba's cfunc)."""
    global _omp_cfunc
    if _omp_cfunc is None:
        as_cfunc = numba.cfunc(types.void(types.int64), nopython=True, nogil=True, cache=True)
        _omp_cfunc = as_cfunc(omp_body.py_func)
    return _omp_cfunc.address
