"""The CPU backend's C++ operator and autograd node (``fastdrop.backends.cpu``) that CPU dropout
written out of place takes: built at first use (or by the set-up), the same bits and gradients
as the Python Function for every dtype, layout and noise form, on one or more threads,
differentiable again, used only where it applies; a failed build leaves one warning and the
torch-ops path; a plain pip install gets it too (a forked child: test_cpu_path)."""

import contextlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import FLOAT_DTYPES, assert_bitwise_equal, nonzero_randn, reference_dropout

import fastdrop
from fastdrop.backends import cpu

ROOT = Path(__file__).resolve().parents[1]
needs_op = pytest.mark.skipif(cpu.ops() is None, reason="the C++ CPU operators could not be built here")


def test_the_setup_built_it():
    # make's set-up (.venv/.built) builds the operators: a failed build must not pass silently.
    stamp = ROOT / ".venv" / ".built"
    if not stamp.exists() or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not the set-up's environment")
    assert cpu.library_path().exists() and cpu.ops() is not None


def node_name(y):
    return type(y.grad_fn).__name__


@pytest.fixture
def python_function(monkeypatch):
    """Calls inside take the Python autograd.Function (the operator looks unbuilt)."""
    def use():
        monkeypatch.setattr(cpu, "fresh", lambda *args: None)
    return use


NOISE = {  # name: (shape of x, noise_shape); None entries take x's size
    "per_element": ((1 << 16,), None),  # in pieces on PyTorch's threads where there are 2+
    "odd": ((97, 1001), None),
    "channel": ((4, 6, 33, 35), (None, None, 1, 1)),
    "drop_path": ((5, 7, 3, 64), (None, 1, 1, 1)),
    "mixed": ((3, 4, 5, 6), (1, None, 1, None)),
    "six_runs": ((2, 3, 4, 5, 6, 7), (None, 1, None, 1, None, 1)),  # six walked dims
}


