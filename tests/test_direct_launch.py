"""The Triton backend's direct launches (``fastdrop.backends.triton``), checked without a GPU: the
kernels compile for sm_90 here (the static check's stand-in driver) and the compiled kernels'
launcher is replaced by a recorder, so a call's direct launch can be compared with the launch
Triton's own ``kernel[grid]`` makes for the same call: the same compiled kernel (the same
specialization), grid, metadata and arguments, for every kernel and layout kind, dtype,
pointer alignment, seed form and the affine form. Where they differ, or the launch raises,
Triton's own launch serves with one warning. On a GPU the first direct launch of each compiled
kernel is also compared with Triton's bit for bit (tests/test_kernel.py runs there)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import functools, os, warnings
os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter's
import torch, triton
from triton.compiler.compiler import CompiledKernel
from triton.runtime.driver import driver
from bench.static_check import _Sm90Driver
from fastdrop import contract
from fastdrop.backends import triton as T

driver.set_active(_Sm90Driver())
calls = []

def record(compiled, *args):
    calls.append((compiled, args))

CompiledKernel.run = property(lambda self: functools.partial(record, self))  # never launched
CompiledKernel._init_handles = lambda self: None  # nothing to load
CompiledKernel.launch_metadata = lambda self, *args: None
T._on_gpu = lambda x: True  # CPU tensors take the direct path here
T._raw_stream = lambda device: 0
torch.cuda.is_current_stream_capturing = lambda: False

def plain(v):
    return v.data_ptr() if isinstance(v, torch.Tensor) else v

def check(label, fn):
    """fn() once to learn its launches; again (direct launches); again through Triton's own."""
    fn()
    calls.clear()
    fn()
    direct = list(calls)
    T.DIRECT = False
    calls.clear()
    fn()
    ref = list(calls)
    T.DIRECT = True
    assert direct and len(direct) == len(ref), (label, len(direct), len(ref))
    for (compiled, args), (ref_compiled, want) in zip(direct, ref):
        assert compiled is ref_compiled, (label, "another specialization")
        assert args[:3] == want[:3] and args[5] == want[5], (label, "grid or metadata")
        assert args[6:9] == (None, None, None), label
        assert any(isinstance(v, torch.Tensor) for v in want[9:]), (label, "Triton's launch passes tensors")
        assert not any(isinstance(v, torch.Tensor) for v in args[9:]), (label, "not a direct launch")
        assert args[9:] == tuple(plain(v) for v in want[9:]), (label, args[9:], want[9:])
    print("ok", label, len(direct))

t = contract.keep_threshold(0.3)
outputs = {}


def out(key, v):  # one output per case: the same pointers on every call
    if key not in outputs:
        outputs[key] = torch.empty_like(v)
    return outputs[key]
