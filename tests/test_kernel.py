"""The Triton kernel against the CPU path: bit-identical masks and values for every shape,
layout, dtype, seed, offset and block size. Without a GPU the kernel runs on CPU tensors
through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastdrop
from fastdrop import contract
from reference import (FLOAT_DTYPES, KAT_VECTORS, assert_bitwise_equal, keep_element, nonzero_randn,
                       reference_dropout, reference_mask, scale_of, triton_interpreted, ulp_distance)

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from fastdrop.backends import triton as launcher  # noqa: E402
from fastdrop.kernels import dropout as kernels  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and not triton_interpreted():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not set", allow_module_level=True)
DEVICE = "cuda" if HAS_CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def assert_kernel_matches(y_kernel, y_cpu):
    """Same mask; same values, except bf16 under the interpreter (1 ulp: see below)."""
    y_kernel = y_kernel.cpu()
    assert y_kernel.shape == y_cpu.shape and y_kernel.dtype == y_cpu.dtype
    assert torch.equal(y_kernel != 0, y_cpu != 0)
    if y_cpu.dtype == torch.bfloat16 and triton_interpreted() and y_cpu.numel():
        # Triton's interpreter converts float32 -> bfloat16 by truncation, not round-to-nearest.
        assert ulp_distance(y_kernel, y_cpu).max() <= 1
    else:
        assert_bitwise_equal(y_kernel, y_cpu)


def on_device(x):
    """x moved to the kernel's device with its layout (strides) kept."""
    if x.device.type == DEVICE:
        return x
    out = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=DEVICE)
    return out.copy_(x) if x.numel() else out


SHAPES = {
    "0d": lambda dt: nonzero_randn((), dt),
    "1": lambda dt: nonzero_randn((1,), dt),
    "1023": lambda dt: nonzero_randn((1023,), dt),
    "2049": lambda dt: nonzero_randn((2049,), dt),
    "17x33": lambda dt: nonzero_randn((17, 33), dt),
    "5d": lambda dt: nonzero_randn((2, 3, 4, 5, 7), dt),
    "transposed": lambda dt: nonzero_randn((17, 33), dt).t(),
    "sliced": lambda dt: nonzero_randn((17, 33), dt)[:, ::2],
    "channels_last": lambda dt: nonzero_randn((2, 3, 5, 7), dt).contiguous(memory_format=torch.channels_last),
    "channels_last_3d": lambda dt: nonzero_randn((2, 3, 4, 5, 3), dt).contiguous(
        memory_format=torch.channels_last_3d),
    "offset_view": lambda dt: nonzero_randn((1030,), dt)[5:],
    "5d_permuted": lambda dt: nonzero_randn((2, 3, 4, 5, 7), dt).permute(4, 2, 0, 3, 1),
    "5d_sliced": lambda dt: nonzero_randn((2, 3, 4, 5, 7), dt)[:, ::2, :, ::2, 1:],
    "empty": lambda dt: nonzero_randn((3, 0), dt),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_kernel_equals_cpu_path(shape, dtype):
    x = SHAPES[shape](dtype)
    seed, offset, p = 0x0123_4567_89AB_CDEF, 3, 0.3
    y_cpu = fastdrop.dropout(x, p, seed=seed, offset=offset, backend="cpu")
    y_kernel = fastdrop.dropout(on_device(x), p, seed=seed, offset=offset, backend="triton")
    assert y_kernel.stride() == y_cpu.stride()
    assert_kernel_matches(y_kernel, y_cpu)
    assert torch.equal(y_cpu, reference_dropout(x, p, seed, offset))


@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1])
@pytest.mark.parametrize("offset", [0, 1, 3, 2**32 - 5, 2**32 + 1, 2**34 - 6, 2**62, 2**64 - 1029])
def test_kernel_seeds_offsets(seed, offset):
    x = nonzero_randn((1029,), torch.float32)
    y_kernel = fastdrop.dropout(on_device(x), 0.5, seed=seed, offset=offset, backend="triton")
    assert_kernel_matches(y_kernel, fastdrop.dropout(x, 0.5, seed=seed, offset=offset, backend="cpu"))
    # And against the plain-Python contract at the ends, where counter words carry.
    keep = (y_kernel.cpu() != 0).tolist()
    for i in (0, 1, 2, 3, 1025, 1026, 1027, 1028):
        assert keep[i] == keep_element(seed, offset + i, 0.5)


