"""The CUDA launch from C++ (fastdrop/csrc/launch.cpp, and its glue in ops.cpp), checked without a
GPU where a CPU can check it:

- its plan (kernel, grid, arguments, constexprs) and launch key equal the Python launcher's
  (fastdrop/backends/triton.py) for every kernel, layout kind, dtype, pointer alignment, seed
  form (int, seed tensor, the captured-call state) and the residual forms;
- a launch key's first call goes to the Python helper (Triton's own launch) and back: the
  kernels compile for sm_90 here (the static check's stand-in driver), the helper hands the
  compiled kernel's parameter types to C++, and the key's next call launches from C++ through a
  stand-in libcuda that records what it is given, which must be what Triton's own launcher
  passes; where the first C++ launch's output differs from Triton's (the stand-in writes
  nothing), the key goes back to Triton's launch with one warning;
- a driver that cannot be loaded leaves Triton's launch, with one warning;
- the CUDA translation unit (the generator's graph-safe state) compiles against this torch's
  headers.

On a GPU the C++ launch is compared bit for bit with Triton's for every kernel, dtype and layout,
a captured call is one kernel whose replays draw fresh masks, and a tensor on a second device
launches there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastdrop import _library, contract, variants
from fastdrop.backends import load_native

ROOT = Path(__file__).resolve().parents[1]
needs_op = pytest.mark.skipif(load_native() is None, reason="the C++ operators are not built here")
# The C++ launch is built where torch has CUDA; without, FASTDROP_CUDA_LAUNCH=1 builds it for its tests
# (its own build in the cache): the in-process tests then run in a subprocess that asks for it.
needs_launch = pytest.mark.skipif(not _library.has_launch(), reason="runs in test_in_a_build_with_the_launch")
LAUNCH_ENV = dict(os.environ, FASTDROP_CUDA_LAUNCH="1")
triton = pytest.importorskip("triton")


def _shared(x, noise):
    return None if noise is None else [d for d, s in enumerate(noise) if s == 1 and x.shape[d] != 1] or None


def python_launches(call):
    """The launches the Python launcher makes for call(T): (key, argument values) each, nothing run."""
    from fastdrop.backends import triton as T

    made = []

    def record(module, name, grid, lead, scalars, post, constexprs, fp_fusion):
        args = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in (*lead, *scalars, *post)]
        made.append((T.launch_key(name, grid, lead, scalars, post, constexprs, fp_fusion), args))

    real, T._launch = T._launch, record
    try:
        call(T)
    finally:
        T._launch = real
    return made


def cpp_launches(*args, **kwargs):
    keys, flat = torch.ops.fastdrop._launch_plan(*args, **kwargs)
    out, i = [], 0
    for key in keys:
        n = flat[i]
        out.append((key, flat[i + 1:i + 1 + n]))
        i += 1 + n
    return out


def cases():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        base = torch.randn(4 * 6 * 8 * 16 + 8, generator=g).to(dtype)
        x = base[: 4 * 6 * 8 * 16].view(4, 6, 8, 16)
        six = x.view(2, 2, 6, 2, 4, 16).permute(5, 3, 1, 4, 2, 0)
        yield f"{dtype} contiguous", x, dict(seed=5, offset=8)
        yield f"{dtype} offset past 2**33", x, dict(seed=5, offset=2**40 + 8)
        yield f"{dtype} offset % 4 = 3, big seed", x, dict(seed=2**64 - 3, offset=2**40 + 3)
        yield f"{dtype} misaligned x", base[1:1 + x.numel()], dict(seed=5, offset=0)
        yield f"{dtype} seed tensor", x, dict(seed_tensor=torch.tensor([7]), offset=4)
        yield f"{dtype} seed and counter tensor", x, dict(seed_tensor=torch.tensor([7, 11]), offset=0)
        yield f"{dtype} affine", x, dict(seed=5, affine=(0.25, -1.5))
        yield f"{dtype} channels-last", x.permute(0, 2, 3, 1), dict(seed=5)
        yield f"{dtype} transposed", x.view(24, 128).t(), dict(seed=5, offset=4)
        yield f"{dtype} strided", x[:, ::2, :, 1:], dict(seed=5)
        for noise in ((4, 6, 1, 1), (1, 6, 8, 1), (4, 1, 1, 16), (1, 1, 1, 1)):
            yield f"{dtype} noise {noise}", x, dict(seed=5, noise=noise)
        yield f"{dtype} noise (N, C, 1, 1) channels-last", x.permute(0, 2, 3, 1), dict(seed=5, noise=(4, 8, 16, 1))
        yield f"{dtype} six dims", six, dict(seed=5)
        yield f"{dtype} six dims, noise", six, dict(seed=5, noise=(16, 1, 2, 1, 6, 1))
        yield f"{dtype} one element", x[:1, :1, :1, :1], dict(seed=5)


@needs_op
@pytest.mark.skipif(_library.has_launch(), reason="the launch is built in this process")
def test_in_a_build_with_the_launch():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "plan"],
                          cwd=ROOT, env=LAUNCH_ENV, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 passed" in done.stdout, done.stdout[-500:]


@needs_op
@needs_launch
def test_the_cpp_plan_and_keys_equal_the_python_launchers():
    n = 0
    for label, x, kw in cases():
        y = torch.empty_like(x)
        seed, seed_t = kw.get("seed", 0), kw.get("seed_tensor")
        offset, affine, noise = kw.get("offset", 0), kw.get("affine"), kw.get("noise")
        p = 0.3
        a, add, drop = (1 / 0.7, 0.0, 0.0) if affine is None else (2.0, *affine)
        scale = a if affine is not None else variants.scale_of(p)
        want = python_launches(lambda T: T.launch(
            x, y, seed if seed_t is None else seed_t, offset, contract.keep_threshold(p), scale,
            noise_shape=noise, affine=affine))
        got = cpp_launches(x, y, p, _shared(x, noise), scale, None if affine is None else list(affine),
                           contract.signed64(seed), offset, seed_t)
        assert got == [(k, [int(v) for v in args]) for k, args in want], label
        n += len(got)
    for dtype in (torch.float16, torch.float32):
        x = torch.randn(3, 40, dtype=dtype)
        y = torch.empty_like(x)
        for bias in (None, x[0]):
            want = python_launches(lambda T: T.launch_dropout_add(x, bias, x, y, 5, 12, contract.keep_threshold(0.3),
                                                                  1 / 0.7))
            got = cpp_launches(x, y, 0.3, seed=5, offset=12, residual=x, bias=bias)
            assert got == [(k, [int(v) for v in args]) for k, args in want], (dtype, bias is None)
            n += 1
    assert n >= 80


@needs_op
@needs_launch
def test_the_plan_check_can_fail():
    # A launch the Python launcher plans differently is seen: the key holds the plan.
    x = torch.randn(4, 6, 8, 16)
    want = python_launches(lambda T: T.launch(x, torch.empty_like(x), 5, 0, contract.keep_threshold(0.3), 2.0,
                                              block=1024))
    got = cpp_launches(x, torch.empty_like(x), 0.3, None, 2.0, None, 5, 0)
    assert got[0][0] != want[0][0]


FAKE_LIBCUDA = r"""
#include <stdint.h>
#include <string.h>
/* A stand-in for the CUDA driver: records each cuLaunchKernel (function, grid, block, shared
   memory, and the first n parameters as 8-byte slots, n set by the test). */
