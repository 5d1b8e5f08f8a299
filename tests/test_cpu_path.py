"""The CPU path's compiled pass: same bits as the torch-ops form for every dtype, layout and
variant, on one thread or on PyTorch's OpenMP threads; threads that follow
torch.get_num_threads(); no writer left after an interrupt;
no temporaries beyond the output."""

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import fastdrop
from fastdrop import _cpu, contract
from reference import FLOAT_DTYPES, assert_bitwise_equal, nonzero_randn

pytestmark = pytest.mark.skipif(_cpu.loops() is None, reason="numba not installed")

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
    return _cpu._apply_torch(x, y, seed, offset, t, scale, noise, affine)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("noise", list(NOISE))
@pytest.mark.parametrize("affine", [None, "alpha"])
def test_compiled_pass_equals_torch_ops(dtype, layout, noise, affine):
    x = specials(LAYOUTS[layout](dtype))
    noise_shape = NOISE[noise]
    if noise_shape is not None:  # the pattern on x's dims (6-D: the first four)
        noise_shape = tuple(s if d < 4 and noise_shape[d] != 1 else 1 for d, s in enumerate(x.shape))
    p = 0.3
    scale, aff = 1 / (1 - p), None
    if affine:
        scale, add, drop = fastdrop.family._alpha_constants(p, dtype)
        aff = (add, drop)
    t = contract.keep_threshold(p)
    seed, offset = 2**64 - 5, 2**40 + 3
    for y in (torch.empty_like(x), torch.empty(x.shape, dtype=dtype)):  # x's strides, and contiguous
        got = _cpu.apply(x, y, seed, offset, t, scale, noise_shape=noise_shape, affine=aff)
        assert_bitwise_equal(got, torch_ops_result(x, y.stride(), seed, offset, t, scale, noise_shape, aff))
    inplace = x.clone()
    _cpu.apply(inplace, inplace, seed, offset, t, scale, noise_shape=noise_shape, affine=aff)
    assert_bitwise_equal(inplace, torch_ops_result(x, x.stride(), seed, offset, t, scale, noise_shape, aff))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape", [(3, 1000), (1, 7), (300, 257)])
def test_compiled_dropout_add_equals_torch_ops(dtype, with_bias, shape):
    x, r = specials(nonzero_randn(shape, dtype)), nonzero_randn(shape, dtype, torch.Generator().manual_seed(5))
    b = nonzero_randn(shape[-1:], dtype, torch.Generator().manual_seed(6)) if with_bias else None
    t, scale = contract.keep_threshold(0.4), 1 / 0.6
    got = _cpu.dropout_add(x, b, r, torch.empty_like(x), 77, 5, t, scale)
    assert_bitwise_equal(got, _cpu._dropout_add_torch(x, b, r, torch.empty_like(x), 77, 5, t, scale))


needs_omp = pytest.mark.skipif(_cpu._omp() is None, reason="PyTorch here does not run on libgomp")


@pytest.fixture
def omp_calls(monkeypatch):
    # Jobs of 2^12-element pieces on PyTorch's OpenMP threads; counts the parallel regions.
    monkeypatch.setattr(_cpu, "OMP_CHUNK", 1 << 12)
    real, calls = _cpu._omp(), []

    def counted(*args):
        calls.append(args[2])  # the thread count
        return real(*args)

    monkeypatch.setattr(_cpu, "_gomp_parallel", counted)
    before = torch.get_num_threads()
    yield calls
    torch.set_num_threads(before)


@needs_omp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("noise", ["per_element", "channel", "mixed", "inner"])
def test_openmp_threads_give_the_bits_of_one_thread(dtype, layout, noise, omp_calls):
    base = nonzero_randn((8, 8, 32, 33), dtype)
    x = {"contiguous": base, "transposed": base.permute(3, 2, 1, 0), "sliced": base[:, ::2, :, 1:]}[layout]
    noise_shape = NOISE[noise] and tuple(s if k != 1 else 1 for s, k in zip(x.shape, NOISE[noise]))
    t, scale = contract.keep_threshold(0.3), 1 / 0.7
    torch.set_num_threads(1)
    want = _cpu.apply(x, torch.empty_like(x), 11, 3, t, scale, noise_shape=noise_shape)
    assert not omp_calls
    for threads in (2, 3):
        torch.set_num_threads(threads)
        for aff in (None, (0.25, -1.5)):
            got = _cpu.apply(x, torch.empty_like(x), 11, 3, t, scale, noise_shape=noise_shape, affine=aff)
            assert_bitwise_equal(got, torch_ops_result(x, got.stride(), 11, 3, t, scale, noise_shape, aff))
        got = _cpu.apply(x, torch.empty_like(x), 11, 3, t, scale, noise_shape=noise_shape)
        assert_bitwise_equal(got, want)
    assert omp_calls and set(omp_calls) == {2, 3}


