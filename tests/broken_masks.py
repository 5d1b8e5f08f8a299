"""Deliberately broken keep-mask generators, one known fault each.

Every function here has the signature of ``fastdrop.dropout_mask(shape, p, *, seed,
offset=0)`` and returns a bool tensor, but gets one thing wrong the way real dropout
kernels have (see the peer failures in the project's reference notes). The tests in
test_randomness.py run their check functions on these and require them to FAIL: a
statistical test that passes a broken mask proves nothing.

They reuse the project's Philox core (``contract.philox_numpy``), which test_randomness.py
pins separately with the Random123 known-answer vectors; only the way the words are
turned into a mask is broken.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fastdrop import contract

M32 = (1 << 32) - 1


def _n(shape) -> int:
    return torch.Size(shape).numel()


def _calls(q: np.ndarray, seed: int, key_hi=None):
    """The four Philox words at counters q (uint64 array), key = seed split in halves."""
    q = torch.from_numpy(np.ascontiguousarray(q.astype(np.uint64)).view(np.int64))
    zero = torch.zeros((), dtype=torch.int64)
    hi = seed >> 32 if key_hi is None else key_hi
    words = contract.philox(q & M32, (q >> 32) & M32, zero, zero, seed & M32, hi)
    return tuple(w.numpy().astype(np.uint64) for w in words)


def _words_at(g: np.ndarray, seed: int, key_hi=None) -> np.ndarray:
    """The contract's word for each stream position g: word g % 4 of the call at g // 4."""
    g = g.astype(np.uint64)
    words = np.stack(_calls(g >> np.uint64(2), seed, key_hi), axis=-1)
    return np.take_along_axis(words, (g & np.uint64(3)).astype(np.int64)[:, None], axis=1)[:, 0]


def _positions(offset: int, n: int) -> np.ndarray:
    return np.uint64(offset) + np.arange(n, dtype=np.uint64)


def _out(keep: np.ndarray, shape) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(keep)).reshape(torch.Size(shape))


def _below(words: np.ndarray, p: float) -> np.ndarray:
    return words < np.uint64(contract.keep_threshold(p))


def word0_per_element(shape, p, *, seed, offset=0):
    """tl.rand style: one Philox call per element (counter = g), word 0 kept, 3 thrown away.

    Statistically sound, but not the contract: only the bit-exact contract test sees it.
    """
    g = _positions(offset, _n(shape))
    return _out(_below(_calls(g, seed)[0], p), shape)


def word0_shared(shape, p, *, seed, offset=0):
    """Counter g // 4 as the contract says, but word 0 for all four elements of the call:
    four neighbours share one decision (lag-1 correlation 3/4)."""
    g = _positions(offset, _n(shape))
    return _out(_below(_calls(g >> np.uint64(2), seed)[0], p), shape)


def _tile_repeat(block: int):
    def tile_repeat(shape, p, *, seed, offset=0):
        i = np.arange(_n(shape), dtype=np.uint64) % np.uint64(block)
        return _out(_below(_words_at(np.uint64(offset) + i, seed), p), shape)

    tile_repeat.__name__ = tile_repeat.__qualname__ = f"tile_repeat_{block}"
    tile_repeat.__doc__ = (f"The program/tile index is left out of the counter: the mask repeats "
                           f"every {block} elements (xformers-style).")
    return tile_repeat


tile_repeat_2048 = _tile_repeat(2048)
tile_repeat_1024 = _tile_repeat(1024)


def offset_trunc32(shape, p, *, seed, offset=0):
    """The element offset is held in 32 bits: offset 2**32 + k gives the mask of offset k."""
    return _out(_below(_words_at(_positions(offset & M32, _n(shape)), seed), p), shape)


def offset_wrap63(shape, p, *, seed, offset=0):
    """The offset loses its top bit (a signed 64-bit wrap): offset 2**63 + k repeats offset k."""
    return _out(_below(_words_at(_positions(offset & ((1 << 63) - 1), _n(shape)), seed), p), shape)


def counter_lo32(shape, p, *, seed, offset=0):
    """The Philox counter's high word is dropped (32-bit counter): the stream wraps after
    2**32 calls, i.e. stream position 2**34 + k repeats position k."""
    g = _positions(offset, _n(shape))
    q = (g >> np.uint64(2)) & np.uint64(M32)
    words = np.stack(_calls(q, seed), axis=-1)
    w = np.take_along_axis(words, (g & np.uint64(3)).astype(np.int64)[:, None], axis=1)[:, 0]
    return _out(_below(w, p), shape)


def offset_misaligned(shape, p, *, seed, offset=0):
    """offset % 4 is forgotten (the kernel's SHIFT): element i takes stream position
    4 * (offset // 4) + i, so a call at an unaligned offset is not the continuation of the
    stream."""
    return _out(_below(_words_at(_positions(offset & ~3, _n(shape)), seed), p), shape)


def seed_low32(shape, p, *, seed, offset=0):
    """Only the low 32 bits of the seed reach the Philox key: seeds that differ only in the
    high half give the same mask."""
    return _out(_below(_words_at(_positions(offset, _n(shape)), seed, key_hi=0), p), shape)


def bf16_uniform(shape, p, *, seed, offset=0):
    """The uniform (24-bit, as tl.rand makes it) is rounded to bfloat16 before the compare
    with 1 - p (TorchInductor-style). Biases the keep rate by up to 2**-9; at p = 0.25 the
    keep rate is 0.748046875 instead of 0.75."""
    w = _words_at(_positions(offset, _n(shape)), seed)
    u = torch.from_numpy((w >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24))
    keep = u.to(torch.bfloat16).float() < torch.tensor(1.0 - p, dtype=torch.float32)
    return keep.reshape(torch.Size(shape))


def _lag_copy(lag: int, rate: float = 1 / 64):
    def lag_copy(shape, p, *, seed, offset=0):
        n = _n(shape)
        g = _positions(offset, n)
        keep = _below(_words_at(g, seed), p)
        # An independent stream (another key) decides which elements copy a neighbour.
        copy = _words_at(g, seed ^ 0x5BD1E995) < np.uint64(int(rate * 2**32))
        copy[:lag] = False
        out = keep.copy()
        out[copy] = keep[np.nonzero(copy)[0] - lag]
        return _out(out, shape)

    lag_copy.__name__ = lag_copy.__qualname__ = f"lag_copy_{lag}"
    lag_copy.__doc__ = (f"A fraction {rate:g} of elements take the decision of the element {lag} "
                        f"before them: the keep rate is right, lag-{lag} correlation is ~{rate:g}.")
    return lag_copy


lag_copy_1 = _lag_copy(1)
lag_copy_4 = _lag_copy(4)


def drifting_rate(shape, p, *, seed, offset=0, amplitude=0.02, period=1 << 18):
    """The keep threshold wobbles by +-2 % along the stream (period 2**18). Over whole
    periods the keep count is unbiased; only a test over blocks along the index sees it."""
    g = _positions(offset, _n(shape))
    w = _words_at(g, seed)
    phase = (g % np.uint64(period)).astype(np.float64) * (2 * math.pi / period)
    t = contract.keep_threshold(p) * (1.0 + amplitude * np.sin(phase))
    return _out(w.astype(np.float64) < np.minimum(t, 2.0**32), shape)


ALL = [
    word0_per_element, word0_shared, tile_repeat_2048, tile_repeat_1024, offset_trunc32,
    offset_wrap63, counter_lo32, offset_misaligned, seed_low32, bf16_uniform, lag_copy_1,
    lag_copy_4, drifting_rate,
]
