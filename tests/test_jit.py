"""The compiled CPU loops (numba) against the contract's numpy form, and the path without numba."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import fastdrop

from fastdrop import _jit, contract

pytestmark = pytest.mark.skipif(_jit.dropout_values is None, reason="numba not installed")

CASES = [  # seed, start, count, p
    (0, 0, 1, 0.5), (5, 0, 1000, 0.1), (7, 1, 3, 0.5), (7, 2, 1, 0.5), (3, 3, 2, 0.5), (1, 5, 0, 0.5),
    (2**64 - 1, 4 * 2**32 - 3, 777, 0.5), (123, 2**62 + 2, 50, 0.9), (9, 2**64 - 9, 9, 0.3),
    (2**63, 1023, 4097, 0.01), (42, 2**32 + 1, 1030, 0.99), (11, 6, 257 * 4 + 3, 1e-12),
]


@pytest.mark.parametrize("seed,start,count,p", CASES)
def test_keep_bits_equal_the_numpy_contract(seed, start, count, p):
    t = contract.keep_threshold(p)
    assert np.array_equal(_jit.keep_bits(seed, start, count, t), contract.keep_bits(seed, start, count, t))


@pytest.mark.parametrize("seed,start,count,p", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_values_equal_the_contract(seed, start, count, p, dtype):
    rng = np.random.default_rng(seed % 1000)
    x = rng.standard_normal(count).astype(dtype)
    x[: min(count, 3)] = [np.inf, -np.inf, np.nan][: min(count, 3)]
    y = np.full_like(x, 7.0)
    scale = 1.0 / (1.0 - p)
    _jit.dropout_values(x, y, seed, start, contract.keep_threshold(p), scale)
    keep = contract.keep_bits(seed, start, count, contract.keep_threshold(p))
    expected = np.where(keep, x * dtype(scale), dtype(0))
    assert np.array_equal(y, expected, equal_nan=True)


def test_without_numba_the_numpy_path_gives_the_same_output(tmp_path):
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import torch, fastdrop\n"
        "from fastdrop import _jit\n"
        "assert _jit.dropout_values is None\n"
        "x = torch.randn(100_003, generator=torch.Generator().manual_seed(0))\n"
        "torch.save((x, fastdrop.dropout(x, 0.3, seed=99, offset=5)), sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "xy.pt")], check=True)
    x, y = torch.load(tmp_path / "xy.pt")
    assert torch.equal(y, fastdrop.dropout(x, 0.3, seed=99, offset=5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_values_zero_dropped_rows_and_scale_kept_ones(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, 19)).astype(dtype)
    x[0, 0], x[1, 1], x[2, 2] = np.inf, -np.inf, np.nan
    keep = rng.random(37) < 0.5
    keep[:3] = [False, True, False]
    y = np.full_like(x, 7.0)
    _jit.block_values(x, y, keep, 1.25)
    expected = np.where(keep[:, None], x * dtype(1.25), dtype(0))
    assert np.array_equal(y, expected, equal_nan=True)