@pytest.mark.parametrize("p", [1e-6, 0.1, 1 / 3, 0.5, 0.9, 1 - 1e-6])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_kernel_p(p, dtype):
    x = nonzero_randn((2053,), dtype)
    y_kernel = fastdrop.dropout(on_device(x), p, seed=5, offset=1, backend="triton")
    assert_kernel_matches(y_kernel, fastdrop.dropout(x, p, seed=5, offset=1, backend="cpu"))


def test_kernel_dropped_nan_zero_kept_nan_stays():
    x = torch.tensor([float("nan"), float("inf")] * 50)
    y = fastdrop.dropout(on_device(x), 0.5, seed=3, backend="triton").cpu()
    mask = reference_mask(x.shape, 0.5, 3)
    assert (y[~mask] == 0).all()
    assert torch.equal(y[mask].isnan(), x[mask].isnan()) and torch.equal(y[mask].isinf(), x[mask].isinf())


def _launch_args(p):
    return contract.keep_threshold(p), scale_of(p)


@pytest.mark.parametrize("block", [1024, 4096])
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 2**32 - 5])
@pytest.mark.parametrize("make", ["contiguous", "transposed"])
def test_block_size_does_not_change_result(block, offset, make):
    seed, p = 2**64 - 3, 0.4
    base = nonzero_randn((71, 73), torch.float32)  # 5183 elements: several blocks, ragged end
    x = base if make == "contiguous" else base.t()
    xd = on_device(x)
    y = torch.empty_like(xd)
    launcher.launch(xd, y, seed, offset, *_launch_args(p), block=block)
    assert_kernel_matches(y, fastdrop.dropout(x, p, seed=seed, offset=offset, backend="cpu"))
    y_default = fastdrop.dropout(xd, p, seed=seed, offset=offset, backend="triton")
    assert_bitwise_equal(y, y_default)


def test_launch_threshold_full_keeps_all():
    # p == 0 reaches the kernel only through launch(): threshold 2**32 keeps every element.
    x = on_device(nonzero_randn((1000,), torch.float32))
    y = torch.empty_like(x)
    launcher.launch(x, y, 1, 0, *_launch_args(0.0))
    assert_bitwise_equal(y, x)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_kernel_inplace(dtype):
    x = nonzero_randn((33, 65), dtype)
    for view in (lambda t: t, lambda t: t.t(), lambda t: t[:, 1::2]):
        expect = fastdrop.dropout(view(x), 0.5, seed=8, backend="cpu")
        xd = on_device(x.clone())
        v = view(xd)
        y = fastdrop.dropout(v, 0.5, seed=8, inplace=True, backend="triton")
        assert y is v
        assert_kernel_matches(y, expect)
        assert_kernel_matches(view(xd), expect)  # written through the view into xd


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_kernel_backward(dtype):
    seed, p = 21, 0.3
    x = nonzero_randn((1500,), dtype)
    g = nonzero_randn((1500,), dtype, generator=torch.Generator().manual_seed(2))
    xc = x.clone().requires_grad_()
    fastdrop.dropout(xc, p, seed=seed, backend="cpu").backward(g)
    xk = on_device(x).requires_grad_()
    fastdrop.dropout(xk, p, seed=seed, backend="triton").backward(on_device(g))
    assert_kernel_matches(xk.grad, xc.grad)