@needs_omp
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_openmp_threads_keep_bits_and_dropout_add(dtype, omp_calls):
    x, r, b = (nonzero_randn(s, dtype, torch.Generator().manual_seed(i)) for i, s in
               enumerate([(40, 1000), (40, 1000), (1000,)]))
    t, scale, end = contract.keep_threshold(0.4), 1 / 0.6, 2**64 - 40000 - 3  # up to the stream's end
    torch.set_num_threads(2)
    bits = _cpu.keep_mask(torch.empty(40000, dtype=torch.bool), 5, end, t)
    assert len(omp_calls) == 1
    assert torch.equal(bits, torch.from_numpy(contract.keep_bits(5, end, 40000, t)))
    for bias in (b, None):
        calls = len(omp_calls)
        got = _cpu.dropout_add(x, bias, r, torch.empty_like(x), 5, 9, t, scale)
        assert len(omp_calls) == calls + 1
        assert_bitwise_equal(got, _cpu._dropout_add_torch(x, bias, r, torch.empty_like(x), 5, 9, t, scale))

FORKED = """
import os, signal, sys, numpy as np, torch, fastdrop
torch.set_num_threads(2)
x, g = torch.randn(1 << 20, requires_grad=True), torch.randn(1 << 20)
strided = x.detach().view(1024, 1024).t()  # the Python path; x itself takes the C++ operator where built

def results():  # numpy, not torch ops: PyTorch's own parallel ops hang in a forked child
    y = fastdrop.dropout(x, 0.5, seed=7)
    return [y.detach().numpy(), torch.autograd.grad(y, x, g)[0].numpy(),
            np.ascontiguousarray(fastdrop.dropout(strided, 0.5, seed=7).numpy())]

want = results()  # on the OpenMP threads: libgomp's team is up
pid = os.fork()
if pid == 0:  # libgomp hangs in a forked child: fastdrop runs inline or on its pool there
    signal.alarm(30)  # a hang ends the child
    ok = all(all(np.array_equal(a, b) for a, b in zip(results(), want)) for _ in range(3))
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@needs_omp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_runs_without_openmp():
    subprocess.run([sys.executable, "-c", FORKED], check=True, timeout=90)



def test_threads_follow_torch_get_num_threads():
    before = torch.get_num_threads()
    n = _cpu.CHUNK * 16
    try:
        for threads in (3, 1, 2):
            torch.set_num_threads(threads)
            barrier = threading.Barrier(threads, timeout=10)  # breaks unless `threads` threads take part
            seen, covered = set(), []

            def piece(lo, hi):
                seen.add(threading.get_ident())
                if len(covered) < threads:
                    covered.append(None)
                    barrier.wait()
                covered.append((lo, hi))

            _cpu.run(piece, n)
            assert len(seen) == threads
            spans = sorted(c for c in covered if c is not None)
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # each index once
    finally:
        torch.set_num_threads(before)


def test_small_calls_stay_on_the_calling_thread():
    seen = set()
    _cpu.run(lambda lo, hi: seen.add(threading.get_ident()), _cpu.CHUNK)
    assert seen == {threading.get_ident()}


def test_interrupt_leaves_no_worker_writing():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    n = _cpu.CHUNK * 12  # 12 pieces for 3 threads
    lock, state = threading.Lock(), {"running": 0, "started": 0, "raised": False}

    def piece(lo, hi):
        with lock:
            state["started"] += 1
            state["running"] += 1
            first = not state["raised"]
            state["raised"] = True
        try:
            if first:
                time.sleep(0.05)  # the other threads are inside their pieces now
                raise KeyboardInterrupt
            time.sleep(0.2)
        finally:
            with lock:
                state["running"] -= 1

    try:
        with pytest.raises(KeyboardInterrupt):
            _cpu.run(piece, n)
        assert state["running"] == 0  # every piece that started has finished
        started = state["started"]
        assert started < 12  # the rest were never started
        time.sleep(0.3)
        assert state["started"] == started  # and none starts later
    finally:
        torch.set_num_threads(before)


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
    fastdrop.dropout(v[:2, :2], 0.5, seed=1)  # loads (or compiles) the loops outside the measure
    grew, y = peak_of(lambda: fastdrop.dropout(v, 0.5, seed=1))
    print(name, grew, y.numel() * y.element_size())
    del y
grew, m = peak_of(lambda: fastdrop.dropout_mask((n,), 0.5, seed=3))
print("dropout_mask", grew, m.numel())
"""


def test_peak_memory_is_the_output():
    # 2**26 fp16 elements: the output (128 MiB) plus at most one CHUNK of float32 temporaries
    # per thread and slack for the allocator; the former path copied x twice (+256 MiB).
    if sys.platform != "linux":
        pytest.skip("reads /proc/self/status")
    out = subprocess.run([sys.executable, "-c", PEAK], check=True, capture_output=True, text=True, timeout=300)
    slack = _cpu.CHUNK * 4 * torch.get_num_threads() + (8 << 20)
    for line in out.stdout.strip().splitlines():
        name, grew, size = line.split()
        assert int(grew) <= int(size) + slack, line


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
    first_huge = -(-y.data_ptr() // _cpu.HUGE_PAGE) * _cpu.HUGE_PAGE
    assert "hg" in _vm_flags(first_huge)
    fastdrop.dropout(x, 0.1, inplace=True)
    assert "hg" not in _vm_flags(-(-x.data_ptr() // _cpu.HUGE_PAGE) * _cpu.HUGE_PAGE)
