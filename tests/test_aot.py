"""The CPU loops built ahead of time (``python -m fastdrop._aot``, run by make's set-up): the
same bits as numba's JIT for every entry point, called only with the arrays each was built
for, never loaded when stale, and a first CPU call that imports no numba."""

import subprocess
import sys

import numpy as np
import pytest

from fastdrop import _aot, _cpu

jit = _cpu.numba_loops()
aot = _aot.load(jit) if jit is not None else None
pytestmark = pytest.mark.skipif(aot is None, reason="no ahead-of-time loops built for this machine "
                                                     "(python -m fastdrop._aot; x86-64 with AVX2 or AVX-512)")

T_HALF = np.int64(1 << 31)
KEYS = (0x12345678, 0x9ABCDEF0, np.uint64((1 << 64) - 1000))  # k0, k1, an offset near the end of the stream


def storage(tag, shape, rng):
    """Random storage values of the loops' dtypes: every bit pattern for 16-bit types (NaN
    and inf included), normal values and specials for float32/float64."""
    dt = np.dtype(_aot.DTYPES[tag])
    if dt.itemsize == 2:
        return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16).view(dt)
    a = rng.standard_normal(shape).astype(dt)
    a.reshape(-1)[:5] = [np.inf, -np.inf, np.nan, -0.0, 1e-39]
    return a


def views(tag, layout, rng):
    """(x, y) 4-D arrays that are C-contiguous, or strided ('A')."""
    if layout == "C":
        return storage(tag, (2, 3, 5, 7), rng), np.empty((2, 3, 5, 7), _aot.DTYPES[tag])
    x = storage(tag, (2, 7, 5, 6), rng).transpose(0, 3, 2, 1)[:, ::2]
    y = np.empty((2, 7, 5, 6), _aot.DTYPES[tag]).transpose(0, 3, 2, 1)[:, ::2]
    return x, y


def same_bits(a, b):
    return np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("tag", list(_aot.DTYPES))
@pytest.mark.parametrize("layout", ["C", "A"])
@pytest.mark.parametrize("affine", [False, True])
def test_dropout_rows_equals_the_jit(tag, layout, affine):
    rng = np.random.default_rng(1)
    x, y = views(tag, layout, rng)
    assert aot._entry("dropout_rows", x, y, 4, _aot._layout(x, y)) is not None  # the built code runs
    ys = []
    for loops in (aot, jit):
        y[...] = 0
        loops.dropout_rows(x, y, *KEYS, T_HALF, 1 / 0.7, -0.25 if affine else 0.0, 1.5 if affine else 0.0, affine,
                           3, x.size - 2)
        ys.append(y.copy())
    assert same_bits(*ys)


@pytest.mark.parametrize("tag", list(_aot.DTYPES))
@pytest.mark.parametrize("layout", ["C", "A"])
def test_noise_rows_equals_the_jit(tag, layout):
    rng = np.random.default_rng(2)
    x, y = views(tag, layout, rng)
    for ns in ([1, 0, 0, 0], [0, 1, 0, 1]):  # one bit per run; one bit per element
        ns = np.array(ns, dtype=np.int64)
        bits = rng.integers(0, 2, size=64).astype(np.bool_)
        ys = []
        for loops in (aot, jit):
            y[...] = 0
            loops.noise_rows(x, y, bits, ns, 1 / 0.7, 0.0, 0.0, False, 0, x.size)
            ys.append(y.copy())
        assert same_bits(*ys)


@pytest.mark.parametrize("tag", list(_aot.DTYPES))
@pytest.mark.parametrize("has_bias", [False, True])
def test_dropout_add_equals_the_jit(tag, has_bias):
    rng = np.random.default_rng(3)
    x, res = storage(tag, 77 * 13, rng), storage(tag, 77 * 13, rng)
    bias = storage(tag, 13, rng) if has_bias else x[:1]
    ys = []
    for loops in (aot, jit):
        y = np.zeros_like(x)
        loops.dropout_add(x, bias, has_bias, res, y, *KEYS, T_HALF, 1 / 0.7, 5, x.size)
        ys.append(y)
    assert same_bits(*ys)


def test_keep_into_equals_the_jit():
    outs = []
    for loops in (aot, jit):
        out = np.zeros(5000, dtype=np.bool_)
        loops.keep_into(*KEYS, np.int64(3 << 30), out, 1, 4999)
        outs.append(out)
    assert np.array_equal(*outs) and 0.6 < outs[0].mean() < 0.9  # ~0.75 kept


def test_only_the_arrays_an_entry_point_was_built_for_reach_it():
    # The built entry points check nothing: a strided array taken as contiguous gives wrong
    # values, a wrong dtype crashes. Anything else goes to the JIT.
    rng = np.random.default_rng(4)
    c, a = views("f32", "C", rng), views("f32", "A", rng)
    assert aot._entry("dropout_rows", *c, 4, _aot._layout(*c)).__name__.endswith("_C")
    assert _aot._layout(c[0], a[1]) == "A" and _aot._layout(*a) == "A"
    y64 = np.empty(c[1].shape, np.float64)
    readonly = c[1].copy()
    readonly.flags.writeable = False
    for x, y in ((c[0], y64), (c[0].reshape(6, 5, 7), c[1].reshape(6, 5, 7)), (np.zeros(c[0].shape, np.int32), c[1]),
                 (c[0], readonly)):
        assert aot._entry("dropout_rows", x, y, 4, _aot._layout(x, y)) is None


def test_a_module_built_from_other_source_is_not_loaded(monkeypatch):
    monkeypatch.setattr(_aot, "source_hash", lambda: 12345)
    assert _aot.load(lambda: jit) is None


def test_first_cpu_call_imports_no_numba():
    code = ("import sys, torch, fastdrop\n"
            "fastdrop.dropout(torch.randn(4096), 0.5)\n"
            "print('numba' in sys.modules, type(fastdrop._cpu._jit).__name__)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "Loops"], out.stdout


@pytest.mark.skipif(_cpu._omp() is None, reason="PyTorch here does not run on libgomp")
@pytest.mark.parametrize("noise", [None, (4, 1, 32, 1)])
def test_openmp_jobs_equal_the_jits(noise, monkeypatch):
    # omp_body through the module's exported C symbol and through numba's cfunc: same bits.
    import torch

    monkeypatch.setattr(_cpu, "OMP_CHUNK", 1 << 10)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(8, 4, 32, 33).transpose(0, 1)[:, ::2].to(torch.bfloat16)  # strided, 16-bit
        outs, addresses = [], []
        for loops in (aot, jit):
            monkeypatch.setattr(_cpu, "_jit", loops)
            addresses.append(loops.omp_body_address())
            outs.append(_cpu.apply(x, torch.empty_like(x), 5, 7, int(T_HALF), 2.0, noise_shape=noise,
                                   affine=(0.5, -1.0)))
    finally:
        torch.set_num_threads(before)
    assert addresses[0] != addresses[1]  # two different functions ran
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))