def test_kernel_gradcheck():
    x = on_device(torch.randn(2, 3, dtype=torch.float64)).t().detach().requires_grad_()

    def fn(t):
        return fastdrop.dropout(t, 0.4, seed=99, offset=2, backend="triton")

    # fast_mode: each interpreted launch costs ~25 ms; the CPU path gets the full check.
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


# ---------------------------------------------------------------------------------------
# Layout kernels: which kernel a layout takes, and bit-identity with the CPU path there.


class _Spy:
    def __init__(self, fn, name, seen):
        self.fn, self.name, self.seen = fn, name, seen

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            # The broadcast kernel's name carries its keep mode: "_dropout_bcast_kernel/ROW".
            mode = [m for m in MODES if kwargs.get("KEEP") == getattr(kernels, m).value]
            self.seen.append(self.name + "".join("/" + m[5:] for m in mode))
            return self.fn[grid](*args, **kwargs)
        return run


MODES = ["KEEP_SCALAR", "KEEP_ROW", "KEEP_COL", "KEEP_COL4", "KEEP_ELEM"]


@pytest.fixture
def kernels_run(monkeypatch):
    """Names of the kernels launched, in order."""
    seen = []
    for name, fn in list(vars(kernels).items()):
        if name.endswith("_kernel") and name.startswith("_"):
            monkeypatch.setattr(kernels, name, _Spy(fn, name, seen))
    return seen


GROUPED = {  # the logical innermost dim a multiple of 4, not innermost in memory
    # 70 channels: two tiles along C, the second ragged
    "channels_last": lambda dt: nonzero_randn((2, 70, 3, 8), dt).contiguous(
        memory_format=torch.channels_last),
    "channels_last_3d": lambda dt: nonzero_randn((2, 3, 2, 3, 4), dt).contiguous(
        memory_format=torch.channels_last_3d),
    "transposed": lambda dt: nonzero_randn((12, 20), dt).t(),
}


# Each dtype (16-byte accesses hold 8, 4 or 2 elements) and offsets on and off a Philox call.
DTYPE_OFFSETS = [(torch.float16, 0), (torch.bfloat16, 3), (torch.float32, 0), (torch.float32, 3),
                 (torch.float64, 1)]


@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS)
@pytest.mark.parametrize("shape", list(GROUPED))
def test_grouped_kernel_equals_cpu_path(shape, dtype, offset, kernels_run):
    x = GROUPED[shape](dtype)
    seed, p = 0x0123_4567_89AB_CDEF, 0.3
    y_kernel = fastdrop.dropout(on_device(x), p, seed=seed, offset=offset, backend="triton")
    assert kernels_run == ["_dropout_grouped_kernel"]
    assert y_kernel.stride() == x.stride()
    assert_kernel_matches(y_kernel, fastdrop.dropout(x, p, seed=seed, offset=offset, backend="cpu"))


def test_grouped_kernel_64_bit_indices_and_alpha(monkeypatch, kernels_run):
    monkeypatch.setattr(launcher, "INDEX32_LIMIT", 0)  # every offset takes the 64-bit path
    x = GROUPED["channels_last"](torch.float32)
    for fn in (fastdrop.dropout, fastdrop.alpha_dropout):
        kw = dict(training=True) if fn is fastdrop.alpha_dropout else {}
        y_kernel = fn(on_device(x), 0.2, seed=77, offset=5, backend="triton", **kw)
        assert_kernel_matches(y_kernel, fn(x, 0.2, seed=77, offset=5, backend="cpu", **kw))
    assert kernels_run == ["_dropout_grouped_kernel"] * 2


