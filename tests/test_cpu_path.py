"""The CPU backend's C++ loops (fastdrop/backends/cpu/ops.cpp): the contract's keep bits, the same
bits as the torch-ops form for every dtype, layout and variant, on any number of PyTorch's
threads and in each instruction-set form (AVX-512, AVX2, plain x86-64), 16-bit casts equal to
PyTorch's, a forked child that does not hang, no temporaries beyond the output, huge pages."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastdrop
from fastdrop import contract
from fastdrop.backends import cpu
from reference import FLOAT_DTYPES, assert_bitwise_equal, nonzero_randn

pytestmark = pytest.mark.skipif(cpu.ops() is None, reason="the C++ CPU operators are not built here")
HUGE_PAGE = 2 << 20
BLOCK = 2048  # stream elements per batch of words in ops.cpp

LAYOUTS = {
    "contiguous": lambda dt: nonzero_randn((3, 5, 7, 11), dt),
    "channels_last": lambda dt: nonzero_randn((3, 5, 7, 11), dt).contiguous(memory_format=torch.channels_last),
    "transposed": lambda dt: nonzero_randn((11, 7, 5, 3), dt).permute(3, 2, 1, 0),
    "sliced": lambda dt: nonzero_randn((3, 10, 7, 23), dt)[:, ::2, :, 1:12],
    "6d_permuted": lambda dt: nonzero_randn((2, 3, 2, 5, 3, 2), dt).permute(5, 3, 1, 0, 4, 2),
}
NOISE = {"per_element": None, "channel": (3, 5, 1, 1), "drop_path": (3, 1, 1, 1), "inner": (1, 1, 7, 11),
         "mixed": (3, 1, 7, 1)}


def specials(x):
    # inf, -inf, NaN, -0.0, a tiny and a huge value in the first places, to test rounding
    flat = x.view(-1) if x.is_contiguous() else None
    if flat is not None and flat.numel() >= 6:
        flat[:6] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 1e-7, 6.5e4]).to(x.dtype)
    return x


def torch_ops_result(x, y_strides, seed, offset, t, scale, noise, affine):
    y = torch.empty_strided(x.shape, y_strides, dtype=x.dtype)
    return cpu._apply_torch(x, y, seed, offset, t, scale, noise, affine)


def noise_for(x, name):
    noise_shape = NOISE[name]
    if noise_shape is None:
        return None
    return tuple(s if d < 4 and noise_shape[d] != 1 else 1 for d, s in enumerate(x.shape))  # 6-D: the first four


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("noise", list(NOISE))
@pytest.mark.parametrize("affine", [None, "alpha"])
def test_compiled_pass_equals_torch_ops(dtype, layout, noise, affine):
    x = specials(LAYOUTS[layout](dtype))
    noise_shape = noise_for(x, noise)
    p = 0.3
    scale, aff = 1 / (1 - p), None
    if affine:
        scale, add, drop = fastdrop.family._alpha_constants(p, dtype)
        aff = (add, drop)
    t = contract.keep_threshold(p)
    seed, offset = 2**64 - 5, 2**40 + 3
    for y in (torch.empty_like(x), torch.empty(x.shape, dtype=dtype)):  # x's strides, and contiguous
        got = cpu.apply(x, y, seed, offset, t, scale, noise_shape=noise_shape, affine=aff)
        assert_bitwise_equal(got, torch_ops_result(x, y.stride(), seed, offset, t, scale, noise_shape, aff))
    inplace = x.clone()
    cpu.apply(inplace, inplace, seed, offset, t, scale, noise_shape=noise_shape, affine=aff)
    assert_bitwise_equal(inplace, torch_ops_result(x, x.stride(), seed, offset, t, scale, noise_shape, aff))
    fresh = cpu.fresh(x, seed, offset, t, scale, noise_shape, aff)  # the operator: x's layout
    assert fresh.stride() == torch.empty_like(x).stride()
    assert_bitwise_equal(fresh, torch_ops_result(x, fresh.stride(), seed, offset, t, scale, noise_shape, aff))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape", [(3, 1000), (1, 7), (300, 257)])
def test_compiled_dropout_add_equals_torch_ops(dtype, with_bias, shape):
    x, r = specials(nonzero_randn(shape, dtype)), nonzero_randn(shape, dtype, torch.Generator().manual_seed(5))
    b = nonzero_randn(shape[-1:], dtype, torch.Generator().manual_seed(6)) if with_bias else None
    t, scale = contract.keep_threshold(0.4), 1 / 0.6
    got = cpu.dropout_add(x, b, r, 77, 5, t, scale)
    assert_bitwise_equal(got, cpu.dropout_add_torch(x, b, r, 77, 5, t, scale))


CASES = [  # seed, start, count, p: offsets at the four word positions, across 2**32 and blocks, to the end
    (0, 0, 1, 0.5), (5, 0, 1000, 0.1), (7, 1, 3, 0.5), (7, 2, 1, 0.5), (3, 3, 2, 0.5),
    (2**64 - 1, 4 * 2**32 - 3, 777, 0.5), (123, 2**62 + 2, 50, 0.9), (9, 2**64 - 9, 9, 0.3),
    (2**63, 1023, 4097, 0.01), (42, 2**32 + 1, 1030, 0.99), (11, 6, 257 * 4 + 3, 1e-12),
    (13, 2**64 - 3 * BLOCK - 5, 3 * BLOCK + 5, 0.5), (1, 2**64 - 40003, 40000, 0.4),
]


@pytest.mark.parametrize("seed,start,count,p", CASES)
def test_keep_bits_equal_the_numpy_contract(seed, start, count, p):
    t = contract.keep_threshold(p)
    out = torch.zeros(count + 2, dtype=torch.bool)
    cpu.keep_mask(out[1:-1], seed, start, t)
    assert torch.equal(out[1:-1], torch.from_numpy(contract.keep_bits(seed, start, count, t)))
    assert not out[0] and not out[-1]  # nothing written outside the range


def test_philox_words_equal_the_contract_past_a_vector_group():
    for calls in (1, 31, 32, 33, 1000):
        out = torch.empty(calls, 4, dtype=torch.int32)
        cpu.ops().philox_words(out, 2**32 - 17, 0x9ABCDEF0, 0x12345678)
        want = contract.stream_words(0x123456789ABCDEF0, (2**32 - 17) * 4, 4 * calls)
        assert np.array_equal(out.view(-1).numpy().view(np.uint32).astype(np.uint64), want), calls


ALL16 = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_widening_equals_torch_for_every_value(dtype):
    # A keep-all dropout is widen, scale, narrow: every value, NaN payloads included.
    x = ALL16.view(dtype)
    for scale in (1.0, 3.0, 2.0**-20):
        assert_bitwise_equal(cpu.fresh(x, 0, 0, 2**32, scale), (x.float() * scale).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_rounding_equals_torch(dtype):
    # Every 16-bit value's float32, the values halfway between neighbours and one ulp either
    # side (ties to even), a sweep of all exponents, and random bit patterns.
    shift = 13 if dtype == torch.float16 else 16
    exact = ALL16.view(dtype).float().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    half = 1 << (shift - 1)
    gen = torch.Generator().manual_seed(0)
    u = torch.cat([exact, exact + half, exact + half - 1, exact + half + 1, exact - half,
                   torch.arange(0, 2**32, 65537, dtype=torch.int64),
                   torch.randint(0, 2**32, (200_000,), generator=gen, dtype=torch.int64)]) & 0xFFFFFFFF
    f = torch.where(u >= 2**31, u - 2**32, u).to(torch.int32).view(torch.float32)
    out = torch.empty(f.shape, dtype=dtype)
    cpu.ops().narrow_into(f, out)
    assert_bitwise_equal(out, f.to(dtype))  # NaN included: fp16 keeps sign and payload, bf16 gives 0xFFFF


ISA_CHECK = """
import sys, torch, fastdrop
from fastdrop.backends import cpu
print(cpu.ops().isa())
x = torch.randn(3, 40001, generator=torch.Generator().manual_seed(0))
out = []
for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    v = x.to(dt)
    out += [cpu.fresh(v, 5, 3, 2**31, 1.7), cpu.fresh(v.t(), 5, 3, 2**31, 1.7),
            cpu.fresh(v, 5, 3, 2**31, 1.7, None, (0.25, -1.5)), cpu.fresh(v, 5, 3, 2**31, 1.7, (3, 1)),
            cpu.dropout_add(v, v[0], v, 5, 3, 2**31, 1.7)]
