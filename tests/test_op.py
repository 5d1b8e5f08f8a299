"""The C++ operator and autograd node (``fastdrop._op``) that CPU dropout of contiguous
tensors takes: built by the set-up, the same bits and gradients as the Python Function for
every dtype and noise form, inline and on OpenMP threads, differentiable again, used only
where it applies (a forked child: test_cpu_path)."""

import contextlib
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from reference import FLOAT_DTYPES, assert_bitwise_equal, nonzero_randn, reference_dropout

import fastdrop
from fastdrop import _op

ROOT = Path(__file__).resolve().parents[1]
needs_op = pytest.mark.skipif(_op.op() is None, reason="the C++ operator is not built for this torch "
                                                        "(python -m fastdrop._aot)")


def test_the_setup_built_it():
    # make's set-up (.venv/.aot) builds the operator: a failed build must not pass silently.
    stamp = ROOT / ".venv" / ".aot"
    if not stamp.exists() or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not the set-up's environment")
    assert _op.library_path().exists() and _op.op() is not None


def node_name(y):
    return type(y.grad_fn).__name__


@pytest.fixture
def python_function(monkeypatch):
    """Calls inside take the Python autograd.Function (the operator looks unbuilt)."""
    def use():
        monkeypatch.setattr(_op, "_op", None)
    return use


NOISE = {  # name: (shape of x, noise_shape); None entries take x's size
    "per_element": ((1 << 16,), None),  # on OpenMP pieces where there are 2+ threads
    "odd": ((97, 1001), None),
    "channel": ((4, 6, 33, 35), (None, None, 1, 1)),
    "drop_path": ((5, 7, 3, 64), (None, 1, 1, 1)),
    "mixed": ((3, 4, 5, 6), (1, None, 1, None)),
    "six_runs": ((2, 3, 4, 5, 6, 7), (None, 1, None, 1, None, 1)),  # more runs than a job's four dims
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
    # The Python Function serves the rest: strided inputs (their layout kept), in place (it
    # marks the input dirty), forward-mode AD (its jvp) and torch.func.
    t = x.t()
    assert node_name(fastdrop.dropout(t, 0.5)) == "MaskedDropoutBackward"
    assert fastdrop.dropout(t, 0.5).stride() == t.stride()
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


def test_without_the_library_the_python_function_serves(monkeypatch, tmp_path):
    monkeypatch.setattr(_op, "_op", False)
    monkeypatch.setattr(_op, "library_path", lambda: tmp_path / "absent.so")
    x = torch.randn(100, requires_grad=True)
    y = fastdrop.dropout(x, 0.5, seed=4)
    assert _op.op() is None and node_name(y) == "MaskedDropoutBackward"
    assert_bitwise_equal(y, reference_dropout(x.detach(), 0.5, 4))


def test_the_library_is_named_by_its_source_and_torch(monkeypatch, tmp_path):
    # A library built from other source, or for another torch, is never the one loaded.
    name = _op.library_path().name
    assert re.sub(r"[^0-9A-Za-z]", "_", torch.__version__) in name
    (tmp_path / "_op.cpp").write_text(_op.SOURCE.read_text() + "\n// an edit\n")
    for other in ("_job.py", "_op.py"):
        (tmp_path / other).write_bytes((_op.SOURCE.parent / other).read_bytes())
    monkeypatch.setattr(_op, "__file__", str(tmp_path / "_op.py"))
    assert _op.library_path().name != name


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