BCAST = {  # x, noise shape, the keep mode at offset 0 for 16/32-bit types
    "channels_last": (lambda dt: nonzero_randn((2, 8, 3, 5), dt).contiguous(
        memory_format=torch.channels_last),
                      (2, 8, 1, 1), "COL4"),
    "channels_last_ragged": (lambda dt: nonzero_randn((2, 12, 3, 1), dt).contiguous(
        memory_format=torch.channels_last), (2, 12, 1, 1), "COL4"),
    "contiguous": (lambda dt: nonzero_randn((6, 5, 3, 7), dt), (6, 5, 1, 1), "ROW"),
    "middle_dim": (lambda dt: nonzero_randn((3, 5, 12), dt), (1, 5, 1), "ROW"),
    "one_bit": (lambda dt: nonzero_randn((3, 5, 12), dt), (1, 1, 1), "SCALAR"),
    "two_noise_dims": (lambda dt: nonzero_randn((3, 6, 5), dt).transpose(1, 2), (1, 5, 6), "ELEM"),
}


@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS)
@pytest.mark.parametrize("case", list(BCAST))
def test_bcast_kernel_equals_cpu_path(case, dtype, offset, kernels_run):
    make, noise, mode = BCAST[case]
    x = make(dtype)
    seed, p = 0x0123_4567_89AB_CDEF, 0.5
    y_kernel = fastdrop.noise_dropout(on_device(x), p, noise, seed=seed, offset=offset, backend="triton")
    # Four columns share a Philox call only from a multiple of 4 on, and 16-byte accesses
    # hold 4 or 8 of them for 16/32-bit types; other cases draw a word per column.
    if mode == "COL4" and (offset % 4 or dtype == torch.float64):
        mode = "COL"
    assert kernels_run == [f"_dropout_bcast_kernel/{mode}"]
    assert y_kernel.stride() == x.stride()
    y_cpu = fastdrop.noise_dropout(x, p, noise, seed=seed, offset=offset, backend="cpu")
    assert_kernel_matches(y_kernel, y_cpu)


def test_bcast_kernel_64_bit_indices(monkeypatch, kernels_run):
    monkeypatch.setattr(launcher, "INDEX32_LIMIT", 0)
    for case in ("channels_last", "contiguous"):
        make, noise, _ = BCAST[case]
        x = make(torch.float32)
        y_kernel = fastdrop.noise_dropout(on_device(x), 0.4, noise, seed=9, offset=8, backend="triton")
        y_cpu = fastdrop.noise_dropout(x, 0.4, noise, seed=9, offset=8, backend="cpu")
        assert_kernel_matches(y_kernel, y_cpu)
    assert kernels_run == ["_dropout_bcast_kernel/COL4", "_dropout_bcast_kernel/ROW"]


# ---------------------------------------------------------------------------------------
# Philox inside a kernel: tl.philox on the Random123 vectors equals fastdrop.philox.


@triton.jit(do_not_specialize=["seed"])
def _philox_test_kernel(C_ptr, O_ptr, seed, N: tl.constexpr):
    # C_ptr, O_ptr: (N, 4) int64 holding uint32 values. seed: the 64-bit key, as signed.
    i = tl.arange(0, N)
    c0 = tl.load(C_ptr + 4 * i + 0).to(tl.uint32)
    c1 = tl.load(C_ptr + 4 * i + 1).to(tl.uint32)
    c2 = tl.load(C_ptr + 4 * i + 2).to(tl.uint32)
    c3 = tl.load(C_ptr + 4 * i + 3).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    tl.store(O_ptr + 4 * i + 0, r0.to(tl.int64))
    tl.store(O_ptr + 4 * i + 1, r1.to(tl.int64))
    tl.store(O_ptr + 4 * i + 2, r2.to(tl.int64))
    tl.store(O_ptr + 4 * i + 3, r3.to(tl.int64))


def _tl_philox(counters, key):
    seed = key[0] | (key[1] << 32)
    seed = seed - 2**64 if seed >= 2**63 else seed
    c = torch.tensor(counters, dtype=torch.int64, device=DEVICE)
    out = torch.zeros_like(c)
    _philox_test_kernel[(1,)](c, out, seed, N=c.shape[0])
    return out.cpu()


