"""The CPU path's hot loops compiled with numba, when numba is installed.

The same formula as ``contract.keep_bits``, in loops that keep Philox's state in
registers: several times faster than the vectorized numpy form, which makes ten passes
over memory per round. Tests hold the two bit-identical. Without numba, ``keep_bits`` is
the numpy form and ``dropout_values`` and ``block_values`` are None.
"""

from __future__ import annotations

import numpy as np

from . import contract

try:
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

keep_bits = contract.keep_bits
dropout_values = block_values = None

if numba is not None:
    _M0, _M1 = np.uint64(contract.PHILOX_M0), np.uint64(contract.PHILOX_M1)
    _W0, _W1 = np.uint64(contract.PHILOX_W0), np.uint64(contract.PHILOX_W1)
    _LO, _S = np.uint64(0xFFFFFFFF), np.uint64(32)
    _ROUNDS = contract.PHILOX_ROUNDS

    _BLOCK = 256  # Philox calls advanced together: the round loop over a block vectorizes

    @numba.njit(nogil=True, cache=True)
    def _words(first, ncalls, k0, k1, out):
        # out[i, w] = word w of Philox4x32 at counter first + i (lo, hi halves), key (k0, k1)
        c0, c1 = np.empty(_BLOCK, np.uint64), np.empty(_BLOCK, np.uint64)
        c2, c3 = np.empty(_BLOCK, np.uint64), np.empty(_BLOCK, np.uint64)
        for b0 in range(0, ncalls, _BLOCK):
            m = min(_BLOCK, ncalls - b0)
            for i in range(m):
                q = np.uint64(first) + np.uint64(b0 + i)
                c0[i], c1[i], c2[i], c3[i] = q & _LO, q >> _S, 0, 0
            a, b = np.uint64(k0), np.uint64(k1)
            for _ in range(_ROUNDS):
                for i in range(m):
                    p0, p1 = c0[i] * _M0, c2[i] * _M1
                    n0, n2 = (p1 >> _S) ^ c1[i] ^ a, (p0 >> _S) ^ c3[i] ^ b
                    c0[i], c1[i], c2[i], c3[i] = n0, p1 & _LO, n2, p0 & _LO
                a, b = (a + _W0) & _LO, (b + _W1) & _LO
            for i in range(m):
                out[b0 + i, 0], out[b0 + i, 1], out[b0 + i, 2], out[b0 + i, 3] = c0[i], c1[i], c2[i], c3[i]

    def _stream(seed: int, start: int, count: int) -> np.ndarray:
        first, last = start // 4, (start + count + 3) // 4
        out = np.empty((last - first, 4), dtype=np.uint32)
        _words(first, last - first, seed % contract.UINT32, seed >> 32, out)
        return out.reshape(-1)[start - 4 * first:start - 4 * first + count]

    @numba.njit(nogil=True, cache=True)
    def _apply(x, y, words, threshold, scale):
        t, zero = np.uint32(threshold) if threshold < 2**32 else np.uint32(0), x.dtype.type(0)
        keep_all = threshold >= 2**32
        for j in range(x.size):
            y[j] = x[j] * scale if keep_all or words[j] < t else zero

    @numba.njit(nogil=True, cache=True)
    def _block_values(x, y, keep, scale):
        # x, y: (blocks, width). Row views keep the inner loops simple enough to vectorize.
        zero = x.dtype.type(0)
        for m in range(keep.size):
            xr, yr = x[m], y[m]
            if keep[m]:
                for j in range(xr.size):
                    yr[j] = xr[j] * scale
            else:
                for j in range(yr.size):
                    yr[j] = zero

    def block_values(x: np.ndarray, y: np.ndarray, keep: np.ndarray, scale: float):
        """Rows of (blocks, width) arrays: y = x * scale where the row's keep bit is set, else 0."""
        _block_values(x, y, keep, x.dtype.type(scale))

    def keep_bits(seed: int, start: int, count: int, threshold: int) -> np.ndarray:  # noqa: F811
        if threshold >= contract.UINT32:
            return np.ones(count, dtype=np.bool_)
        return _stream(seed, start, count) < np.uint32(threshold)

    def dropout_values(x: np.ndarray, y: np.ndarray, seed: int, start: int, threshold: int, scale: float):
        """y = x * scale where kept, else 0, for elements [start, start + len(x)) of the stream."""
        _apply(x, y, _stream(seed, start, x.size), threshold, x.dtype.type(scale))
