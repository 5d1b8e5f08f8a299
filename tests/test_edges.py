"""Rough edges a new user meets: keep_prob's checks, the philox helper's inputs, nested
tensors, where the benchmark writes, and loading a torch.export archive."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import fastdrop

REPO = Path(__file__).resolve().parent.parent


# ---- keep_prob accepts exactly what p accepts --------------------------------------------

VALUES = [0.75, 1, 0, True, False, Fraction(3, 4), np.float32(0.75), np.float64(0.25), np.int64(1),
          torch.tensor(0.75), torch.tensor(0.25, dtype=torch.float64),  # valid for both
          1.5, -0.1, float("nan"), torch.tensor(1.5), np.float32(-1.0), "0.7", np.array(0.7), [0.7],
          torch.tensor([0.7]), torch.tensor(0.7, requires_grad=True)]


def _as_keep_prob_error(text):
    return text.replace("dropout probability", "keep_prob").replace("argument 'p'", "argument 'keep_prob'")


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_keep_prob_accepts_what_p_accepts(value):
    x = torch.randn(4096)
    try:
        by_p = fastdrop.dropout(x, p=value, seed=5)
    except (TypeError, ValueError, RuntimeError) as e:
        with pytest.raises(type(e), match=re.escape(_as_keep_prob_error(str(e)))) as got:
            fastdrop.dropout(x, keep_prob=value, seed=5)
        assert type(got.value) is type(e) and "keep_prob" in str(got.value)
        with pytest.raises(type(e), match=re.escape(_as_keep_prob_error(str(e)))):
            fastdrop.Dropout(keep_prob=value)
        return
    keep = float(value.item() if isinstance(value, (torch.Tensor, np.generic)) else value)
    by_keep = fastdrop.dropout(x, p=1.0 - keep, seed=5)  # the same mask as p = 1 - keep_prob
    assert torch.equal(fastdrop.dropout(x, keep_prob=value, seed=5), by_keep)
    assert fastdrop.Dropout(keep_prob=value).p == float(f"{1.0 - keep:.15g}")
    if keep in (0.0, 1.0):
        assert torch.equal(by_p, x if not keep else torch.zeros_like(x))  # p is the complement here


@pytest.mark.parametrize("value, exc, text", [
    (torch.tensor(1.5), ValueError, "keep_prob has to be between 0 and 1, but got 1.5"),
    (float("nan"), ValueError, "keep_prob has to be between 0 and 1, but got nan"),
    ("0.7", TypeError, "keep_prob must be a real number in [0, 1], but got str '0.7'"),
    (torch.tensor([0.7]), TypeError, "{fn}(): argument 'keep_prob' must be float, not Tensor "
                                     "(a 0-dim tensor that does not require grad is accepted)"),
])
def test_keep_prob_error_names_it(value, exc, text):
    # A tensor's error names the function called, as PyTorch's argument parser does.
    for name, fn in (("dropout", lambda: fastdrop.dropout(torch.ones(3), keep_prob=value)),
                     ("dropout", lambda: fastdrop.Dropout(keep_prob=value)),
                     ("dropout2d", lambda: fastdrop.dropout2d(torch.ones(2, 2, 2), keep_prob=value))):
        with pytest.raises(exc) as got:
            fn()
        assert str(got.value) == text.format(fn=name)


def test_keep_prob_tensor_is_its_value():
    x = torch.randn(4096)
    y = fastdrop.dropout(x, keep_prob=torch.tensor(0.7), seed=9)  # rejected as "0.699999988" before
    assert torch.equal(y, fastdrop.dropout(x, 1 - torch.tensor(0.7).item(), seed=9))


# ---- philox: any integer dtype that holds the values; rounds 1..255 ------------------------

COUNTER, KEY = [[0, 1, 2, 3], [2**32 - 1, 7, 2**31, 0]], [0xA4093822, 0x299F31D0]


@pytest.mark.parametrize("dtype", [torch.uint32, torch.uint64, np.uint32, np.uint64, np.int64, "list"], ids=str)
def test_philox_any_integer_dtype(dtype):
    want = fastdrop.philox(torch.tensor(COUNTER), torch.tensor(KEY))
    if dtype == "list":
        c, k = COUNTER, KEY
    elif isinstance(dtype, torch.dtype):
        c, k = torch.tensor(COUNTER, dtype=dtype), torch.tensor(KEY, dtype=dtype)
    else:
        c, k = np.array(COUNTER, dtype=dtype), np.array(KEY, dtype=dtype)
    got = fastdrop.philox(c, k)
    assert got.dtype == torch.int64 and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, np.uint16])
def test_philox_small_integer_dtypes(dtype):
    c, k = [[1, 2, 3, 4]], [5, 6]
    want = fastdrop.philox(torch.tensor(c), torch.tensor(k))
    if isinstance(dtype, torch.dtype):
        got = fastdrop.philox(torch.tensor(c, dtype=dtype), torch.tensor(k, dtype=dtype))
    else:
        got = fastdrop.philox(np.array(c, dtype=dtype), np.array(k, dtype=dtype))
    assert torch.equal(got, want)


@pytest.mark.parametrize("counter, exc, text", [
    (torch.tensor([1, 2, 3, 2**32], dtype=torch.uint64), ValueError,
     "philox(): counter values must be in [0, 2**32), but got 1..4294967296"),
    (np.array([1, 2, 3, 2**32], dtype=np.uint64), ValueError,
     "philox(): counter values must be in [0, 2**32), but got 1..4294967296"),
    ([1, 2, 3, 2**64], ValueError, "philox(): counter values must be in [0, 2**32), but got 1..18446744073709551616"),
    (torch.tensor([1, 2, 3, -1], dtype=torch.int8), ValueError,
     "philox(): counter values must be in [0, 2**32), but got -1..3"),
    (torch.tensor([1.0, 2, 3, 4]), TypeError,
     "philox(): counter must hold integers (any signed or unsigned integer dtype), but got torch.float32"),
    (np.ones(4, dtype=bool), TypeError,
     "philox(): counter must hold integers (any signed or unsigned integer dtype), but got bool"),
    (torch.tensor([1, 2, 3]), ValueError, "philox(): counter must have shape (..., 4), but got (3,)"),
])
def test_philox_rejects_bad_counter(counter, exc, text):
    with pytest.raises(exc) as got:
        fastdrop.philox(counter, torch.tensor(KEY))
    assert str(got.value) == text


@pytest.mark.parametrize("rounds, exc, text", [
    (0, ValueError, "philox(): rounds must be in [1, 255] (Random123 defines 7 and 10), but got 0"),
    (-1, ValueError, "philox(): rounds must be in [1, 255] (Random123 defines 7 and 10), but got -1"),
    (256, ValueError, "philox(): rounds must be in [1, 255] (Random123 defines 7 and 10), but got 256"),
    (10.0, TypeError, "philox(): rounds must be an int in [1, 255], but got float 10.0"),
    (True, TypeError, "philox(): rounds must be an int in [1, 255], but got bool True"),
    (None, TypeError, "philox(): rounds must be an int in [1, 255], but got NoneType None"),
])
def test_philox_rejects_bad_rounds(rounds, exc, text):
    with pytest.raises(exc) as got:
        fastdrop.philox(torch.tensor(COUNTER), torch.tensor(KEY), rounds=rounds)
    assert str(got.value) == text


def test_philox_rounds_bounds_are_variants():
    c, k = torch.tensor(COUNTER), torch.tensor(KEY)
    one, ten, top = (fastdrop.philox(c, k, rounds=r) for r in (1, np.int64(10), 255))
    assert torch.equal(ten, fastdrop.philox(c, k)) and not torch.equal(one, ten) and not torch.equal(top, ten)
    assert not torch.equal(one, c)  # a round changes the counter (rounds=0 used to return it unchanged)


# ---- nested tensors: both layouts refused with one TypeError --------------------------------

ENTRY_POINTS = {
    "dropout": lambda t: fastdrop.dropout(t, 0.5),
    "noise_dropout": lambda t: fastdrop.noise_dropout(t, 0.5, (1, 1, 3)),
    "dropout1d": lambda t: fastdrop.dropout1d(t, 0.5),
    "alpha_dropout": lambda t: fastdrop.alpha_dropout(t, 0.5, True),
    "drop_path": lambda t: fastdrop.DropPath(0.5)(t),
    "dropout_add": lambda t: fastdrop.dropout_add(t, t, 0.5),
}


@pytest.mark.parametrize("layout", [torch.strided, torch.jagged], ids=str)
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_nested_tensors_refused(layout, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the nested API warns that it is a prototype
        nt = torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)], layout=layout)
    with pytest.raises(TypeError) as got:
        ENTRY_POINTS[name](nt)
    assert str(got.value) == (
        f"{name}(): nested tensors are not supported, but got one with layout {layout}; apply {name} to a "
        f"dense tensor, such as the packed values() of a jagged nested tensor")


def test_nested_jagged_values_workaround():
    nt = torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)], layout=torch.jagged)
    out = torch.nested.nested_tensor_from_jagged(fastdrop.dropout(nt.values(), 0.5, seed=3), nt.offsets())
    keep = fastdrop.dropout_mask(nt.values().shape, 0.5, seed=3)
    assert torch.equal(out.values(), torch.where(keep, nt.values() * 2, 0))


# ---- the benchmark writes into an ignored folder unless told to record ---------------------

def test_bench_default_output_is_ignored_by_git():
    from bench import microbench
    assert microbench.OUT == REPO / "bench" / "out" and microbench.RESULTS == REPO / "bench" / "results"
    assert "bench/out/" in (REPO / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("argv, where", [([], "OUT"), (["--record"], "RESULTS"), (["--out", "mine"], "mine")])
def test_bench_output_folder(argv, where, tmp_path, monkeypatch, capsys):
    from bench import microbench
    monkeypatch.setattr(microbench, "OUT", tmp_path / "OUT")
    monkeypatch.setattr(microbench, "RESULTS", tmp_path / "RESULTS")
    monkeypatch.setattr(microbench, "sweep", lambda device, full: [])  # no sizes: only the files
    monkeypatch.chdir(tmp_path)
    microbench.main(argv)
    assert [p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.csv")] == [where]
    shown = Path(where) if where == "mine" else tmp_path / where
    assert f"tables: python -m bench.report {shown}\n" in capsys.readouterr().out


def test_bench_record_and_out_conflict(capsys):
    from bench import microbench
    with pytest.raises(SystemExit):
        microbench.main(["--record", "--out", "x"])
    assert "argument --out: not allowed with argument --record" in capsys.readouterr().err


# ---- torch.export: the archive needs fastdrop imported before loading ----------------------

def test_export_load_needs_import(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), fastdrop.Dropout(0.5))
    path, x = tmp_path / "model.pt2", torch.randn(64, 4)
    torch.export.save(torch.export.export(model, (x,)), path)
    code = f"import torch; torch.export.load({str(path)!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "RuntimeError: We ran into an error when deserializing the saved file." in run.stderr
    assert "torch.ops.fastdrop.dropout.default" in run.stderr  # the warning above it names the operator
    loaded = torch.export.load(path).module()  # fastdrop is imported here: it loads and runs
    y, dense = loaded(x), model[0](x).detach()
    assert torch.all((y == 0) | torch.isclose(y, 2 * dense)) and 0 < int((y == 0).sum()) < y.numel()


# ---- found by a new user's probe ------------------------------------------------------------

@pytest.mark.parametrize("fn", [lambda v: fastdrop.alpha_dropout(v, 0.5, True),
                                lambda v: fastdrop.feature_alpha_dropout(v, 0.5, True)])
@pytest.mark.parametrize("value", [torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.bool),
                                   torch.ones(2, 3).to(torch.float8_e4m3fn), [[1.0, 2.0]]], ids=repr)
def test_alpha_forms_refuse_bad_input_with_a_type_error(fn, value):
    # The input is checked before alpha's constants are computed in its dtype.
    with pytest.raises(TypeError, match="must be a Tensor|expected a floating-point input"):
        fn(value)


def test_offset_past_the_stream_says_so():
    with pytest.raises(ValueError, match=r"offset must be at most 2\*\*64 .* but got 18446744073709551621$"):
        fastdrop.dropout(torch.ones(16), 0.5, seed=1, offset=2**64 + 5)
    with pytest.raises(ValueError, match="offset=18446744073709551610 and numel=16"):
        fastdrop.dropout(torch.ones(16), 0.5, seed=1, offset=2**64 - 6)


@pytest.mark.parametrize("name,call", [
    ("dropout1d", lambda p: fastdrop.dropout1d(torch.ones(2, 3, 4), p)),
    ("dropout2d", lambda p: fastdrop.dropout2d(torch.ones(2, 3, 4, 4), p)),
    ("dropout3d", lambda p: fastdrop.dropout3d(torch.ones(2, 3, 2, 4, 4), p)),
    ("alpha_dropout", lambda p: fastdrop.alpha_dropout(torch.ones(4), p, True)),
    ("feature_alpha_dropout", lambda p: fastdrop.feature_alpha_dropout(torch.ones(2, 3, 4), p, True)),
])
def test_a_tensor_p_error_names_the_function_called(name, call):
    with pytest.raises(TypeError, match=rf"^{name}\(\): argument 'p' must be float, not Tensor"):
        call(torch.tensor([0.5]))


def test_every_module_takes_keep_prob():
    # Each module built with keep_prob=0.75 is the module with p (drop_prob) 0.25: same p, same mask.
    x = torch.randn(4, 3, 8, 8)
    twins = [(fastdrop.StochasticDepth(keep_prob=0.75, mode="row"), fastdrop.StochasticDepth(0.25, "row")),
             (fastdrop.DropPath(keep_prob=0.75), fastdrop.DropPath(0.25)),
             (fastdrop.NoiseDropout(keep_prob=0.75), fastdrop.NoiseDropout(0.25)),
             (fastdrop.Dropout2d(keep_prob=0.75), fastdrop.Dropout2d(0.25)),
             (fastdrop.AlphaDropout(keep_prob=0.75), fastdrop.AlphaDropout(0.25))]
    for by_keep, by_p in twins:
        assert repr(by_keep) == repr(by_p)
        torch.manual_seed(3)
        got = by_keep.train()(x)
        torch.manual_seed(3)
        assert torch.equal(got, by_p.train()(x)), type(by_p).__name__
    with pytest.raises(ValueError, match="give p or keep_prob, not both"):
        fastdrop.StochasticDepth(0.1, "row", keep_prob=0.9)
    with pytest.raises(TypeError, match="missing 1 required argument: 'mode'"):
        fastdrop.StochasticDepth(0.1)


def test_drop_path_checks_its_probability_when_built():
    # As Dropout(nan) does: a bad value fails where it is given, not at the first forward.
    for bad, exc in ((float("nan"), ValueError), (1.5, ValueError), ("0.1", TypeError)):
        with pytest.raises(exc, match="drop_prob"):
            fastdrop.DropPath(bad)


# ---- a new user's report on d746c72: export, compile, torch.overrides, sizes, in-place errors ----

SELU_ALPHA = 1.7580993408473766  # -alpha' of PyTorch's alpha dropout (SELU's lambda * alpha)


class _CallsAlphaDropout(torch.nn.Module):
    def forward(self, x):
        return fastdrop.alpha_dropout(x, 0.5, True)


@pytest.mark.parametrize("make, per_channel", [(lambda: fastdrop.AlphaDropout(0.5), False),
                                               (lambda: fastdrop.FeatureAlphaDropout(0.5), True),
                                               (_CallsAlphaDropout, False)],
                         ids=["AlphaDropout", "FeatureAlphaDropout", "alpha_dropout"])
def test_alpha_forms_export_in_training_mode(make, per_channel):
    # torch.export traced alpha's constants (tensor ops, then float()) and failed with
    # GuardOnDataDependentSymNode; torch.nn.AlphaDropout exports. Both of export's modes.
    torch.manual_seed(0)
    p, x = 0.5, torch.randn(4, 8, 16)
    a = ((1 - p) * (1 + p * SELU_ALPHA ** 2)) ** -0.5
    for strict in (False, True):
        ep = torch.export.export(torch.nn.Sequential(make()).train(), (x,), strict=strict)
        ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        assert any(op.startswith("fastdrop.") for op in ops), ops
        run = ep.module()
        first, second = run(x), run(x)
        for y in (first, second):
            assert y.shape == x.shape and torch.isfinite(y).all()
            kept = torch.isclose(y, a * x + a * SELU_ALPHA * p, rtol=1e-5, atol=1e-6)
            dropped = torch.isclose(y, torch.full_like(y, -a * SELU_ALPHA * (1 - p)), rtol=1e-5, atol=1e-6)
            assert (kept | dropped).all() and kept.any() and (dropped & ~kept).any()
            if per_channel:  # one bit per (sample, channel)
                assert (kept.all(-1) | (dropped & ~kept).all(-1)).all()
        assert not torch.equal(first, second)  # each run draws its own mask


@pytest.mark.parametrize("cls, shape", [(fastdrop.Dropout2d, (4, 8, 5)), (fastdrop.Dropout2d, (8, 16)),
                                        (fastdrop.Dropout2d, (4, 8, 2, 2, 2)), (fastdrop.Dropout3d, (32, 3, 4))],
                         ids=["Dropout2d-3d", "Dropout2d-2d", "Dropout2d-5d", "Dropout3d-3d"])
def test_warned_ranks_compile_fullgraph_and_warn_eagerly_as_pytorch(cls, shape):
    # warnings.warn broke the graph: fullgraph=True failed where torch.nn's module compiles.
    torch._dynamo.reset()
    torch.manual_seed(0)  # 32 or more keep bits in each case: some kept, some dropped
    x = torch.randn(shape) + 3  # no zeros: a zero in the output is a dropped element
    y = torch.compile(cls(0.5).train(), fullgraph=True, backend="aot_eager")(x)
    assert y.shape == x.shape
    assert ((y == 0) | torch.isclose(y, 2 * x)).all() and (y == 0).any() and (y != 0).any()
    # Eager calls still warn, as PyTorch's do: same category, same text.
    theirs_fn = getattr(torch.nn.functional, cls.__name__.lower())
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        theirs_fn(x, 0.5, True)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        cls(0.5).train()(x)
    assert theirs and [(w.category, str(w.message)) for w in ours] == [(w.category, str(w.message)) for w in theirs]


_OVERRIDES_AFTER_PATCH = """
import torch, fastdrop
o, F = torch.overrides, torch.nn.functional
tables = [o.get_ignored_functions, o.get_testing_overrides, o._get_overridable_functions]
assert all(t.cache_info().currsize == 0 for t in tables if hasattr(t, "cache_info")), "built before patch()"
names = [(F, n) for n in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")]
names += [(torch, n + s) for n in ("dropout", "alpha_dropout", "feature_alpha_dropout", "feature_dropout")
          for s in ("", "_")]
originals = [(mod, name, getattr(mod, name)) for mod, name in names]
fastdrop.patch()
o.get_overridable_functions(), o.get_testing_overrides(), o.resolve_name(F.dropout)  # built while patched
fastdrop.unpatch()
for mod, name, orig in originals:
    assert getattr(mod, name) is orig, name
    assert o.resolve_name(orig) == mod.__name__ + "." + name, (name, o.resolve_name(orig))
    assert name.endswith("_") or orig in o.get_testing_overrides(), name
    assert mod is not F or orig in o.get_overridable_functions()[F], name
print("ok")
"""


def test_patch_leaves_torch_overrides_tables_pytorchs():
    # torch.overrides builds its tables once per process; built while patched, they held the
    # routed functions and resolve_name(F.dropout) was None after unpatch(). A fresh process.
    run = subprocess.run([sys.executable, "-c", _OVERRIDES_AFTER_PATCH], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_dropout_mask_takes_an_int_size():
    # PyTorch's factories take an int size: dropout_mask(10, ...) failed with "'int' object is not iterable".
    one = fastdrop.dropout_mask(10, 0.5, seed=1)
    assert one.shape == torch.zeros(10).shape and one.dtype == torch.bool
    assert torch.equal(one, fastdrop.dropout_mask((10,), 0.5, seed=1))
    assert torch.equal(fastdrop.dropout_mask(np.int64(10), 0.5, seed=1), one)
    assert torch.equal(fastdrop.dropout_mask(torch.Size([10]), 0.5, seed=1), one)
    assert torch.equal(one, fastdrop.dropout(torch.ones(10), 0.5, seed=1) != 0)


@pytest.mark.parametrize("shape", ["10", 2.5, None, [2.5, 3]], ids=repr)
def test_dropout_mask_bad_shape_is_a_type_error_naming_it(shape):
    with pytest.raises(TypeError, match=r"^dropout_mask\(\): shape must be an int or a sequence of ints, but got "):
        fastdrop.dropout_mask(shape, 0.5, seed=1)


def _error_of(call):
    try:
        call()
    except RuntimeError as e:
        return str(e)
    raise AssertionError("no RuntimeError")


# (fastdrop's in-place form, PyTorch's, the input's shape)
INPLACE_FORMS = {
    "dropout": (lambda v: fastdrop.dropout(v, 0.5, True, inplace=True), torch.nn.functional.dropout, (3, 4)),
    "dropout1d": (lambda v: fastdrop.dropout1d(v, 0.5, True, inplace=True), torch.nn.functional.dropout1d,
                  (3, 4, 5)),
    "dropout2d": (lambda v: fastdrop.dropout2d(v, 0.5, True, inplace=True), torch.nn.functional.dropout2d,
                  (3, 4, 5, 5)),
    "dropout3d": (lambda v: fastdrop.dropout3d(v, 0.5, True, inplace=True), torch.nn.functional.dropout3d,
                  (3, 4, 2, 3, 3)),
    "alpha_dropout": (lambda v: fastdrop.alpha_dropout(v, 0.5, True, inplace=True),
                      torch.nn.functional.alpha_dropout, (3, 4)),
    "feature_alpha_dropout": (lambda v: fastdrop.feature_alpha_dropout(v, 0.5, True, inplace=True),
                              torch.nn.functional.feature_alpha_dropout, (3, 4, 5)),
    "noise_dropout": (lambda v: fastdrop.noise_dropout(v, 0.5, (1,), True, inplace=True),
                      torch.nn.functional.dropout, (3, 4)),
}


@pytest.mark.parametrize("name", INPLACE_FORMS)
def test_inplace_on_a_no_grad_view_raises_pytorchs_error(name):
    # A view made under no_grad of a leaf that requires grad: PyTorch's no_grad-view message
    # (fastdrop gave the leaf's); the leaf itself and a view of it: PyTorch's messages too.
    ours, theirs, shape = INPLACE_FORMS[name]
    x = torch.randn(shape, requires_grad=True)
    with torch.no_grad():
        no_grad_view = x[:2]
    before = x.detach().clone()
    cases = {"no_grad view": no_grad_view, "leaf": x, "view of the leaf": x[:2]}
    for case, v in cases.items():
        want = _error_of(lambda: theirs(v, 0.5, True, True))
        assert _error_of(lambda: ours(v)) == want, case
        assert torch.equal(x.detach(), before)  # refused before writing
    assert "no_grad mode" in _error_of(lambda: theirs(no_grad_view, 0.5, True, True))


@pytest.mark.xfail(strict=True, reason="fastdrop/_args.py check_writable gives the no_grad-view text without "
                                       "PyTorch's 'Output 0 of <op> is a view of a view which was created in' prefix")
@pytest.mark.parametrize("name", ["dropout", "dropout2d"])
def test_inplace_on_a_view_of_a_no_grad_view_raises_pytorchs_error(name):
    ours, theirs, shape = INPLACE_FORMS[name]
    x = torch.randn(shape, requires_grad=True)
    with torch.no_grad():
        v = x[:2]
    view_of_view = v.unsqueeze(0)[0]  # made with grad on, of a no_grad view
    want = _error_of(lambda: theirs(view_of_view, 0.5, True, True))
    assert "is a view of a view which was created in no_grad mode" in want
    assert _error_of(lambda: ours(view_of_view)) == want