@pytest.mark.parametrize("counter,key,expected", KAT_VECTORS)
def test_tl_philox_known_answers(counter, key, expected):
    out = _tl_philox([counter, counter], key)
    assert out[0].tolist() == list(expected) and out[1].tolist() == list(expected)
    assert torch.equal(out[0], fastdrop.philox(torch.tensor(counter), torch.tensor(key)))


def test_tl_philox_equals_fastdrop_philox():
    g = torch.Generator().manual_seed(0)
    for key in [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0x7FFFFFFF, 0x80000000), (12345, 0)]:
        counters = torch.randint(0, 2**32, (16, 4), generator=g, dtype=torch.int64)
        counters[0] = torch.tensor([0xFFFFFFFF, 0, 0xFFFFFFFF, 0])
        out = _tl_philox(counters.tolist(), key)
        assert torch.equal(out, fastdrop.philox(counters, torch.tensor(key)))


# ---------------------------------------------------------------------------------------
# Without triton.


def test_import_and_cpu_path_without_triton():
    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # any import of triton now raises ImportError
        import torch
        import fastdrop
        x = torch.ones(1000)
        y = fastdrop.dropout(x, 0.5, seed=3)
        assert torch.equal(y != 0, fastdrop.dropout_mask(x.shape, 0.5, seed=3))
        torch.manual_seed(0)
        z = fastdrop.Dropout(0.5)(x)
        assert 0 < int((z != 0).sum()) < 1000
        try:
            fastdrop.dropout(x, 0.5, backend="triton")
        except RuntimeError as e:
            print("ERROR:", e)
        else:
            raise AssertionError("backend='triton' did not raise")
        assert "triton" not in sys.modules or sys.modules["triton"] is None
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    message = res.stdout.split("ERROR:", 1)[1]
    assert "triton" in message and "importable" in message


# ---------------------------------------------------------------------------------------
# CUDA only.


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n", [1, 4099, 1 << 20])
def test_cuda_bit_identical(dtype, n):
    x = nonzero_randn((n,), dtype)
    y = fastdrop.dropout(x.cuda(), 0.3, seed=2**64 - 1, offset=7)
    assert_bitwise_equal(y.cpu(), fastdrop.dropout(x, 0.3, seed=2**64 - 1, offset=7, backend="cpu"))


@needs_cuda
@pytest.mark.cuda
def test_cuda_no_seed_reproducible():
    x = torch.ones(10000, device="cuda")
    torch.manual_seed(5)
    a1, a2 = fastdrop.dropout(x, 0.5), fastdrop.dropout(x, 0.5)
    torch.manual_seed(5)
    b1 = fastdrop.dropout(x, 0.5)
    assert torch.equal(a1, b1) and not torch.equal(a1, a2)


@needs_cuda
@pytest.mark.cuda
def test_cuda_beyond_int32_indexing():
    # 2**31 + 8 float16 elements (4 GiB, dropped in place): the last elements' mask follows the
    # contract, where 32-bit index arithmetic would wrap.
    n = 2**31 + 8
    free, _ = torch.cuda.mem_get_info()
    if free < 2 * n * 2 + (1 << 30):
        pytest.skip("not enough free GPU memory")
    seed, offset, p = 12345, 3, 0.5
    try:
        x = torch.ones(n, dtype=torch.float16, device="cuda")
        with torch.no_grad():
            fastdrop.dropout(x, p, inplace=True, seed=seed, offset=offset)
        for start in (0, 2**31 - 60, n - 64):  # 64 elements each, the second across 2**31
            keep = x[start:start + 64].cpu() != 0
            assert keep.numel() == 64
            assert torch.equal(keep, reference_mask((64,), p, seed, offset + start))
            assert torch.equal(x[start:start + 64].cpu()[keep], torch.full((int(keep.sum()),), 2.0).half())
    finally:
        x = None
        torch.cuda.empty_cache()
