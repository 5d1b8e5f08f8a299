"""The C++ operator fastdrop::dropout and its autograd node, which every call on a plain tensor
runs: the same bits and gradients as the Python DropoutFunction around it for every dtype,
layout and noise form, on one or more threads, differentiable again, no node where autograd
records nothing; few Python frames in front of it, none inside a compiled call; two identical
compiled calls stay two; torch.library.opcheck; a plain pip install gets it too."""

import contextlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import FLOAT_DTYPES, assert_bitwise_equal, nonzero_randn, reference_dropout

import fastdrop
from fastdrop import _general
from fastdrop.backends import load_native

ROOT = Path(__file__).resolve().parents[1]
needs_op = pytest.mark.skipif(load_native() is None, reason="the C++ operators could not be built here")


def test_the_setup_built_it():
    # make's set-up (.venv/.built) builds the operators: a failed build must not pass silently.
    stamp = ROOT / ".venv" / ".built"
    if not stamp.exists() or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not the set-up's environment")
    assert load_native() is not None


def node_name(y):
    return type(y.grad_fn).__name__


@pytest.fixture
def python_function(monkeypatch):
    """Calls inside take the Python DropoutFunction around the operator (below autograd)."""
    def use():
        monkeypatch.setattr(_general, "native", object())  # the general path's test for the operator fails
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
    assert got[-1] == "CppFunction" and want[-1] == "DropoutFunctionBackward"
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
    # In place where autograd records: the node, copied in (autograd records the copy).
    h = x * 1
    fastdrop.dropout(h, 0.5, inplace=True)
    assert node_name(h) == "CopyBackwards"
    # The Python Function serves forward-mode AD (its jvp) and torch.func.
    import torch.autograd.forward_ad as fwad
    with fwad.dual_level():
        dual = fwad.make_dual(x, torch.ones_like(x))
        y = fastdrop.dropout(dual, 0.5, seed=9)
        assert node_name(y) == "DropoutFunctionBackward"
        assert torch.equal(fwad.unpack_dual(y).tangent, fastdrop.dropout(torch.ones_like(x), 0.5, seed=9))
    gx = torch.func.grad(lambda v: fastdrop.dropout(v, 0.5, seed=9).sum())(x)
    assert torch.equal(gx, fastdrop.dropout(torch.ones_like(x), 0.5, seed=9))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the operators are built on Linux")
def test_a_plain_pip_install_gets_the_operators(tmp_path):
    # pip install (no editable checkout, no set-up step) carries the C++ sources, and the first
    # call builds them (into the cache this run uses, which holds them already: same key).
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path / "site"), str(ROOT)], check=True, timeout=300, capture_output=True)
    code = ("import torch, fastdrop; from fastdrop import _library; print(fastdrop.__file__); "
            "y = fastdrop.dropout(torch.randn(64, requires_grad=True), 0.5, seed=1); "
            "print(_library.ops is not None, type(y.grad_fn).__name__)")
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


# ---- the Python in front of the operator ------------------------------------------------------

PACKAGE = str(Path(fastdrop.__file__).parent)


def fastdrop_frames_before_the_operator(fn):
    """fastdrop's Python functions entered during fn(), counted with sys.setprofile, and whether
    the C++ operator ran (its kernel is a C function called from the last of them)."""
    entered = []

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            entered.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}")

    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return entered


@needs_op
@pytest.mark.parametrize("grad", [False, True])
def test_at_most_three_python_functions_before_the_operator(grad):
    x = torch.randn(8, 4, 2, 2, requires_grad=grad)
    r = torch.randn_like(x)
    calls = {
        "Dropout module": (fastdrop.Dropout(0.1), lambda m: m(x)),
        "Dropout2d module": (fastdrop.Dropout2d(0.1), lambda m: m(x)),
        "AlphaDropout module": (fastdrop.AlphaDropout(0.1), lambda m: m(x)),
        "DropPath module": (fastdrop.DropPath(0.1), lambda m: m(x)),
        "dropout": (None, lambda m: fastdrop.dropout(x, 0.1)),
        "dropout2d": (None, lambda m: fastdrop.dropout2d(x, 0.1)),
        "drop_path": (None, lambda m: fastdrop.drop_path(x, 0.1, True)),
        "dropout_add": (None, lambda m: fastdrop.dropout_add(x, r, 0.1)),
    }
    for name, (module, call) in calls.items():
        for _ in range(2):  # warm: the first call loads the operators and fills caches
            call(module)
        frames = fastdrop_frames_before_the_operator(lambda: call(module))
        assert len(frames) <= 3, (name, frames)


@needs_op
def test_the_frame_count_sees_the_general_path():
    # The counter counts: a seeded call takes the general path, with more frames.
    x = torch.randn(16)
    assert len(fastdrop_frames_before_the_operator(lambda: fastdrop.dropout(x, 0.1, seed=3))) > 3


@needs_op
def test_a_compiled_call_enters_no_fastdrop_python_after_warm_up():
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), fastdrop.Dropout(0.2), torch.nn.ReLU(),
                                fastdrop.Dropout2d(0.1))
    step = torch.compile(lambda v: model(v).sum(), backend="inductor")
    x = torch.randn(4, 16, 1, 1).view(4, 16)
    for _ in range(3):
        step(x)
    frames = fastdrop_frames_before_the_operator(lambda: step(x))
    assert frames == [], frames


@needs_op
def test_two_identical_compiled_calls_stay_two():
    # Each call's seed is a random op of the graph: graph passes cannot merge the two calls.
    graphs = []

    def backend(gm, inputs):
        from torch._functorch.aot_autograd import aot_module_simplified

        def keep(g, _):
            graphs.append(str(g.code))
            return g
        return aot_module_simplified(gm, inputs, fw_compiler=keep)

    def f(v):
        return fastdrop.dropout(v, 0.5), fastdrop.dropout(v, 0.5)

    a, b = torch.compile(f, backend=backend)(torch.ones(4096))
    assert graphs and graphs[0].count("fastdrop.dropout") == 2, graphs
    assert not torch.equal(a, b)  # two masks of 4096 bits: equal with probability 2**-4096
    a, b = torch.compile(f, backend="inductor")(torch.ones(4096))
    assert not torch.equal(a, b)


@needs_op
@pytest.mark.parametrize("op,args", [
    ("dropout", lambda x: (x, 0.3, None, None, None, 5, 8)),
    ("dropout", lambda x: (x, 0.3, [1], 2.0, [0.5, -1.0], -3, 1 << 40)),
    ("dropout", lambda x: (x, 0.3, None, None, None, None, 0, None, torch.tensor([7]))),
    ("dropout_add", lambda x: (x, x[0], x, 0.3, 5, 0)),
])
def test_opcheck(op, args):
    x = torch.randn(3, 16, requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.fastdrop, op).default, args(x))


@needs_op
def test_the_operator_is_pt2_compliant():
    for op in (torch.ops.fastdrop.dropout, torch.ops.fastdrop.dropout_, torch.ops.fastdrop.dropout_add):
        assert torch.Tag.pt2_compliant_tag in op.default.tags
