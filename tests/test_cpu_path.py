"""The C++ CPU loops (fastdrop/csrc/kernels.cpp, through the operator fastdrop::dropout): the
contract's keep bits, the same bits as the reference backend (torch ops) for every dtype, layout
and variant, on any number of PyTorch's threads and in each instruction-set form (AVX-512, AVX2,
plain x86-64), 16-bit casts equal to PyTorch's, a forked child that does not hang, no
temporaries beyond the output, huge pages."""

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import fastdrop
from fastdrop import contract, variants
from fastdrop.backends import Plan, load_native, native, reference
from reference import FLOAT_DTYPES, assert_bitwise_equal, nonzero_randn

pytestmark = pytest.mark.skipif(load_native() is None, reason="the C++ operators are not built here")
HUGE_PAGE = 2 << 20
BLOCK = 2048  # stream elements per batch of words in kernels.cpp

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


def noise_for(x, name):
    noise_shape = NOISE[name]
    if noise_shape is None:
        return None
    return tuple(s if d < 4 and noise_shape[d] != 1 else 1 for d, s in enumerate(x.shape))  # 6-D: the first four


def plan_of(backend, p, seed, offset, noise_shape=None, affine=None, scale=None, inplace=False):
    return Plan(p, seed, offset, backend, noise_shape, variants.scale_of(p) if scale is None else scale, affine,
                inplace)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("noise", list(NOISE))
@pytest.mark.parametrize("affine", [None, "alpha"])
def test_compiled_pass_equals_torch_ops(dtype, layout, noise, affine):
    x = specials(LAYOUTS[layout](dtype))
    noise_shape = noise_for(x, noise)
    p, scale, aff = 0.3, None, None
    if affine:
        scale, (add, drop) = variants.alpha_form(p, dtype)
        aff = (add, drop)
    seed, offset = 2**64 - 5, 2**40 + 3
    want = reference.run(x, plan_of(reference, p, seed, offset, noise_shape, aff, scale))
    fresh = native.run(x, plan_of(native, p, seed, offset, noise_shape, aff, scale))  # x's layout
    assert fresh.stride() == torch.empty_like(x).stride()
    assert_bitwise_equal(fresh, want)
    for y in (x.clone(), torch.empty(x.shape, dtype=dtype).copy_(x)):  # in place: x's strides, and contiguous
        native.run(y, plan_of(native, p, seed, offset, noise_shape, aff, scale, inplace=True))
        assert_bitwise_equal(y, want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape", [(3, 1000), (1, 7), (300, 257)])
def test_compiled_dropout_add_equals_torch_ops(dtype, with_bias, shape):
    x, r = specials(nonzero_randn(shape, dtype)), nonzero_randn(shape, dtype, torch.Generator().manual_seed(5))
    b = nonzero_randn(shape[-1:], dtype, torch.Generator().manual_seed(6)) if with_bias else None
    got = native.dropout_add(x, b, r, plan_of(native, 0.4, 77, 5))
    assert_bitwise_equal(got, reference.dropout_add(x, b, r, plan_of(reference, 0.4, 77, 5)))


CASES = [  # seed, start, count, p: offsets at the four word positions, across 2**32 and blocks, to the end
    (0, 0, 1, 0.5), (5, 0, 1000, 0.1), (7, 1, 3, 0.5), (7, 2, 1, 0.5), (3, 3, 2, 0.5),
    (2**64 - 1, 4 * 2**32 - 3, 777, 0.5), (123, 2**62 + 2, 50, 0.9), (9, 2**64 - 9, 9, 0.3),
    (2**63, 1023, 4097, 0.01), (42, 2**32 + 1, 1030, 0.99), (11, 6, 257 * 4 + 3, 1e-12),
    (13, 2**64 - 3 * BLOCK - 5, 3 * BLOCK + 5, 0.5), (1, 2**64 - 40003, 40000, 0.4),
]


@pytest.mark.parametrize("seed,start,count,p", CASES)
def test_keep_bits_equal_the_contract(seed, start, count, p):
    got = native.keep_mask((count,), p, seed, start)
    assert torch.equal(got, contract.keep_bits(seed, start, count, contract.keep_threshold(p)))


def test_philox_words_equal_the_contract_past_a_vector_group():
    for calls in (1, 31, 32, 33, 1000):
        out = torch.empty(calls, 4, dtype=torch.int32)
        torch.ops.fastdrop.philox_words(out, 2**32 - 17, 0x9ABCDEF0, 0x12345678)
        want = contract.stream_words(0x123456789ABCDEF0, (2**32 - 17) * 4, 4 * calls)
        assert torch.equal(out.view(-1).to(torch.int64) & 0xFFFFFFFF, want), calls


ALL16 = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_widening_equals_torch_for_every_value(dtype):
    # A keep-all dropout is widen, scale, narrow: every value, NaN payloads included.
    x = ALL16.view(dtype)
    for scale in (1.0, 3.0, 2.0**-20):
        assert_bitwise_equal(torch.ops.fastdrop.dropout(x, 0.0, None, scale, None, 0), (x.float() * scale).to(dtype))


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
    torch.ops.fastdrop.narrow_into(f, out)
    assert_bitwise_equal(out, f.to(dtype))  # NaN included: fp16 keeps sign and payload, bf16 gives 0xFFFF


ISA_CHECK = """
import sys, torch
from fastdrop.backends import load_native
load_native()
op = torch.ops.fastdrop
print(op.isa())
x = torch.randn(3, 40001, generator=torch.Generator().manual_seed(0))
out = []
for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    v = x.to(dt)
    out += [op.dropout(v, 0.5, None, 1.7, None, 5, 3), op.dropout(v.t(), 0.5, None, 1.7, None, 5, 3),
            op.dropout(v, 0.5, None, 1.7, [0.25, -1.5], 5, 3), op.dropout(v, 0.5, [1], 1.7, None, 5, 3),
            op.dropout_add(v, v[0], v, 0.5, 5, 3)]
f = torch.randint(-2**31, 2**31 - 1, (100_000,), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
for dt in (torch.float16, torch.bfloat16):
    h = torch.empty(100_000, dtype=dt)
    op.narrow_into(f.view(torch.float32), h)
    out.append(h)
torch.save(out, sys.argv[1])
"""


def test_every_instruction_set_form_gives_the_same_bits(tmp_path):
    # FASTDROP_CPU_ISA caps the form the library is built for (each form is its own build, in the
    # cache): each form, in its own process, must give the bits the others give.
    results = {}
    for cap in ("plain", "x86-64-v3", "x86-64-v4"):
        env = dict(os.environ, FASTDROP_CPU_ISA=cap)
        done = subprocess.run([sys.executable, "-c", ISA_CHECK, str(tmp_path / f"{cap}.pt")], env=env, check=True,
                              capture_output=True, text=True, timeout=300)
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
    plan = plan_of(native, 0.3, 11, 3, noise_shape)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = native.run(x, plan)
        for threads in (2, 3):
            torch.set_num_threads(threads)
            assert_bitwise_equal(native.run(x, plan), want)
            y = x.clone()
            assert_bitwise_equal(native.run(y, replace(plan, inplace=True)), want)
    finally:
        torch.set_num_threads(before)
    assert_bitwise_equal(want, reference.run(x, replace(plan, backend=reference)))


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
