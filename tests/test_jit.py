"""The compiled CPU loops (numba) against the contract's numpy form and PyTorch's casts, and
the path without numba."""

import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastdrop
from fastdrop import contract

numba = pytest.importorskip("numba")
from fastdrop import _jit  # noqa: E402

CASES = [  # seed, start, count, p
    (0, 0, 1, 0.5), (5, 0, 1000, 0.1), (7, 1, 3, 0.5), (7, 2, 1, 0.5), (3, 3, 2, 0.5), (1, 5, 0, 0.5),
    (2**64 - 1, 4 * 2**32 - 3, 777, 0.5), (123, 2**62 + 2, 50, 0.9), (9, 2**64 - 9, 9, 0.3),
    (2**63, 1023, 4097, 0.01), (42, 2**32 + 1, 1030, 0.99), (11, 6, 257 * 4 + 3, 1e-12),
    (13, 2**64 - 3 * _jit.BLOCK - 5, 3 * _jit.BLOCK + 5, 0.5),
]


def key(seed):
    return seed & 0xFFFFFFFF, seed >> 32


@pytest.mark.parametrize("seed,start,count,p", CASES)
def test_keep_bits_equal_the_numpy_contract(seed, start, count, p):
    t = contract.keep_threshold(p)
    out = np.zeros(count + 2, dtype=np.bool_)
    _jit.keep_into(*key(seed), np.uint64(start), np.int64(t), out[1:], 0, count)
    assert np.array_equal(out[1:-1], contract.keep_bits(seed, start, count, t))
    assert not out[0] and not out[-1]  # nothing written outside the range


@pytest.mark.parametrize("seed,start,count,p", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_rows_equal_the_contract(seed, start, count, p, dtype):
    rng = np.random.default_rng(seed % 1000)
    x = rng.standard_normal(count).astype(dtype)
    x[: min(count, 3)] = [np.inf, -np.inf, np.nan][: min(count, 3)]
    y = np.full_like(x, 7.0)
    scale = 1.0 / (1.0 - p)
    t = contract.keep_threshold(p)
    _jit.dropout_rows(x.reshape(1, 1, 1, -1), y.reshape(1, 1, 1, -1), *key(seed), np.uint64(start), np.int64(t),
                      scale, 0.0, 0.0, False, 0, count)
    keep = contract.keep_bits(seed, start, count, t)
    expected = np.where(keep, x * dtype(scale), dtype(0))
    assert np.array_equal(y, expected, equal_nan=True)


@numba.njit
def _widen_all(a, out):
    for i in range(a.size):
        out[i] = _jit._widen(a[i])


@numba.njit
def _narrow_all(f, like, out):
    for i in range(f.size):
        out[i] = _jit._narrow(f[i], like[0])


ALL16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


@pytest.mark.parametrize("dtype,view", [(torch.float16, np.uint16), (torch.bfloat16, np.int16)])
def test_16_bit_widening_equals_torch_for_every_value(dtype, view):
    out = np.empty(1 << 16, np.float32)
    _widen_all(ALL16.view(view), out)
    expected = torch.from_numpy(ALL16.view(np.int16).copy()).view(dtype).float().numpy()
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))  # NaN payloads included


@pytest.mark.parametrize("dtype,view", [(torch.float16, np.uint16), (torch.bfloat16, np.int16)])
def test_16_bit_rounding_equals_torch(dtype, view):
    # Every 16-bit value, the float32 values halfway between neighbours and one ulp either
    # side (ties to even), a sweep of all exponents, and random bit patterns.
    shift = 13 if dtype == torch.float16 else 16
    exact = torch.from_numpy(ALL16.view(np.int16).copy()).view(dtype).float().numpy().view(np.uint32)
    half = np.uint32(1 << (shift - 1))
    rng = np.random.default_rng(0)
    u = np.concatenate([exact, exact + half, exact + half - 1, exact + half + 1, exact - half,
                        np.arange(0, 2**32, 65537, dtype=np.uint64).astype(np.uint32),
                        rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)])
    f = u.view(np.float32)
    out = np.empty(f.size, view)
    _narrow_all(f, ALL16[:1].view(view), out)
    expected = torch.from_numpy(f.copy()).to(dtype).view(torch.int16).numpy().view(view)
    assert np.array_equal(out, expected)  # NaN included: fp16 keeps sign and payload, bf16 gives 0xFFFF


def test_philox_vectorizes():
    # The rounds run in vector lanes: 32 x 32 -> 64 multiplies (vpmuludq) on x86-64.
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the instruction checked is x86-64's")
    fresh = numba.njit(_jit._philox.py_func)  # compiled here: code loaded from the cache has no text
    fresh(np.uint64(0), 4, 1, 2, np.empty(16, np.uint32))  # the argument types _words passes
    asm = fresh.inspect_asm(fresh.signatures[0])
    # Two products per round, less one in the first (c2 = 0 there), for each of the two
    # chains _philox runs side by side.
    assert asm.count("vpmuludq") >= 2 * (2 * contract.PHILOX_ROUNDS - 1)


def test_without_numba_the_numpy_path_gives_the_same_output(tmp_path):
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import torch, fastdrop\n"
        "from fastdrop import _aot, _cpu\n"
        "_aot.load = lambda jit_loops: None  # nor the loops built ahead of time\n"
        "x = torch.randn(100_003, generator=torch.Generator().manual_seed(0))\n"
        "y = (fastdrop.dropout(x, 0.3, seed=99, offset=5), fastdrop.dropout(x.t(), 0.3, seed=9),\n"
        "     fastdrop.dropout1d(x[:100_000].view(10, 100, 100), 0.3, seed=9),\n"
        "     fastdrop.alpha_dropout(x.half(), 0.3, True, seed=2),\n"
        "     fastdrop.bias_dropout_add(x[:100_000].view(100, -1), x[:1000], x[1:100_001].view(100, -1),\n"
        "                               0.3, seed=4))\n"
        "assert _cpu.loops() is None\n"
        "torch.save((x, y), sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "xy.pt")], check=True, timeout=120)
    x, y = torch.load(tmp_path / "xy.pt")
    assert torch.equal(y[0], fastdrop.dropout(x, 0.3, seed=99, offset=5))
    assert torch.equal(y[1], fastdrop.dropout(x.t(), 0.3, seed=9))
    assert torch.equal(y[2], fastdrop.dropout1d(x[:100_000].view(10, 100, 100), 0.3, seed=9))
    assert torch.equal(y[3], fastdrop.alpha_dropout(x.half(), 0.3, True, seed=2))
    bda = fastdrop.bias_dropout_add(x[:100_000].view(100, -1), x[:1000], x[1:100_001].view(100, -1), 0.3, seed=4)
    assert torch.equal(y[4], bda)