g = torch.Generator().manual_seed(0)
seed_t = torch.tensor([7])
for dtype in (torch.float16, torch.bfloat16, torch.float32):
    outputs.clear()
    base = torch.randn(4 * 6 * 8 * 16 + 8, generator=g).to(dtype)
    x = base[: 4 * 6 * 8 * 16].view(4, 6, 8, 16)
    cases = {
        "contiguous": lambda: T.launch(x, out("x", x), 5, 8, t, 1.4),
        "contiguous, offset past 2**33 (a 64-bit counter)": lambda: T.launch(x, out("x", x), 5, 2**40 + 8, t, 1.4),
        "contiguous, offset % 4 = 3, big seed": lambda: T.launch(x, out("x", x), 2**64 - 3, 2**40 + 3, t, 1.4),
        "misaligned x": lambda: T.launch(base[1:1 + x.numel()], out("m", x.view(-1)), 5, 0, t, 1.4),
        "seed tensor": lambda: T.launch(x, out("x", x), seed_t, 0, t, 1.4),
        "affine": lambda: T.launch(x, out("x", x), 5, 0, t, 1.4, affine=(0.25, -1.5)),
        "channels-last": lambda: T.launch(x.permute(0, 2, 3, 1), out("cl", x.permute(0, 2, 3, 1)), 5, 0, t, 2.0),
        "transposed": lambda: T.launch(x.view(24, 128).t(), out("t", x.view(24, 128).t()), 5, 4, t, 2.0),
        "strided": lambda: T.launch(x[:, ::2, :, 1:], out("s", x[:, ::2, :, 1:]), 5, 0, t, 2.0),
        "noise (N, C, 1, 1)": lambda: T.launch(x, out("x", x), 5, 0, t, 2.0, noise_shape=(4, 6, 1, 1)),
        "noise (1, C, H, 1)": lambda: T.launch(x, out("x", x), 5, 0, t, 2.0, noise_shape=(1, 6, 8, 1)),
        "noise (N, 1, 1, W)": lambda: T.launch(x, out("x", x), 5, 0, t, 2.0, noise_shape=(4, 1, 1, 16)),
        "noise (1, 1, 1, 1)": lambda: T.launch(x, out("x", x), 5, 0, t, 2.0, noise_shape=(1, 1, 1, 1)),
        "six dims": lambda: T.launch(x.view(2, 2, 6, 2, 4, 16).permute(5, 3, 1, 4, 2, 0),
                                     out("6", x.view(2, 2, 6, 2, 4, 16).permute(5, 3, 1, 4, 2, 0)), 5, 0, t, 2.0),
        "dropout_add": lambda: T.launch_dropout_add(x, None, x, out("x", x), 5, 0, t, 2.0),
        "bias_dropout_add": lambda: T.launch_dropout_add(x, x[0, 0, 0], x, out("x", x), 5, 0, t, 2.0),
    }
    for label, fn in cases.items():
        check(f"{dtype} {label}", fn)

# A direct launch that raises leaves that compiled kernel on Triton's path, with one warning.
def failing(compiled, *args):
    if not any(isinstance(v, torch.Tensor) for v in args):
        raise RuntimeError("no direct launch here")
    calls.append((compiled, args))

CompiledKernel.run = property(lambda self: functools.partial(failing, self))
T._direct.clear(); T._checked.clear()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x = torch.randn(1024)
    for _ in range(3):
        calls.clear()
        T.launch(x, torch.empty_like(x), 5, 0, t, 1.4)
assert len([w for w in caught if "direct launch" in str(w.message)]) == 1, [str(w.message) for w in caught]
assert list(T._direct.values()) == [None] and len(calls) == 1  # the last call: Triton's launch alone
print("fallback ok")
'''


def test_direct_launches_pass_what_tritons_own_launch_passes():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("ok ") >= 45 and "fallback ok" in done.stdout, done.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_on_the_gpu_direct_launches_give_tritons_bits(dtype):
    import fastdrop
    from fastdrop.backends import triton as T

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 6, 8, 16, device="cuda", generator=g).to(dtype)
    calls = {
        "contiguous": lambda: fastdrop.dropout(x, 0.3, seed=5, offset=3),
        "channels-last": lambda: fastdrop.dropout(x.to(memory_format=torch.channels_last), 0.3, seed=5),
        "transposed": lambda: fastdrop.dropout(x.view(24, 128).t(), 0.3, seed=5),
        "dropout2d": lambda: fastdrop.dropout2d(x, 0.3, seed=5),
        "noise (1, C, H, 1)": lambda: fastdrop.dropout(x, 0.3, noise_shape=(1, 6, 8, 1), seed=5),
        "alpha": lambda: fastdrop.alpha_dropout(x, 0.3, True, seed=5),
        "bias_dropout_add": lambda: fastdrop.bias_dropout_add(x, x[0, 0, 0], x, 0.3, seed=5),
        "backward": lambda: torch.autograd.grad(fastdrop.dropout(x.requires_grad_(), 0.3, seed=5), x,
                                                torch.ones_like(x))[0],
    }
    try:
        for name, call in calls.items():
            call()  # learns the launch
            T.DIRECT = True
            direct = call()
            T.DIRECT = False
            ref = call()
            T.DIRECT = True
            ints = {2: torch.int16, 4: torch.int32}[x.element_size()]
            assert torch.equal(direct.contiguous().view(ints), ref.contiguous().view(ints)), name
    finally:
        T.DIRECT = True
    assert any(run is not None for run in T._direct.values()), "no direct launch was learned"