f = torch.randint(-2**31, 2**31 - 1, (100_000,), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
for dt in (torch.float16, torch.bfloat16):
    h = torch.empty(100_000, dtype=dt)
    cpu.ops().narrow_into(f.view(torch.float32), h)
    out.append(h)
torch.save(out, sys.argv[1])
"""


def test_every_instruction_set_form_gives_the_same_bits(tmp_path):
    # FASTDROP_CPU_ISA caps the form the library picks at load: each form, in its own process,
    # must give the bits this process's form gives.
    results = {}
    for cap in ("plain", "v3", "v4"):
        env = dict(os.environ, FASTDROP_CPU_ISA=cap)
        done = subprocess.run([sys.executable, "-c", ISA_CHECK, str(tmp_path / f"{cap}.pt")], env=env, check=True,
                              capture_output=True, text=True, timeout=120)
        results[done.stdout.strip()] = torch.load(tmp_path / f"{cap}.pt")
    assert "plain" in results
    forms = list(results.values())
    for other in forms[1:]:
        for a, b in zip(forms[0], other):
            assert_bitwise_equal(a, b)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("noise", ["per_element", "channel", "mixed", "inner"])
def test_threads_give_the_bits_of_one_thread(dtype, layout, noise):
    base = nonzero_randn((8, 8, 32, 33), dtype)
    x = {"contiguous": base, "transposed": base.permute(3, 2, 1, 0), "sliced": base[:, ::2, :, 1:]}[layout]
    noise_shape = NOISE[noise] and tuple(s if k != 1 else 1 for s, k in zip(x.shape, NOISE[noise]))
    t, scale = contract.keep_threshold(0.3), 1 / 0.7
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = cpu.fresh(x, 11, 3, t, scale, noise_shape)
        for threads in (2, 3):
            torch.set_num_threads(threads)
            assert_bitwise_equal(cpu.fresh(x, 11, 3, t, scale, noise_shape), want)
            y = torch.empty_like(x)
            assert_bitwise_equal(cpu.apply(x, y, 11, 3, t, scale, noise_shape=noise_shape), want)
    finally:
        torch.set_num_threads(before)
    assert_bitwise_equal(want, torch_ops_result(x, want.stride(), 11, 3, t, scale, noise_shape, None))


FORKED = """
import os, signal, sys, numpy as np, torch, fastdrop
torch.set_num_threads(2)
x, g = torch.randn(1 << 20, requires_grad=True), torch.randn(1 << 20)
strided = x.detach().view(1024, 1024).t()

def results():  # numpy, not torch ops: PyTorch's own parallel ops hang in a forked child
    y = fastdrop.dropout(x, 0.5, seed=7)
    return [y.detach().numpy(), torch.autograd.grad(y, x, g)[0].numpy(),
            np.ascontiguousarray(fastdrop.dropout(strided, 0.5, seed=7).numpy()),
            fastdrop.dropout_mask((1 << 20,), 0.5, seed=3).numpy()]

want = results()  # on the OpenMP threads: libgomp's team is up
pid = os.fork()
if pid == 0:  # libgomp hangs in a forked child: fastdrop runs inline there
    signal.alarm(30)  # a hang ends the child
    ok = all(all(np.array_equal(a, b) for a, b in zip(results(), want)) for _ in range(3))
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_runs_inline():
    subprocess.run([sys.executable, "-c", FORKED], check=True, timeout=90)


PEAK = """
import sys, torch, fastdrop

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field))

def peak_of(fn):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = rss("VmRSS")
    out = fn()
    return rss("VmHWM") - before, out

n = 1 << 26
x = torch.randn(1 << 13, 1 << 13).half()  # 2**26 elements
layouts = {"transposed": x.t(), "channels_last": x.view(64, 1024, 32, 32).permute(0, 2, 3, 1)}
for name, v in layouts.items():
    fastdrop.dropout(v[:2, :2], 0.5, seed=1)  # loads the operators outside the measure
    grew, y = peak_of(lambda: fastdrop.dropout(v, 0.5, seed=1))
    print(name, grew, y.numel() * y.element_size())
    del y
grew, m = peak_of(lambda: fastdrop.dropout_mask((n,), 0.5, seed=3))
print("dropout_mask", grew, m.numel())
"""


def test_peak_memory_is_the_output():
    # 2**26 fp16 elements: the output (128 MiB) plus slack for the allocator and the threads'
    # stacks; no copy of x, no float32 temporaries.
    if sys.platform != "linux":
        pytest.skip("reads /proc/self/status")
    out = subprocess.run([sys.executable, "-c", PEAK], check=True, capture_output=True, text=True, timeout=300)
    for line in out.stdout.strip().splitlines():
        name, grew, size = line.split()
        assert int(grew) <= int(size) + (8 << 20), line


def _vm_flags(address):
    # VmFlags of the mapping holding address, from /proc/self/smaps
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise LookupError(hex(address))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise is Linux's")
@pytest.mark.parametrize("call", ["dropout", "backward", "dropout_add"])
def test_fresh_outputs_ask_for_huge_pages(call):
    # A large fresh output is marked MADV_HUGEPAGE ("hg") before its first write: faulting it
    # in 4 KiB pages cost more than the dropout itself. In-place calls mark nothing.
    x = torch.randn(1 << 23)  # 32 MiB
    if call == "dropout":
        y = fastdrop.dropout(x, 0.1)
    elif call == "backward":
        xg = x.clone().requires_grad_()
        (y,) = torch.autograd.grad(fastdrop.dropout(xg, 0.1), xg, torch.ones_like(x))
    else:
        y = fastdrop.dropout_add(x, x, 0.1)
    first_huge = -(-y.data_ptr() // HUGE_PAGE) * HUGE_PAGE
    assert "hg" in _vm_flags(first_huge)
    fastdrop.dropout(x, 0.1, inplace=True)
    assert "hg" not in _vm_flags(-(-x.data_ptr() // HUGE_PAGE) * HUGE_PAGE)
