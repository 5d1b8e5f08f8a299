"""The masks are random: Philox known answers, keep rate, independence, counter boundaries.

Every statistical check is a plain function returning (passed, detail). Each test runs it
on the real mask (``fastdrop.dropout_mask``, which the CPU path applies) and on at least
one deliberately broken mask from ``broken_masks`` with the opposite expectation, so the
suite shows that each check can fail. Seeds are fixed, so a run is reproducible; the bounds
come from the null distribution (binomial z-scores, chi-square quantiles), at false-alarm
rates around 1e-6 per check.

The Triton kernel is tied to the same contract by bit equality on small tensors (the
interpreter runs it on CPU).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdrop
from fastdrop import contract
from reference import KAT_VECTORS as KAT

try:
    from . import broken_masks as bm
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import broken_masks as bm

REAL = fastdrop.dropout_mask
Z_MAX = 5.0  # two-sided binomial z bound: false alarm 5.7e-7 per check
ALPHA = 1e-6  # tail probability for the chi-square and multiple-comparison bounds
SEED = 0x9E3779B97F4A7C15  # both halves of the Philox key non-zero
P_VALUES = (0.01, 0.1, 0.5, 0.9, 0.99)
N_STAT = 1 << 20  # >= 10**6 elements per statistical check

# ---------------------------------------------------------------------------------------
# Philox4x32-10, transcribed from the Random123 definition (constants written out here,
# not imported, so a wrong constant in the library cannot hide).
# ---------------------------------------------------------------------------------------
M32 = 0xFFFFFFFF
M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85


def philox_scalar(counter, key, rounds=10):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        prod0, prod1 = M0 * c0, M1 * c2
        hi0, lo0 = prod0 >> 32, prod0 & M32
        hi1, lo1 = prod1 >> 32, prod1 & M32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + W0) & M32, (k1 + W1) & M32
    return c0, c1, c2, c3


def reference_mask(n, p, seed, offset):
    """The mask contract, element by element, with the scalar Philox above."""
    threshold = int(round((1.0 - p) * 2**32))
    key = (seed & M32, seed >> 32)
    out, cache = [], {}
    for g in range(offset, offset + n):
        q, w = divmod(g, 4)
        if q not in cache:
            cache.clear()
            cache[q] = philox_scalar((q & M32, q >> 32, 0, 0), key)
        out.append(cache[q][w] < threshold)
    return torch.tensor(out, dtype=torch.bool)




@pytest.mark.parametrize("counter, key, expected", KAT, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, expected):
    assert philox_scalar(counter, key) == expected
    got = contract.philox(*(torch.tensor(v, dtype=torch.int64) for v in counter), *key)
    assert tuple(int(v) for v in got) == expected
    out = fastdrop.philox(torch.tensor([counter], dtype=torch.int64), torch.tensor(key, dtype=torch.int64))
    assert tuple(out[0].tolist()) == expected


def _interpreter_or_gpu():
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def _triton_philox(counters, keys):
    """tl.philox itself, as the kernel calls it (key = seed halves)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _philox_kat_kernel(C_ptr, S_ptr, O_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        c0 = tl.load(C_ptr + 4 * i + 0).to(tl.uint32)
        c1 = tl.load(C_ptr + 4 * i + 1).to(tl.uint32)
        c2 = tl.load(C_ptr + 4 * i + 2).to(tl.uint32)
        c3 = tl.load(C_ptr + 4 * i + 3).to(tl.uint32)
        seed = tl.load(S_ptr + i)
        r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
        tl.store(O_ptr + 4 * i + 0, r0.to(tl.int64) & 0xFFFFFFFF)
        tl.store(O_ptr + 4 * i + 1, r1.to(tl.int64) & 0xFFFFFFFF)
        tl.store(O_ptr + 4 * i + 2, r2.to(tl.int64) & 0xFFFFFFFF)
        tl.store(O_ptr + 4 * i + 3, r3.to(tl.int64) & 0xFFFFFFFF)

    n = len(counters)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seeds = [k0 | (k1 << 32) for k0, k1 in keys]
    seeds = [s - (1 << 64) if s >= 1 << 63 else s for s in seeds]
    c = torch.tensor(counters, dtype=torch.int64, device=device)
    s = torch.tensor(seeds, dtype=torch.int64, device=device)
    o = torch.empty(n, 4, dtype=torch.int64, device=device)
    _philox_kat_kernel[(1,)](c, s, o, N=n)
    return [tuple(row) for row in o.cpu().tolist()]


@pytest.mark.skipif(not _interpreter_or_gpu(), reason="needs a GPU or TRITON_INTERPRET=1")
def test_triton_philox_known_answers():
    pytest.importorskip("triton")
    counters = [k[0] for k in KAT] + [(0, 0, 0, 0)]  # padded to a power of two
    keys = [k[1] for k in KAT] + [(0, 0)]
    assert _triton_philox(counters, keys)[:3] == [k[2] for k in KAT]


u32 = st.integers(0, M32)


@settings(derandomize=True, max_examples=60, deadline=None, database=None)
@given(counter=st.tuples(u32, u32, u32, u32), key=st.tuples(u32, u32), rounds=st.sampled_from([1, 7, 10]))
def test_philox_vectorized_equals_scalar_property(counter, key, rounds):
    expected = philox_scalar(counter, key, rounds)
    got = contract.philox(*(torch.tensor(v, dtype=torch.int64) for v in counter), *key, rounds=rounds)
    assert tuple(int(v) for v in got) == expected
    as_tensor = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    out = fastdrop.philox(as_tensor(counter), as_tensor(key), rounds)
    assert tuple(out.tolist()) == expected


def test_philox_vectorized_equals_scalar_bulk():
    # Many counters at once (the vectorized path broadcasts), edge words mixed in.
    rng = np.random.default_rng(20240601)
    edges = np.array([0, 1, 0x7FFFFFFF, 0x80000000, M32], dtype=np.uint64)
    counters = rng.integers(0, 1 << 32, size=(512, 4), dtype=np.uint64)
    counters[:25] = np.stack(np.meshgrid(edges, edges, indexing="ij"), -1).reshape(25, 2).repeat(2, axis=1)
    random_key = tuple(int(v) for v in rng.integers(0, 1 << 32, 2))
    for key in [(0, 0), (M32, M32), (0x12345678, 0x9ABCDEF0), random_key]:
        cols = torch.from_numpy(counters.astype(np.int64)).T
        got = torch.stack(contract.philox(*cols, *key), dim=-1).numpy().astype(np.uint64)
        expected = np.array([philox_scalar(tuple(int(v) for v in c), key) for c in counters], dtype=np.uint64)
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------
# Distribution helpers: bounds from the null distribution, no scipy.
# ---------------------------------------------------------------------------------------
def normal_upper_quantile(alpha: float) -> float:
    """z with P(Z > z) = alpha for a standard normal (bisection on erfc)."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > alpha:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def chi2_sf_even(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square with even df: a Poisson(x / 2) sum, exact."""
    assert df % 2 == 0 and df > 0
    lam = x / 2.0
    if lam <= 0:
        return 1.0
    return sum(math.exp(j * math.log(lam) - lam - math.lgamma(j + 1)) for j in range(df // 2))


def chi2_bounds(df: int, alpha: float = ALPHA) -> tuple[float, float]:
    """(lo, hi) with P(X < lo) = P(X > hi) = alpha, X ~ chi-square(df), df even."""

    def solve(target_sf):
        lo, hi = 0.0, df + 100.0 * math.sqrt(df) + 100.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if chi2_sf_even(mid, df) > target_sf:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    return solve(1.0 - alpha), solve(alpha)


def wilson_hilferty(df: int, alpha: float) -> tuple[float, float]:
    z, h = normal_upper_quantile(alpha), 2.0 / (9.0 * df)
    return df * (1 - h - z * math.sqrt(h)) ** 3, df * (1 - h + z * math.sqrt(h)) ** 3


def test_chi2_bounds_agree_with_wilson_hilferty():
    # Two independent derivations of the critical values; also the normal quantile itself.
    assert normal_upper_quantile(0.025) == pytest.approx(1.959964, abs=1e-5)
    assert normal_upper_quantile(1e-6) == pytest.approx(4.753424, abs=1e-5)
    for df in (2, 64, 256, 1024):
        lo, hi = chi2_bounds(df)
        assert chi2_sf_even(hi, df) == pytest.approx(ALPHA, rel=1e-6)
        assert chi2_sf_even(lo, df) == pytest.approx(1 - ALPHA, abs=1e-9)
    assert chi2_bounds(2)[1] == pytest.approx(-2 * math.log(ALPHA))  # chi2(2) is exponential
    for df in (64, 256, 1024):  # the approximation is good where the tests use it
        lo, hi = chi2_bounds(df)
        wlo, whi = wilson_hilferty(df, ALPHA)
        assert whi == pytest.approx(hi, rel=0.02)
        assert wlo == pytest.approx(lo, rel=0.02)


def _q(p):
    """The exact keep probability of the contract: threshold / 2**32."""
    return contract.keep_threshold(p) / 2**32


def _flat(mask):
    return np.asarray(mask.reshape(-1).cpu().numpy(), dtype=bool)


# ---------------------------------------------------------------------------------------
# Check functions. Each returns (passed, detail).
# ---------------------------------------------------------------------------------------
def check_keep_rate(mask, p):
    """Number of kept elements against Binomial(n, q): |z| < Z_MAX."""
    m = _flat(mask)
    n, q = m.size, _q(p)
    z = (int(m.sum()) - n * q) / math.sqrt(n * q * (1 - q))
    return abs(z) < Z_MAX, f"n={n} p={p} kept={int(m.sum())} z={z:+.2f}"


def check_no_drift(mask, p, blocks):
    """Keep counts of equal blocks along the index: sum of squared binomial z-scores is
    chi-square(blocks); both tails at ALPHA (too even is as suspicious as too uneven)."""
    m = _flat(mask)
    q = _q(p)
    counts = m.reshape(blocks, -1).sum(axis=1).astype(np.float64)
    size = m.size // blocks
    chi2 = float((((counts - size * q) ** 2) / (size * q * (1 - q))).sum())
    lo, hi = chi2_bounds(blocks)
    return lo < chi2 < hi, f"blocks={blocks} chi2={chi2:.1f} bounds=({lo:.1f}, {hi:.1f})"


def check_agreement(mask_a, mask_b, p):
    """Two independent masks agree on a fraction q**2 + (1-q)**2 of elements: |z| < Z_MAX."""
    a, b = _flat(mask_a), _flat(mask_b)
    q = _q(p)
    e = q * q + (1 - q) * (1 - q)
    n = a.size
    agree = int((a == b).sum())
    z = (agree - n * e) / math.sqrt(n * e * (1 - e))
    return abs(z) < Z_MAX, f"n={n} agree={agree / n:.5f} expected={e:.5f} z={z:+.2f}"


def check_lag(mask, p, lag):
    """Autocorrelation at a lag, centred on the known q: ~N(0, 1/(n - lag)) for an iid mask."""
    x = _flat(mask).astype(np.float64) - _q(p)
    q = _q(p)
    c = float((x[:-lag] * x[lag:]).mean()) / (q * (1 - q))
    z = c * math.sqrt(x.size - lag)
    return abs(z) < Z_MAX, f"lag={lag} corr={c:+.5f} z={z:+.2f}"


def check_rows(mask2d, p):
    """Rows (each a different kernel tile) are no copies: no two equal, and every pair's
    agreement within a Bonferroni bound over all pairs."""
    m = mask2d.cpu().to(torch.float64)
    rows, length = m.shape
    if torch.unique(mask2d.cpu(), dim=0).shape[0] != rows:
        return False, "two rows are equal"
    q = _q(p)
    e = q * q + (1 - q) * (1 - q)
    agree = (m @ m.T + (1 - m) @ (1 - m).T) / length
    iu = torch.triu_indices(rows, rows, offset=1)
    z = (agree[iu[0], iu[1]] - e) / math.sqrt(e * (1 - e) / length)
    pairs = z.numel()
    z_crit = normal_upper_quantile(ALPHA / (2 * pairs))
    worst = float(z.abs().max())
    return worst < z_crit, f"{pairs} row pairs, max |z|={worst:.2f} bound={z_crit:.2f}"


def check_continuous(mask_fn, p, seed, offset, n):
    """The stream does not restart: the mask at offset o is the second half of the mask of
    twice the length at o - n."""
    a = mask_fn((n,), p, seed=seed, offset=offset)
    b = mask_fn((2 * n,), p, seed=seed, offset=offset - n)[n:]
    return bool(torch.equal(a, b)), f"offset={offset} n={n} mismatches={int((a != b).sum())}"


def assert_verdict(result, expect_pass):
    ok, detail = result
    if expect_pass:
        assert ok, f"real mask failed the check: {detail}"
    else:
        assert not ok, f"broken mask passed the check (the check has no power here): {detail}"


def _id(fn):
    return "real" if fn is REAL else fn.__name__


def _cases(real_params, broken_params):
    """pytest params: (mask_fn, *args, expect_pass)."""
    out = [pytest.param(REAL, *a, True, id="real-" + "-".join(map(str, a))) for a in real_params]
    out += [pytest.param(fn, *a, False, id=fn.__name__ + "-" + "-".join(map(str, a)))
            for fn, *a in broken_params]
    return out


# ---------------------------------------------------------------------------------------
# The contract, bit for bit.
# ---------------------------------------------------------------------------------------
CONTRACT_CASES = [
    # (seed, offset, p, n)
    (0, 0, 0.5, 2048),
    (SEED, 1, 0.1, 2051),
    (0xDEADBEEF << 32, (1 << 34) - 4097, 0.25, 8191),  # counter low word wraps into the high word
    ((1 << 64) - 1, (1 << 64) - 4099, 0.9, 4099),  # the last elements of the stream
]
HARD = ((1 << 64) - 12345, (1 << 63) + (1 << 34) - 4097, 0.25, 8192)  # every fault shows here


@pytest.mark.parametrize("seed, offset, p, n", CONTRACT_CASES)
def test_mask_matches_scalar_contract(seed, offset, p, n):
    assert torch.equal(REAL((n,), p, seed=seed, offset=offset), reference_mask(n, p, seed, offset))


@pytest.mark.parametrize("mask_fn", [REAL] + bm.ALL, ids=_id)
def test_mask_contract_power(mask_fn):
    seed, offset, p, n = HARD
    equal = torch.equal(mask_fn((n,), p, seed=seed, offset=offset), reference_mask(n, p, seed, offset))
    assert equal is (mask_fn is REAL)


# ---------------------------------------------------------------------------------------
# Keep rate and drift.
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mask_fn, p, n, expect_pass",
    _cases([(p, N_STAT) for p in P_VALUES] + [(0.25, 1 << 22)],
           # At p = 0.25 the bf16 rounding moves the keep rate by 2**-9: z ~ -9 at 2**22.
           [(bm.bf16_uniform, 0.25, 1 << 22)]),
)
def test_keep_rate(mask_fn, p, n, expect_pass):
    assert_verdict(check_keep_rate(mask_fn((n,), p, seed=SEED), p), expect_pass)


@pytest.mark.parametrize(
    "mask_fn, p, expect_pass",
    _cases([(p,) for p in P_VALUES], [(bm.drifting_rate, 0.5), (bm.drifting_rate, 0.1)]),
)
def test_keep_rate_does_not_drift(mask_fn, p, expect_pass):
    mask = mask_fn((N_STAT,), p, seed=SEED + 1)
    assert_verdict(check_no_drift(mask, p, blocks=64), expect_pass)
    if mask_fn is bm.drifting_rate:
        # The drift cancels over whole periods: only the block test sees it.
        assert check_keep_rate(mask, p)[0]


# ---------------------------------------------------------------------------------------
# Independence: seeds, offsets, lags, rows in different tiles.
# ---------------------------------------------------------------------------------------
SEED_PAIRS = [(1, 2), (0, SEED), ((1 << 64) - 1, (1 << 64) - 2), (0xCAFE, 0xCAFE + (1 << 32)),
              (SEED, SEED ^ (1 << 63))]


@pytest.mark.parametrize(
    "mask_fn, seeds, p, expect_pass",
    _cases([(s, p) for s in SEED_PAIRS for p in (0.1, 0.5)],
           [(bm.seed_low32, (0xCAFE, 0xCAFE + (1 << 32)), 0.5),
            (bm.seed_low32, (SEED, SEED ^ (1 << 63)), 0.1)]),
)
def test_independent_across_seeds(mask_fn, seeds, p, expect_pass):
    a, b = (mask_fn((N_STAT,), p, seed=s) for s in seeds)
    assert_verdict(check_agreement(a, b, p), expect_pass)


OFFSET_PAIRS = [(0, N_STAT), (0, 1), (0, 4), (0, 2048), (12345, 999_999_937)]


@pytest.mark.parametrize(
    "mask_fn, offsets, p, expect_pass",
    _cases([(o, p) for o in OFFSET_PAIRS for p in (0.1, 0.5)],
           [(bm.offset_misaligned, (0, 1), 0.5), (bm.offset_misaligned, (4, 7), 0.1)]),
)
def test_independent_across_offsets(mask_fn, offsets, p, expect_pass):
    a, b = (mask_fn((N_STAT,), p, seed=SEED, offset=o) for o in offsets)
    assert_verdict(check_agreement(a, b, p), expect_pass)


LAGS = (1, 4, 1024, 2048)


@pytest.mark.parametrize(
    "mask_fn, p, lag, expect_pass",
    _cases([(p, lag) for p in (0.1, 0.5) for lag in LAGS],
           [(bm.word0_shared, 0.5, 1), (bm.lag_copy_1, 0.5, 1), (bm.lag_copy_4, 0.5, 4),
            (bm.lag_copy_4, 0.1, 4), (bm.tile_repeat_1024, 0.5, 1024), (bm.tile_repeat_2048, 0.5, 2048),
            (bm.tile_repeat_2048, 0.1, 2048)]),
)
def test_lag_correlation(mask_fn, p, lag, expect_pass):
    assert_verdict(check_lag(mask_fn((N_STAT,), p, seed=SEED + 2), p, lag), expect_pass)


@pytest.mark.parametrize(
    "mask_fn, p, expect_pass",
    _cases([(0.5,), (0.1,)], [(bm.tile_repeat_2048, 0.5), (bm.tile_repeat_1024, 0.1)]),
)
def test_rows_in_different_tiles_are_not_copies(mask_fn, p, expect_pass):
    # One row per 2048-element kernel program.
    assert_verdict(check_rows(mask_fn((64, 2048), p, seed=SEED + 3), p), expect_pass)


# ---------------------------------------------------------------------------------------
# Counter boundaries: 2**32 elements, 2**32 Philox calls (2**34 elements), 2**63, 2**64.
# ---------------------------------------------------------------------------------------
N_BOUNDARY = 1 << 16
# (a, b): offset a must not give the mask of offset b, the place a faulty wrap would alias it to.
WRAPS = {
    "elements-2^32": (1 << 32, 0),
    "counter-2^32": (1 << 34, 0),
    "elements-2^63": (1 << 63, 0),
    "end-2^64": ((1 << 64) - N_BOUNDARY, (1 << 32) - N_BOUNDARY),
    "straddle-2^34": ((1 << 34) - N_BOUNDARY // 2, (1 << 32) - N_BOUNDARY // 2),
}


@pytest.mark.parametrize(
    "mask_fn, wrap, expect_pass",
    _cases([(w,) for w in WRAPS],
           [(bm.offset_trunc32, "elements-2^32"), (bm.counter_lo32, "counter-2^32"),
            (bm.offset_wrap63, "elements-2^63"), (bm.offset_trunc32, "end-2^64"),
            (bm.offset_trunc32, "straddle-2^34")]),
)
def test_no_wrap_at_counter_boundaries(mask_fn, wrap, expect_pass):
    a, b = WRAPS[wrap]
    ma, mb = (mask_fn((N_BOUNDARY,), 0.5, seed=SEED, offset=o) for o in (a, b))
    assert_verdict(check_agreement(ma, mb, 0.5), expect_pass)


BOUNDARIES = {"2^32": 1 << 32, "2^34": 1 << 34, "2^63": 1 << 63, "2^64": (1 << 64) - 4099}


@pytest.mark.parametrize(
    "mask_fn, boundary, expect_pass",
    _cases([(b,) for b in BOUNDARIES],
           [(bm.offset_misaligned, "2^34"), (bm.offset_misaligned, "2^64"), (bm.tile_repeat_2048, "2^63")]),
)
def test_stream_is_continuous_across_boundaries(mask_fn, boundary, expect_pass):
    # n odd: the longer call starts off a 4-word boundary.
    assert_verdict(check_continuous(mask_fn, 0.5, SEED, BOUNDARIES[boundary], 4099), expect_pass)


# ---------------------------------------------------------------------------------------
# The Triton kernel's mask (interpreter on CPU, compiled on a GPU): equal to the contract.
# ---------------------------------------------------------------------------------------
def kernel_mask(shape, p, *, seed, offset=0, transpose=False):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if transpose:  # walked by the strided kernel; the mask follows the logical index
        x = torch.ones(tuple(reversed(shape)), device=device).t()
    else:
        x = torch.ones(shape, device=device)
    y = fastdrop.dropout(x, p, seed=seed, offset=offset, backend="triton")
    return (y != 0).cpu()


KERNEL_CASES = [
    # (shape, p, seed, offset, transpose)
    ((1 << 15,), 0.5, 0, 0, False),
    ((1 << 15,), 0.1, SEED, 1, False),
    ((1 << 15) - 3, 0.9, (1 << 64) - 1, (1 << 34) - 4097, False),  # key halves all ones
    ((4099,), 0.01, 1 << 63, (1 << 63) + 2, False),
    ((4099,), 0.5, (1 << 32) - 1, (1 << 64) - 4099, False),
    ((3, 1000), 0.3, 1 << 31, (1 << 32) + 3, False),
    ((96, 130), 0.5, SEED, (1 << 34) - 6000, True),
]


@pytest.mark.skipif(not _interpreter_or_gpu(), reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("shape, p, seed, offset, transpose", KERNEL_CASES)
def test_kernel_mask_matches_contract(shape, p, seed, offset, transpose):
    shape = shape if isinstance(shape, tuple) else (shape,)
    got = kernel_mask(shape, p, seed=seed, offset=offset, transpose=transpose)
    assert torch.equal(got, REAL(shape, p, seed=seed, offset=offset))


@pytest.mark.skipif(not _interpreter_or_gpu(), reason="needs a GPU or TRITON_INTERPRET=1")
def test_kernel_mask_statistics():
    # 16 rows, one per kernel program, plus keep rate and lag-1 over the same 2**15 elements.
    mask = kernel_mask((16, 2048), 0.5, seed=SEED + 3)
    assert_verdict(check_rows(mask, 0.5), True)
    assert_verdict(check_keep_rate(mask, 0.5), True)
    assert_verdict(check_lag(mask, 0.5, 1), True)
    assert torch.equal(mask, REAL((16, 2048), 0.5, seed=SEED + 3))


# ---------------------------------------------------------------------------------------
# Slow: the same checks over 2**24 elements and more seeds (make test-slow).
# ---------------------------------------------------------------------------------------
N_SLOW = 1 << 24


@pytest.mark.slow
@pytest.mark.parametrize(
    "mask_fn, p, seed, expect_pass",
    _cases([(p, s) for p in P_VALUES for s in (1, SEED)],
           [(bm.bf16_uniform, 0.25, 1), (bm.bf16_uniform, 0.2, 1)]),
)
def test_keep_rate_large(mask_fn, p, seed, expect_pass):
    assert_verdict(check_keep_rate(mask_fn((N_SLOW,), p, seed=seed), p), expect_pass)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mask_fn, p, expect_pass", _cases([(p,) for p in P_VALUES], [(bm.drifting_rate, 0.9)]),
)
def test_keep_rate_does_not_drift_large(mask_fn, p, expect_pass):
    assert_verdict(check_no_drift(mask_fn((N_SLOW,), p, seed=SEED + 4), p, blocks=1024), expect_pass)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mask_fn, lag, expect_pass",
    _cases([(lag,) for lag in (1, 2, 3, 4, 8, 512, 1024, 2048, 4096)], [(bm.lag_copy_4, 4)]),
)
def test_lag_correlation_large(mask_fn, lag, expect_pass):
    assert_verdict(check_lag(mask_fn((N_SLOW,), 0.5, seed=SEED + 5), 0.5, lag), expect_pass)


@pytest.mark.slow
@pytest.mark.parametrize("mask_fn, expect_pass", _cases([()], [(bm.tile_repeat_2048,)]))
def test_rows_in_different_tiles_large(mask_fn, expect_pass):
    assert_verdict(check_rows(mask_fn((1024, 2048), 0.5, seed=SEED + 6), 0.5), expect_pass)