static int expected = 0, launches = 0;
static uint64_t record[4 + 64];
void fake_expect(int n) { expected = n; }
int fake_launches(void) { return launches; }
void fake_last(uint64_t* out) { memcpy(out, record, sizeof(record)); }
int cuLaunchKernel(uint64_t f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared, void* stream, void** params, void** extra) {
  record[0] = f; record[1] = gx; record[2] = bx; record[3] = shared;
  for (int i = 0; i < expected && i < 64; ++i) memcpy(&record[4 + i], params[i], 8);
  ++launches;
  return 0;
}
int cuStreamIsCapturing(void* stream, int* status) { *status = 0; return 0; }
"""

STAND_IN = r'''
import ctypes, functools, os, sys, warnings
os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter's
import torch, triton
from triton.compiler.compiler import CompiledKernel
from triton.runtime.driver import driver
from bench.static_check import _Sm90Driver
from fastdrop.backends import load_native
from fastdrop.backends import triton as T

driver.set_active(_Sm90Driver())
fake = ctypes.CDLL(os.environ["FASTDROP_LIBCUDA"])
triton_calls = []

def tritons_launch(compiled, grid_x, grid_y, grid_z, stream, function, packed, launch_meta, enter, exit_, *args):
    # Triton's own launch, recorded: what its launcher is given. It writes 1.0 into the output.
    triton_calls.append((compiled, grid_x, [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]))
    y = args[T.kd._dropout_kernel.arg_names.index("Y_ptr")]
    y.fill_(1.0)

CompiledKernel.run = property(lambda self: functools.partial(tritons_launch, self))
CompiledKernel._init_handles = lambda self: setattr(self, "function", 0xF00D)  # a loaded CUfunction
CompiledKernel.launch_metadata = lambda self, *args: None
assert load_native() is not None
T.register_helper()  # as load_native does where torch has CUDA
torch.ops.fastdrop._launch_forget()

x = torch.randn(4, 6, 8, 16)
y = torch.full_like(x, 7.0)
call = lambda: torch.ops.fastdrop._launch_stand_in(x, y, 0.3, None, None, None, 5, 8)

def states():
    keys, st = torch.ops.fastdrop._launch_table()
    return st

# 1. A miss: the helper (Triton's launch) serves the call and teaches the table.
call()
assert len(triton_calls) == 1 and fake.fake_launches() == 0, (len(triton_calls), fake.fake_launches())
assert states() == [1], states()  # learned
compiled, grid, triton_args = triton_calls[0]
info = T.kernel_info(compiled, T.kd._dropout_kernel, triton_args)
types = info[5:]
passed = [a for a, t in zip(triton_args, types) if t != 0]
print("params", len(passed), "nulls", info[4])

# 2. The key's first C++ launch: through the stand-in driver, then checked against Triton's own
# launch into a second output. The stand-in writes nothing, so the check fails: one warning,
# Triton's output, and the key goes back to Triton's launch.
fake.fake_expect(len(passed))
y.fill_(7.0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    call()
assert fake.fake_launches() == 1
rec = (ctypes.c_uint64 * 68)()
fake.fake_last(rec)
assert rec[0] == 0xF00D and rec[1] == grid and rec[2] == 32 * compiled.metadata.num_warps, list(rec[:4])
assert rec[3] == compiled.metadata.shared
for i, (value, t) in enumerate(zip(passed, [t for t in types if t != 0])):
    mask = (1 << 32) - 1 if t == 4 else (1 << 64) - 1
    assert rec[4 + i] & mask == value % (1 << 64) & mask, (i, rec[4 + i], value, t)
assert len(triton_calls) == 2  # the check's launch
ours = [w for w in caught if "fastdrop" in str(w.message)]
assert len(ours) == 1 and "differed from Triton" in str(ours[0].message), [str(w.message) for w in caught]
assert bool((y == 1.0).all()), "the output is Triton's"
assert states() == [3], states()  # Triton's launch from now on

# 3. Later calls of the key: Triton's launch, no C++ launch, no more warnings.
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    call()
assert fake.fake_launches() == 1 and len(triton_calls) == 3
assert not [w for w in caught if "fastdrop" in str(w.message)]

# 4. _set_launch(False): every call through Triton's launch, the table untouched.
torch.ops.fastdrop._launch_forget()
torch.ops.fastdrop._set_launch(False)
call(); call()
assert fake.fake_launches() == 1 and len(triton_calls) == 5 and set(states()) <= {0}  # nothing learned
print("stand-in ok")
'''


def _fake_libcuda(tmp_path):
    src = tmp_path / "fake_libcuda.c"
    src.write_text(FAKE_LIBCUDA)
    lib = tmp_path / "libfakecuda.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", str(src), "-o", str(lib)], check=True, timeout=60)
    return lib


@needs_op
def test_a_miss_goes_to_the_helper_and_back_and_a_failed_check_falls_back(tmp_path):
    lib = _fake_libcuda(tmp_path)
    env = dict(LAUNCH_ENV, FASTDROP_LIBCUDA=str(lib))
    done = subprocess.run([sys.executable, "-c", STAND_IN], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "stand-in ok" in done.stdout


NO_DRIVER = STAND_IN.split("x = torch.randn(4, 6, 8, 16)")[0] + r'''
x = torch.randn(4, 6, 8, 16)
y = torch.empty_like(x)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        torch.ops.fastdrop._launch_stand_in(x, y, 0.3, None, None, None, 5, 8)
ours = [str(w.message) for w in caught if "fastdrop" in str(w.message)]
assert len(triton_calls) == 3, len(triton_calls)  # every call: Triton's launch
assert len(ours) == 1 and "cannot load the CUDA driver" in ours[0], ours
print("no driver ok")
'''


@needs_op
def test_a_driver_that_does_not_load_leaves_tritons_launch_with_one_warning(tmp_path):
    env = dict(LAUNCH_ENV, FASTDROP_LIBCUDA=str(tmp_path / "absent-libcuda.so"))
    done = subprocess.run([sys.executable, "-c", NO_DRIVER.replace('fake = ctypes.CDLL(os.environ["FASTDROP_LIBCUDA"])',
                                                                   "")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no driver ok" in done.stdout


@needs_op
def test_the_cuda_translation_unit_compiles_against_this_torch(tmp_path):
    # The library's CUDA part (the generator's graph-safe state), compiled as a CUDA build of torch
    # would build it: torch's own headers (ATen/cuda), compile only (linking needs libtorch_cuda).
    isa = _library.machine_isa()
    tus, _ = _library.units(isa, True, True)
    includes, _ = _library._torch_dirs()
    assert {src for src, _ in tus} >= {"cuda.cpp", "cuda_launch.cpp", "launch.cpp"}
    for src, flags in tus:
        if src in ("cuda.cpp", "cuda_launch.cpp"):  # the rest is the CPU build's, which this run loads
            opt = [f for f in flags if not f.startswith("-O")] + ["-O0"]
            cmd = [*_library.compiler(), *opt, *(f"-I{p}" for p in includes), f"-I{_library.CSRC}", "-c",
                   str(_library.CSRC / src), "-o", str(tmp_path / f"{src}.o")]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, done.stdout + done.stderr
            assert (tmp_path / f"{src}.o").stat().st_size > 0


# ---- on a GPU ------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _int_view(t):
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_on_the_gpu_the_cpp_launch_gives_tritons_bits(dtype):
    import fastdrop

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 6, 8, 16, device="cuda", generator=g).to(dtype)
    calls = {
        "contiguous": lambda: fastdrop.dropout(x, 0.3, seed=5, offset=3),
        "channels-last": lambda: fastdrop.dropout(x.to(memory_format=torch.channels_last), 0.3, seed=5),
        "transposed": lambda: fastdrop.dropout(x.view(24, 128).t(), 0.3, seed=5),
        "strided": lambda: fastdrop.dropout(x[:, ::2, :, 1:], 0.3, seed=5),
        "six dims": lambda: fastdrop.dropout(x.view(2, 2, 6, 2, 4, 16).permute(5, 3, 1, 4, 2, 0), 0.3, seed=5),
        "dropout2d": lambda: fastdrop.dropout2d(x, 0.3, seed=5),
        "drop_path": lambda: fastdrop.drop_path(x, 0.3, True, seed=5),
        "noise (1, C, H, 1)": lambda: fastdrop.dropout(x, 0.3, noise_shape=(1, 6, 8, 1), seed=5),
        "alpha": lambda: fastdrop.alpha_dropout(x, 0.3, True, seed=5),
        "dropout_add": lambda: fastdrop.dropout_add(x, x, 0.3, seed=5),
        "bias_dropout_add": lambda: fastdrop.bias_dropout_add(x, x[0, 0, 0], x, 0.3, seed=5),
        "backward": lambda: torch.autograd.grad(fastdrop.dropout(x.requires_grad_(), 0.3, seed=5), x,
                                                torch.ones_like(x))[0],
    }
    try:
        for name, call in calls.items():
            _library.set_launch("python")
            ref = call()
            _library.set_launch("cpp")
            for _ in range(3):  # a miss (Triton's launch), the checked first C++ launch, a trusted one
                got = call()
                assert torch.equal(_int_view(got), _int_view(ref)), name
    finally:
        _library.set_launch("cpp")
    keys, states = torch.ops.fastdrop._launch_table()
    assert 2 in states, "no launch key became trusted"


@cuda
def test_on_the_gpu_a_captured_call_is_one_kernel_and_replays_draw_anew():
    import fastdrop

    x = torch.ones(1 << 16, device="cuda")
    for _ in range(3):  # warm: keys learned and checked outside capture
        fastdrop.dropout(x, 0.5)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = fastdrop.dropout(x, 0.5)
    masks = []
    for _ in range(3):
        graph.replay()
        masks.append((y != 0).clone())
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1, [e.name for e in kernels]


@cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_on_the_gpu_a_tensor_on_another_device_launches_there():
    import fastdrop

    x = torch.randn(1 << 12, device="cuda:1")
    with torch.cuda.device(0):
        y = fastdrop.dropout(x, 0.3, seed=5)
    assert y.device == x.device
    assert torch.equal(y.cpu(), fastdrop.dropout(x.cpu(), 0.3, seed=5))
