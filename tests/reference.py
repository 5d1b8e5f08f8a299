"""The tests' one reference for fastdrop's dropout, written from the mask contract.

Two layers:
- ``philox4x32_10`` and ``keep_element``: the contract in plain Python integers, written
  independently of ``fastdrop.contract`` and checked against the Random123 vectors. Slow,
  for spot checks of single elements.
- ``reference_mask`` / ``reference_dropout``: whole tensors. The mask is
  ``fastdrop.dropout_mask`` (the public contract function, itself checked element by
  element against ``keep_element`` in test_contract.py); the values are
  ``x * (1 / (1 - p))`` computed in float32 for float16/bfloat16 (as PyTorch's CUDA kernel
  does) and in the input's dtype otherwise; dropped elements are 0 even for inf/NaN inputs.
"""

from __future__ import annotations

import math
import os

import torch

import fastdrop

# Random123 Philox4x32 constants (multipliers and Weyl key increments).
M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
U32 = 0xFFFFFFFF

# Random123 known-answer vectors for philox4x32-10: (counter, key, output).
KAT_VECTORS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)
_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float32: torch.int32, torch.float64: torch.int64}

# Statistical tests: |z| < Z_BOUND for a binomial count at a fixed seed. For a correct
# generator a 5-sigma excursion has probability ~6e-7 per check.
Z_BOUND = 5.0


def philox4x32_10(counter, key, rounds: int = 10):
    """Philox4x32 on Python ints: counter (c0, c1, c2, c3), key (k0, k1) -> 4 words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        p0, p1 = M0 * c0, M1 * c2  # 64-bit products: hi and lo words of mulhilo
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & U32, p1 & U32, ((p0 >> 32) ^ c3 ^ k1) & U32, p0 & U32
        k0, k1 = (k0 + W0) & U32, (k1 + W1) & U32
    return c0, c1, c2, c3


def threshold(p: float) -> int:
    """The contract's keep threshold: a 32-bit word r keeps its element iff r < threshold(p)."""
    return int(round((1.0 - p) * 2**32))


def stream_word(seed: int, g: int) -> int:
    """Word g of the stream for seed: word g % 4 of Philox at counter g // 4, key = seed."""
    q = g // 4
    return philox4x32_10((q & U32, q >> 32, 0, 0), (seed & U32, seed >> 32))[g % 4]


def keep_element(seed: int, g: int, p: float) -> bool:
    """Whether stream element g (= offset + logical index) is kept for this seed and p."""
    return stream_word(seed, g) < threshold(p)


def scale_of(p: float) -> float:
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in HALF_DTYPES else dtype


def scaled(x: torch.Tensor, p: float) -> torch.Tensor:
    """x * (1 / (1 - p)): in float32 for half types, rounded once to x's dtype."""
    ct = compute_dtype(x.dtype)
    return (x.to(ct) * torch.tensor(scale_of(p), dtype=ct, device=x.device)).to(x.dtype)


def reference_mask(shape, p: float, seed: int, offset: int = 0, device="cpu") -> torch.Tensor:
    return fastdrop.dropout_mask(shape, p, seed=seed, offset=offset, device=device)


def reference_dropout(x: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """Contiguous result of dropout(x, p, seed=seed, offset=offset) by the contract."""
    keep = reference_mask(x.shape, p, seed, offset, device=x.device)
    return torch.where(keep, scaled(x, p), torch.zeros((), dtype=x.dtype, device=x.device))


def binomial_z(k: int, n: int, q: float) -> float:
    """z-score of k successes in n Bernoulli(q) trials."""
    return (k - n * q) / math.sqrt(n * q * (1.0 - q))


def ordered_bits(t: torch.Tensor) -> torch.Tensor:
    """Floats mapped to int64 so adjacent representable values differ by 1 (sign-magnitude)."""
    i = t.contiguous().view(_INT_VIEW[t.dtype]).to(torch.int64)
    nbits = torch.finfo(t.dtype).bits
    magnitude = i & ((1 << (nbits - 1)) - 1)
    return torch.where(i < 0, -magnitude, magnitude)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise distance in units in the last place (a, b: same float dtype and shape)."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    return (ordered_bits(a) - ordered_bits(b)).abs()


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor):
    """Same dtype, shape and bits (so -0.0 != 0.0 and NaN == NaN of the same payload)."""
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    ia = a.detach().cpu().contiguous().view(_INT_VIEW[a.dtype])
    ib = b.detach().cpu().contiguous().view(_INT_VIEW[b.dtype])
    diff = (ia != ib).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} of {a.numel()} elements differ, first at {diff[0].tolist()}"


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def nonzero_randn(shape, dtype, generator=None, device="cpu") -> torch.Tensor:
    """Random values with |x| in [0.5, 4.5): never 0, so 'output != 0' is the keep mask."""
    g = generator if generator is not None else torch.Generator().manual_seed(1234)
    mag = torch.rand(shape, generator=g, dtype=torch.float64) * 4 + 0.5
    sign = torch.randint(0, 2, shape, generator=g, dtype=torch.int64) * 2 - 1
    return (mag * sign).to(dtype).to(device)
