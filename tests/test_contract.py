"""The mask contract: Philox known answers, element-by-element agreement with a plain-Python
reference, offset/slice identity, and the statistics of the keep bits."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdrop
from fastdrop import contract
from reference import (KAT_VECTORS, Z_BOUND, binomial_z, keep_element, philox4x32_10, reference_mask,
                       stream_word, threshold)

U64 = 2**64
SEEDS = [0, 1, 0xDEADBEEF, 2**32, 2**63, U64 - 1]


@pytest.mark.parametrize("counter,key,expected", KAT_VECTORS)
def test_reference_philox_matches_random123(counter, key, expected):
    assert philox4x32_10(counter, key) == expected


@pytest.mark.parametrize("counter,key,expected", KAT_VECTORS)
def test_philox_matches_random123(counter, key, expected):
    out = fastdrop.philox(torch.tensor(counter), torch.tensor(key))
    assert out.tolist() == list(expected)
    # Batched counters (..., 4) under one key.
    batch = fastdrop.philox(torch.tensor([[counter, counter]] * 3), torch.tensor(key))
    assert batch.shape == (3, 2, 4)
    assert (batch == torch.tensor(expected)).all()


def test_philox_matches_reference_on_random_inputs():
    rng = random.Random(7)
    for _ in range(8):
        key = (rng.getrandbits(32), rng.getrandbits(32))
        counters = [tuple(rng.getrandbits(32) for _ in range(4)) for _ in range(16)]
        out = fastdrop.philox(torch.tensor(counters), torch.tensor(key))
        assert out.tolist() == [list(philox4x32_10(c, key)) for c in counters]


@pytest.mark.parametrize("rounds", [1, 7])
def test_philox_rounds(rounds):
    counter, key, _ = KAT_VECTORS[2]
    out = fastdrop.philox(torch.tensor(counter), torch.tensor(key), rounds=rounds)
    assert out.tolist() == list(philox4x32_10(counter, key, rounds=rounds))


def test_philox_rejects_bad_input():
    with pytest.raises(ValueError):
        fastdrop.philox(torch.tensor([1, 2, 3]), torch.tensor([0, 0]))
    with pytest.raises(ValueError):
        fastdrop.philox(torch.tensor([1, 2, 3, 4]), torch.tensor([0]))
    with pytest.raises(ValueError):
        fastdrop.philox(torch.tensor([1, 2, 3, 2**32]), torch.tensor([0, 0]))
    with pytest.raises(ValueError):
        fastdrop.philox(torch.tensor([1, 2, 3, -1]), torch.tensor([0, 0]))
    with pytest.raises(TypeError):
        fastdrop.philox(torch.tensor([1.0, 2, 3, 4]), torch.tensor([0, 0]))


def test_keep_threshold():
    assert contract.keep_threshold(0.0) == 2**32
    assert contract.keep_threshold(1.0) == 0
    assert contract.keep_threshold(0.5) == 2**31
    assert contract.keep_threshold(0.75) == 2**30
    ps = [i / 97 for i in range(98)]
    ts = [contract.keep_threshold(p) for p in ps]
    assert ts == sorted(ts, reverse=True)
    assert ts == [threshold(p) for p in ps]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 2**32 - 5, 2**32 + 1, 2**34 - 6, 2**62, U64 - 40])
def test_mask_matches_plain_python_contract(seed, offset):
    n, p = 40, 0.5
    mask = fastdrop.dropout_mask((n,), p, seed=seed, offset=offset)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [keep_element(seed, offset + i, p) for i in range(n)]


@pytest.mark.parametrize("p", [1e-9, 0.1, 1 / 3, 0.9, 1 - 1e-9])
def test_mask_matches_plain_python_contract_for_p(p):
    seed, offset, n = 0x1234_5678_9ABC_DEF0, 5, 64
    mask = fastdrop.dropout_mask((n,), p, seed=seed, offset=offset)
    assert mask.tolist() == [keep_element(seed, offset + i, p) for i in range(n)]


def test_mask_at_threshold_boundary():
    # Elements whose word sits exactly at the threshold: word < T keeps, word == T drops.
    seed = 3
    words = [stream_word(seed, g) for g in range(16)]
    for g, w in enumerate(words):
        at = 1.0 - w / 2**32  # threshold(at) == w exactly (w / 2**32 is exact in a double)
        above = 1.0 - (w + 1) / 2**32  # threshold == w + 1
        assert threshold(at) == w and threshold(above) == w + 1
        assert not bool(fastdrop.dropout_mask((1,), at, seed=seed, offset=g)[0])
        assert bool(fastdrop.dropout_mask((1,), above, seed=seed, offset=g)[0])


@pytest.mark.parametrize("shape", [(), (1,), (17, 33), (2, 3, 4, 5, 6), (3, 0, 2)])
def test_mask_is_row_major(shape):
    seed, p, offset = 99, 0.4, 7
    n = torch.Size(shape).numel()
    mask = fastdrop.dropout_mask(shape, p, seed=seed, offset=offset)
    assert mask.shape == torch.Size(shape)
    assert torch.equal(mask.reshape(-1), fastdrop.dropout_mask((n,), p, seed=seed, offset=offset))


def test_mask_p0_p1():
    assert fastdrop.dropout_mask((1023,), 0.0, seed=5).all()
    assert not fastdrop.dropout_mask((1023,), 1.0, seed=5).any()


@pytest.mark.parametrize("seed", [0, 12345, U64 - 1])
@pytest.mark.parametrize("o", [0, 1, 2, 3, 4, 5, 1023, 2049, 4097])
@pytest.mark.parametrize("n", [1, 5, 1000])
def test_offset_is_slice_of_stream(seed, o, n):
    p = 0.5
    long_mask = fastdrop.dropout_mask((o + n,), p, seed=seed)
    assert torch.equal(fastdrop.dropout_mask((n,), p, seed=seed, offset=o), long_mask[o:])


@pytest.mark.parametrize("o", [0, 1, 3, 4, 1023, 2049])
def test_offset_is_slice_through_dropout(o):
    seed, p, n = 2024, 0.3, 1001
    x = torch.randn(o + n, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    whole = fastdrop.dropout(x, p, seed=seed)
    part = fastdrop.dropout(x[o:].clone(), p, seed=seed, offset=o)
    assert torch.equal(part, whole[o:])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, U64 - 1), o=st.integers(0, 2**40), n=st.integers(0, 300),
       cut=st.integers(0, 300), p=st.floats(0.0, 1.0))
def test_stream_concatenates(seed, o, n, cut, p):
    # Two calls covering [o, o+cut) and [o+cut, o+n) give the mask of one call over [o, o+n).
    cut = min(cut, n)
    whole = fastdrop.dropout_mask((n,), p, seed=seed, offset=o)
    a = fastdrop.dropout_mask((cut,), p, seed=seed, offset=o)
    b = fastdrop.dropout_mask((n - cut,), p, seed=seed, offset=o + cut)
    assert torch.equal(torch.cat([a, b]), whole)


def test_stream_end():
    # The last elements of the 2**64-element stream are reachable; one more is not.
    seed, p = 77, 0.5
    mask = fastdrop.dropout_mask((4,), p, seed=seed, offset=U64 - 4)
    assert mask.tolist() == [keep_element(seed, U64 - 4 + i, p) for i in range(4)]
    with pytest.raises(ValueError):
        fastdrop.dropout_mask((5,), p, seed=seed, offset=U64 - 4)


def test_same_seed_same_mask():
    a = fastdrop.dropout_mask((4099,), 0.5, seed=42, offset=3)
    b = fastdrop.dropout_mask((4099,), 0.5, seed=42, offset=3)
    assert torch.equal(a, b)


def _agreement_z(a: torch.Tensor, b: torch.Tensor, q: float) -> float:
    """z-score of the agreement count of two masks, if they were independent Bernoulli(q)."""
    agree = q * q + (1 - q) * (1 - q)
    return binomial_z(int((a == b).sum()), a.numel(), agree)


N_STAT = 1 << 17


@pytest.mark.parametrize("other", [
    dict(seed=42, offset=1), dict(seed=42, offset=4), dict(seed=42, offset=2**32),
    dict(seed=43, offset=0), dict(seed=42 + 2**32, offset=0), dict(seed=42 ^ (1 << 63), offset=0),
])
def test_different_seed_or_offset_gives_independent_mask(other):
    # Not just different: agreement at the rate of independent masks. Changing the key's high
    # word (seed + 2**32) or the counter's high word (offset 2**32) must matter.
    q = 0.5
    base = fastdrop.dropout_mask((N_STAT,), 1 - q, seed=42, offset=0)
    mask = fastdrop.dropout_mask((N_STAT,), 1 - q, **other)
    assert not torch.equal(base, mask)
    assert abs(_agreement_z(base, mask, q)) < Z_BOUND


@pytest.mark.parametrize("lag", [1, 2, 3, 4, 8, 256, 512, 1024, 2048, 4096, 1 << 16])
def test_no_repetition_across_tiles(lag):
    # A mask that repeats every tile (offsets ignoring the tile index) agrees with itself
    # shifted by the tile size far more often than independent bits do.
    q = 0.5
    mask = fastdrop.dropout_mask((N_STAT + lag,), 1 - q, seed=7)
    assert abs(_agreement_z(mask[:N_STAT], mask[lag:], q)) < Z_BOUND


@pytest.mark.parametrize("seed", [0, 1, U64 - 1])
@pytest.mark.parametrize("p", [0.001, 0.1, 0.5, 0.9, 0.999])
def test_keep_rate_binomial(seed, p):
    mask = fastdrop.dropout_mask((N_STAT,), p, seed=seed, offset=12345)
    assert abs(binomial_z(int(mask.sum()), N_STAT, 1 - p)) < Z_BOUND


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_word_lane_keep_rate(p):
    # All four words of a Philox call are used; each lane (g % 4) keeps at rate 1 - p.
    mask = fastdrop.dropout_mask((N_STAT,), p, seed=11).reshape(-1, 4)
    for lane in range(4):
        assert abs(binomial_z(int(mask[:, lane].sum()), mask.shape[0], 1 - p)) < Z_BOUND


def test_reference_mask_is_dropout_mask():
    expect = fastdrop.dropout_mask((5, 7), 0.25, seed=3, offset=9)
    assert torch.equal(reference_mask((5, 7), 0.25, 3, 9), expect)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(seed=-1), ValueError), (dict(seed=U64), ValueError), (dict(seed=1.0), TypeError),
    (dict(seed=True), TypeError), (dict(seed=1, offset=-1), ValueError),
    (dict(seed=1, offset=U64 - 2), ValueError), (dict(seed=1, offset=1.5), TypeError),
])
def test_mask_rejects_bad_seed_offset(kwargs, exc):
    with pytest.raises(exc):
        fastdrop.dropout_mask((3,), 0.5, **kwargs)


@pytest.mark.parametrize("p", [-0.1, 1.1, float("nan")])
def test_mask_rejects_bad_p(p):
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        fastdrop.dropout_mask((3,), p, seed=0)