def grads(x, p, seed, offset, g, gg, noise, alpha):
    """y, dy/dx . g, d(dy/dx . g)/dg . gg (through create_graph), y without grad, y's node."""
    def call(v):
        if alpha:
            return (fastdrop.alpha_dropout(v, p, True, seed=seed, offset=offset) if noise is None else
                    fastdrop.feature_alpha_dropout(v, p, True, seed=seed, offset=offset))
        return fastdrop.dropout(v, p, noise_shape=noise, seed=seed, offset=offset)
    x = x.detach().requires_grad_()
    g = g.clone().requires_grad_()
    y = call(x)
    (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
    (ggx,) = torch.autograd.grad(gx, g, gg)
    with torch.no_grad():
        y_no_grad = call(x)
    return y, gx, ggx, y_no_grad, node_name(y)


@needs_op
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("noise,alpha", [(k, False) for k in NOISE] +  # alpha: per element and channel
                         [(k, True) for k in ("per_element", "odd", "channel")])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_same_bits_and_gradients_as_the_python_function(dtype, noise, alpha, threads, python_function):
    shape, noise_shape = NOISE[noise]
    gen = torch.Generator().manual_seed(math.prod(shape))
    x, g, gg = (nonzero_randn(shape, dtype, gen) for _ in range(3))
    x.view(-1)[:3] = torch.tensor([float("inf"), float("nan"), -0.0]).to(dtype)
    seed, offset = 2**64 - 5, 2**63 + 11  # both past int64's range: their bits go through
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = grads(x, 0.3, seed, offset, g, gg, noise_shape, alpha)
        python_function()
        want = grads(x, 0.3, seed, offset, g, gg, noise_shape, alpha)
    finally:
        torch.set_num_threads(before)
    assert got[-1] == "CppFunction" and want[-1] == "MaskedDropoutBackward"
    for a, b in zip(got[:-1], want[:-1]):
        assert_bitwise_equal(a, b)
    if noise_shape is None and not alpha:
        assert_bitwise_equal(got[0], reference_dropout(x, 0.3, seed, offset))


@needs_op
def test_gradients_of_any_layout(python_function):
    # The gradient arrives expanded (from sum), transposed or sliced: the mask follows its
    # logical index, as the forward's did.
    x = torch.randn(64, 48, requires_grad=True)
    gs = [torch.ones(()).expand(64, 48), torch.randn(48, 64).t(), torch.randn(64, 96)[:, ::2]]
    got = [torch.autograd.grad(fastdrop.dropout(x, 0.4, seed=3), x, g)[0] for g in gs]
    python_function()
    want = [torch.autograd.grad(fastdrop.dropout(x, 0.4, seed=3), x, g)[0] for g in gs]
    for a, b in zip(got, want):
        assert_bitwise_equal(a, b)


@needs_op
def test_no_node_where_autograd_records_nothing():
    # The operator skips its node where nothing needs it. Each context must then match
    # F.dropout: same requires_grad, grad_fn and inference flag, and the same bits.
    x, leaf = torch.randn(6, 8), torch.randn(6, 8, requires_grad=True)
    contexts = {"plain": contextlib.nullcontext, "no_grad": torch.no_grad, "inference": torch.inference_mode}
    for name, ctx in contexts.items():
        for v in (x, leaf):
            with ctx():
                y, theirs = fastdrop.dropout(v, 0.5, seed=4), torch.nn.functional.dropout(v, 0.5)
            assert (y.requires_grad, y.grad_fn is None, y.is_inference()) == (
                theirs.requires_grad, theirs.grad_fn is None, theirs.is_inference()), (name, v.requires_grad)
            assert_bitwise_equal(y.detach(), reference_dropout(v.detach(), 0.5, 4, 0))


@needs_op
def test_used_only_where_it_applies():
    x = torch.randn(6, 8, requires_grad=True)
    assert node_name(fastdrop.dropout(x, 0.5)) == "CppFunction"
    assert node_name(fastdrop.dropout(x * 1, 0.5, training=True)) == "CppFunction"
    assert node_name(fastdrop.dropout2d(x.view(1, 6, 2, 4), 0.5)) == "CppFunction"
    assert node_name(fastdrop.dropout_add(x, x, 0.5)) == "CppFunction"
    t = x.t()  # any layout, kept
    assert node_name(fastdrop.dropout(t, 0.5)) == "CppFunction"
    assert fastdrop.dropout(t, 0.5).stride() == t.stride()
    # The Python Function serves in place (it marks the input dirty), forward-mode AD (its
    # jvp) and torch.func.
    h = x * 1
    fastdrop.dropout(h, 0.5, inplace=True)
    assert node_name(h) == "MaskedDropoutBackward"
    import torch.autograd.forward_ad as fwad
    with fwad.dual_level():
        dual = fwad.make_dual(x, torch.ones_like(x))
        y = fastdrop.dropout(dual, 0.5, seed=9)
        assert node_name(y) == "MaskedDropoutBackward"
        assert torch.equal(fwad.unpack_dual(y).tangent, fastdrop.dropout(torch.ones_like(x), 0.5, seed=9))
    gx = torch.func.grad(lambda v: fastdrop.dropout(v, 0.5, seed=9).sum())(x)
    assert torch.equal(gx, fastdrop.dropout(torch.ones_like(x), 0.5, seed=9))


WITHOUT = """
import sys, warnings, torch, fastdrop
from fastdrop.backends import cpu
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x = torch.randn(1000, requires_grad=True)
    y = fastdrop.dropout(x, 0.5, seed=4)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    z = fastdrop.dropout_add(x.detach(), x.detach(), 0.3, seed=5)
    m = fastdrop.dropout_mask((1000,), 0.5, seed=4)
ours = [w for w in caught if "fastdrop" in str(w.message)]
assert cpu.ops() is None, "the operators loaded"
assert len(ours) == 1, [str(w.message) for w in ours]
print(str(ours[0].message).replace(chr(10), " "))
print(type(y.grad_fn).__name__)
torch.save((x.detach(), y.detach(), g, z, m), sys.argv[1])
"""


@pytest.mark.parametrize("why", ["no compiler", "failing compiler"])
def test_a_failed_build_leaves_the_torch_ops_path_with_one_warning(why, tmp_path):
    # A fresh cache folder and a compiler that is absent or fails: one warning that says why,
    # then the same bits through torch ops.
    cxx = str(tmp_path / "absent-c++") if why == "no compiler" else "false"
    env = dict(os.environ, FASTDROP_CACHE=str(tmp_path / "cache"), CXX=cxx)
    done = subprocess.run([sys.executable, "-c", WITHOUT, str(tmp_path / "out.pt")], env=env, check=True,
                          capture_output=True, text=True, timeout=120)
    message, node = done.stdout.strip().splitlines()[-2:]
    assert "not available" in message and "torch ops instead" in message
    assert ("could not run" if why == "no compiler" else "failed") in message
    assert node == "MaskedDropoutBackward"
    x, y, g, z, m = torch.load(tmp_path / "out.pt")
    assert_bitwise_equal(y, reference_dropout(x, 0.5, 4))
    assert_bitwise_equal(g, fastdrop.dropout(torch.ones_like(x), 0.5, seed=4))
    assert_bitwise_equal(z, fastdrop.dropout_add(x, x, 0.3, seed=5))
    assert torch.equal(m, fastdrop.dropout_mask((1000,), 0.5, seed=4))


def test_the_library_is_named_by_its_source_and_torch(monkeypatch, tmp_path):
    # A library built from other source, or for another torch, is never the one loaded.
    name = cpu.library_path().name
    assert re.sub(r"[^0-9A-Za-z.]", "_", torch.__version__) in name
    edited = tmp_path / "ops.cpp"
    edited.write_text(cpu.SOURCE.read_text() + "\n// an edit\n")
    monkeypatch.setattr(cpu, "SOURCE", edited)
    assert cpu.library_path().name != name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the operators are built on Linux")
def test_a_plain_pip_install_gets_the_operators(tmp_path):
    # pip install (no editable checkout, no set-up step) carries ops.cpp, and the first CPU call
    # builds it (into the cache this run uses, which holds it already: same source and torch).
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path / "site"), str(ROOT)], check=True, timeout=300, capture_output=True)
    code = ("import torch, fastdrop; from fastdrop.backends import cpu; print(fastdrop.__file__); "
            "y = fastdrop.dropout(torch.randn(64, requires_grad=True), 0.5, seed=1); "
            "print(cpu.ops() is not None, type(y.grad_fn).__name__)")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True,
                          text=True, timeout=300)
    where, state = done.stdout.strip().splitlines()[-2:]
    assert Path(where).is_relative_to(tmp_path / "site")
    assert state == "True CppFunction"


@needs_op
def test_compiled_autograd_runs_the_node():
    # Compiled autograd traces the backward graph, the C++ node included.
    enable = getattr(getattr(torch._dynamo, "compiled_autograd", None), "_enable", None)
    if enable is None:
        pytest.skip("no compiled autograd in this torch")
    x = torch.randn(64, requires_grad=True)
    y = fastdrop.dropout(x, 0.5, seed=1)
    assert node_name(y) == "CppFunction"
    with enable(torch.compile(backend="eager")):
        (y * y).sum().backward()
    assert_bitwise_equal(x.grad, 2 * y * fastdrop.dropout(torch.ones_like(x), 0.5, seed=1))
