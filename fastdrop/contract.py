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
import sys

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
    elif _is_numpy_scalar(p):
        p = p.item()
    if not isinstance(p, numbers.Real):
        raise TypeError(f"{what} must be a real number in [0, 1], but got {type(p).__name__} {p!r}")
    if math.isnan(p):
        raise NanProbabilityError(f"{what} has to be between 0 and 1, but got {p}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{what} has to be between 0 and 1, but got {p}")
    return float(p)


def _is_numpy_scalar(v) -> bool:
    # numpy's scalars pass as numbers, as PyTorch's argument parser takes them; numpy itself is
    # not needed: where it is not imported, nothing is one.
    np = sys.modules.get("numpy")
    return np is not None and isinstance(v, np.generic)


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


def philox(c0, c1, c2, c3, k0, k1, rounds: int = PHILOX_ROUNDS):
    """Philox4x32 on int64 tensors holding uint32 values (broadcasting); k0, k1 ints or tensors.

    The reference in torch ops: the CPU and CUDA paths are tested bit-identical to it, and it is
    the path where fastdrop's C++ operators are not available. Each 32 x 32-bit product fits 64
    bits; taken as int64 it may wrap, and its two words are the same bits either way.
    """
    lo32 = 0xFFFFFFFF
    for _ in range(rounds):
        p0 = c0 * PHILOX_M0  # 32 x 32 -> 64 bit products: hi and lo words of mulhilo
        p1 = c2 * PHILOX_M1
        c0, c1, c2, c3 = ((p1 >> 32) & lo32) ^ c1 ^ k0, p1 & lo32, ((p0 >> 32) & lo32) ^ c3 ^ k1, p0 & lo32
        k0 = (k0 + PHILOX_W0) & lo32
        k1 = (k1 + PHILOX_W1) & lo32
    return c0, c1, c2, c3


def stream_words(seed, start: int, count: int, device="cpu") -> torch.Tensor:
    """The 32-bit random words of stream elements [start, start + count), as int64.

    ``seed``: an int in [0, 2**64), or a 1-element int64 tensor holding its bits (a compiled
    graph's seed)."""
    first, last = start // WORDS_PER_CALL, (start + count + WORDS_PER_CALL - 1) // WORDS_PER_CALL
    q = torch.arange(last - first, dtype=torch.int64, device=device)
    q0 = first
    if first >= 1 << 63:  # past int64: the counter's halves are taken apart before the add
        q0 = first - UINT64
    q = q + q0
    if isinstance(seed, torch.Tensor):
        s = seed.reshape(()).to(torch.int64)
        k0, k1 = s & 0xFFFFFFFF, (s >> 32) & 0xFFFFFFFF
    else:
        k0, k1 = seed % UINT32, seed >> 32
    zero = torch.zeros((), dtype=torch.int64, device=device)
    words = philox(q & 0xFFFFFFFF, (q >> 32) & 0xFFFFFFFF, zero, zero, k0, k1)
    skip = start - first * WORDS_PER_CALL
    return torch.stack(words, dim=-1).reshape(-1)[skip:skip + count]


def keep_bits(seed, start: int, count: int, threshold: int, device="cpu") -> torch.Tensor:
    """Boolean keep bits of stream elements [start, start + count)."""
    return stream_words(seed, start, count, device) < threshold
