"""The mask contract: the one place that says which elements dropout keeps.

Contract version 1. For a call with seed ``s`` (0 <= s < 2**64), element offset ``o``
and drop probability ``p``, the element at logical (row-major) index ``i`` is element
``g = o + i`` of the stream for ``s``; it is kept iff

    philox4x32_10(counter=(q mod 2**32, q >> 32, 0, 0), key=(s mod 2**32, s >> 32))[g % 4]
        < keep_threshold(p)            where q = g // 4

``keep_threshold(p) = round((1 - p) * 2**32)``, so the keep rate resolves in steps of
2**-32. All four 32-bit words of each Philox call are used, by four consecutive elements.
Nothing else (device, dtype, strides, block size, grid, GPU model) enters the mask.
The Triton kernel (``fastdrop.kernels.dropout``) implements the same formula; the
tests hold the two bit-identical.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

CONTRACT_VERSION = 1
PHILOX_ROUNDS = 10
# Random123 Philox4x32 constants.
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
WORDS_PER_CALL = 4
UINT32 = 1 << 32
UINT64 = 1 << 64


class NanProbabilityError(ValueError, RuntimeError):
    """p is NaN: PyTorch raises RuntimeError here (from ATen), other bad values ValueError."""


def check_p(p, name="p", fn="dropout") -> float:
    """Validate a drop probability as torch.nn.functional.dropout does; return it as a float.

    ``name="keep_prob"`` runs the same checks on a keep probability, named so in the errors;
    ``fn`` is the function called, which PyTorch's errors name.
    """
    if type(p) is float and 0.0 <= p <= 1.0:  # the common case, without the ABC checks below
        return p
    what = "dropout probability" if name == "p" else name
    if isinstance(p, torch.Tensor):
        # Like PyTorch's argument parser: a 0-dim tensor without grad passes as a number.
        if p.dim() != 0 or p.requires_grad:
            raise TypeError(f"{fn}(): argument '{name}' must be float, not Tensor "
                            "(a 0-dim tensor that does not require grad is accepted)")
        p = p.item()
    elif isinstance(p, np.generic):
        p = p.item()
    if not isinstance(p, numbers.Real):
        raise TypeError(f"{what} must be a real number in [0, 1], but got {type(p).__name__} {p!r}")
    if math.isnan(p):
        raise NanProbabilityError(f"{what} has to be between 0 and 1, but got {p}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{what} has to be between 0 and 1, but got {p}")
    return float(p)


def keep_threshold(p: float) -> int:
    """Integer threshold T in [0, 2**32]: a 32-bit random word r keeps its element iff r < T."""
    # (1 - p) * 2**32 is exact in binary floating point up to the rounding of 1 - p.
    return int(round((1.0 - p) * UINT32))


def row_major(shape) -> tuple:
    """Row-major strides of ``shape``: each element's logical index, the mask index."""
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def noise_strides(noise_shape) -> tuple:
    """Row-major strides of ``noise_shape`` with 0 on its size-1 dims: an element's index over a
    noise shape is ``sum(coord * stride)``, shared along the size-1 dims."""
    return tuple(0 if s == 1 else st for s, st in zip(noise_shape, row_major(noise_shape)))


def signed64(v: int) -> int:
    """A value in [0, 2**64) as the int64 with the same bits (how seeds reach kernels and ops)."""
    return v - UINT64 if v >= 1 << 63 else v


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int in [0, 2**64), but got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not 0 <= seed < UINT64:
        raise ValueError(f"seed must be in [0, 2**64), but got {seed}")
    return seed


def check_offset(offset, numel: int = 0) -> int:
    """An offset in [0, 2**64] whose call draws ``numel`` stream elements within the stream."""
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"offset must be an int in [0, 2**64), but got {type(offset).__name__} {offset!r}")
    offset = int(offset)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, but got {offset}")
    if offset > UINT64:
        raise ValueError(f"offset must be at most 2**64 (the stream has 2**64 elements), but got {offset}")
    if offset + numel > UINT64:
        raise ValueError(
            f"offset + numel must be <= 2**64 (the stream has 2**64 elements), but got "
            f"offset={offset} and numel={numel}"
        )
    return offset


def philox_numpy(c0, c1, c2, c3, k0, k1, rounds: int = PHILOX_ROUNDS):
    """Philox4x32 on numpy uint64 arrays holding uint32 values (broadcasting)."""
    mask = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for _ in range(rounds):
        p0 = c0 * m0  # 32 x 32 -> 64 bit products: hi and lo words of mulhilo
        p1 = c2 * m1
        c0, c1, c2, c3 = (p1 >> s32) ^ c1 ^ k0, p1 & mask, (p0 >> s32) ^ c3 ^ k1, p0 & mask
        k0 = (k0 + np.uint64(PHILOX_W0)) & mask
        k1 = (k1 + np.uint64(PHILOX_W1)) & mask
    return c0, c1, c2, c3


def stream_words(seed: int, start: int, count: int) -> np.ndarray:
    """The 32-bit random words of stream elements [start, start + count), as uint64."""
    first, last = start // WORDS_PER_CALL, (start + count + WORDS_PER_CALL - 1) // WORDS_PER_CALL
    q = np.arange(first, last, dtype=np.uint64)
    zero = np.zeros((), dtype=np.uint64)
    words = philox_numpy(q & np.uint64(0xFFFFFFFF), q >> np.uint64(32), zero, zero,
                         seed % UINT32, seed >> 32)
    skip = start - first * WORDS_PER_CALL
    return np.stack(words, axis=-1).reshape(-1)[skip:skip + count]


def keep_bits(seed: int, start: int, count: int, threshold: int) -> np.ndarray:
    """Boolean keep bits of stream elements [start, start + count)."""
    return stream_words(seed, start, count) < np.uint64(threshold)
