"""fastdrop.migrate: torchvision's and timm's stochastic depth swapped with their semantics, the
report, is_fastdrop, and the patch switch (on: fastdrop's dropout; off: PyTorch's, untouched)."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdrop
from dropcount import count_dropout
from reference import Z_BOUND, binomial_z

# ---- faithful copies of the third-party forwards (the real classes are tested where importable)


class TVStochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth (torchvision 0.28, ops/stochastic_depth.py), its forward copied."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input):
        p, mode, training = self.p, self.mode, self.training
        if p < 0.0 or p > 1.0:
            raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
        if mode not in ["batch", "row"]:
            raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
        if not training or p == 0.0:
            return input
        survival_rate = 1.0 - p
        size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
        noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
        if survival_rate > 0.0:
            noise.div_(survival_rate)
        return input * noise

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, mode={self.mode})"


class TimmDropPath(nn.Module):
    """timm.layers.DropPath (timm 1.0.31, layers/drop.py), drop_path copied into forward."""

    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        if self.drop_prob == 0. or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
        if keep_prob > 0.0 and self.scale_by_keep:
            random_tensor.div_(keep_prob)
        return x * random_tensor

    def extra_repr(self):
        return f'drop_prob={round(self.drop_prob,3):0.3f}'


class FixedNoise(torch.overrides.TorchFunctionMode):
    """Tensor.bernoulli_ fills in the given keep bits instead of drawing."""

    def __init__(self, keep):
        super().__init__()
        self.keep = keep

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.bernoulli_:
            return args[0].copy_(self.keep.reshape(args[0].shape))
        return func(*args, **(kwargs or {}))


def as_real_class(cls, module, name):
    """The copy under the real class's qualified name: what replace_dropout recognises."""
    return type(name, (cls,), {"__module__": module, "__qualname__": name})


STAND_INS = {
    "torchvision": as_real_class(TVStochasticDepth, "torchvision.ops.stochastic_depth", "StochasticDepth"),
    "timm": as_real_class(TimmDropPath, "timm.layers.drop", "DropPath"),
}


def real_class(package):
    """The installed class, or a skip naming why it is not importable."""
    module, name = {"torchvision": ("torchvision.ops", "StochasticDepth"),
                    "timm": ("timm.layers", "DropPath")}[package]
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as e:  # torchvision's wheel for another torch build fails with OSError/RuntimeError
        pytest.skip(f"{module}.{name} not importable here: {type(e).__name__}: {str(e)[:200]}")


def third_party_cases():
    # (package, constructor args) -> the module under test is built by the parametrized test
    return [("torchvision", (0.3, "row")), ("torchvision", (0.3, "batch")), ("torchvision", (1.0, "row")),
            ("timm", (0.3, True)), ("timm", (0.3, False)), ("timm", (1.0, True))]


@pytest.mark.parametrize("real", [False, True], ids=["copy", "installed"])
@pytest.mark.parametrize("package,args", third_party_cases())
def test_stochastic_depth_swaps_keep_semantics(package, args, real):
    cls = real_class(package) if real else STAND_INS[package]
    ref = cls(*args)
    model = nn.Sequential(nn.Linear(6, 6), ref)
    new = fastdrop.replace_dropout(model)[1]
    mine = {"torchvision": fastdrop.StochasticDepth, "timm": fastdrop.DropPath}[package]
    assert type(new) is mine and fastdrop.is_fastdrop(new) and repr(new) == repr(ref)
    p = args[0]
    scaled = package == "torchvision" or args[1]
    x = torch.randn(4000, 3, 2) + 5.0  # no zero inputs: a zero output is a drop
    torch.manual_seed(0)
    y = new(x)
    dropped = (y == 0).flatten(1)
    assert (dropped.all(1) | ~dropped.any(1)).all()  # whole samples
    if package == "torchvision" and args[1] == "batch":
        assert dropped.all() or not dropped.any()
        keep = torch.full((1, 1, 1), not dropped.any())
    else:
        keep = ~dropped[:, :1].reshape(-1, 1, 1)
        n = x.shape[0]
        assert abs(binomial_z(int(dropped[:, 0].sum()), n, p)) < Z_BOUND if 0 < p < 1 else dropped.all()
    # The reference's own forward, its Bernoulli draw replaced by fastdrop's keep bits, gives
    # the very same values.
    ref.train()
    with FixedNoise(keep):
        assert torch.equal(y, ref(x))
    scale = torch.tensor(1.0).div_(1 - p) if scaled and p < 1 else torch.tensor(1.0)
    assert torch.equal(y, x * (keep * scale))
    new.eval()
    ref.eval()
    assert new(x) is x and ref(x) is x


def test_stochastic_depth_batch_mode_rate_and_errors():
    sd = fastdrop.StochasticDepth(0.25, "batch")
    torch.manual_seed(0)
    x = torch.ones(3, 2)
    drops = sum(bool((sd(x) == 0).all()) for _ in range(2000))
    assert abs(binomial_z(drops, 2000, 0.25)) < Z_BOUND
    for p, mode in ((1.5, "row"), (0.2, "rows")):
        with pytest.raises(ValueError) as theirs:
            TVStochasticDepth(p, mode)(x)
        with pytest.raises(ValueError) as mine:
            fastdrop.StochasticDepth(p, mode)(x)
        assert str(mine.value) == str(theirs.value)


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_state_dicts_load_both_ways(package):
    cls = STAND_INS[package]
    args = (0.2, "row") if package == "torchvision" else (0.2,)
    a = nn.Sequential(nn.Linear(3, 3), cls(*args), nn.BatchNorm1d(3))
    b = fastdrop.replace_dropout(nn.Sequential(nn.Linear(3, 3), cls(*args), nn.BatchNorm1d(3)))
    assert fastdrop.is_fastdrop(b[1])
    b.load_state_dict(a.state_dict(), strict=True)
    a.load_state_dict(b.state_dict(), strict=True)
    assert a.state_dict().keys() == b.state_dict().keys()


# ---- the report and is_fastdrop


class MyDropout(nn.Dropout):
    def forward(self, x):
        return F.dropout(x, self.p, self.training) * 2


class DropPath(nn.Module):  # a user's own DropPath: not timm's
    def __init__(self, p):
        super().__init__()
        self.drop_prob = p


def test_report_per_class():
    shared = nn.Dropout(0.1)
    model = nn.Sequential(shared, shared, nn.Dropout2d(0.2), MyDropout(0.3), DropPath(0.1),
                          nn.MultiheadAttention(8, 2, dropout=0.1), nn.MultiheadAttention(8, 2),
                          nn.LSTM(4, 4, 2, dropout=0.2), STAND_INS["timm"](0.1), fastdrop.Dropout(0.5))
    before = fastdrop.dropout_report(model)
    out, report = fastdrop.replace_dropout(model, report=True)
    assert out is model
    lines = {(line.cls.rsplit(".", 1)[1], line.action): line for line in report}
    assert lines.keys() == {("Dropout", "replaced"), ("Dropout2d", "replaced"), ("MyDropout", "left"),
                            ("DropPath", "left"), ("MultiheadAttention", "left"), ("LSTM", "left"),
                            ("DropPath", "replaced"), ("Dropout", "fastdrop")}
    assert lines["Dropout", "replaced"].names == ("0",)  # shared: one module
    assert lines["Dropout", "replaced"].detail == "fastdrop.modules.Dropout"
    assert lines["DropPath", "replaced"].cls == "timm.layers.drop.DropPath"
    assert lines["DropPath", "left"].names == ("4",) and "not a known DropPath" in lines["DropPath", "left"].detail
    assert lines["MultiheadAttention", "left"].names == ("5",)  # the one without dropout is not listed
    assert "stays fused in the attention kernel" in lines["MultiheadAttention", "left"].detail
    assert "fastdrop.patch()" in lines["MyDropout", "left"].detail
    assert "stays with PyTorch" in lines["LSTM", "left"].detail
    assert str(report).count("\n") == len(report) - 1
    assert "replaced    1 x torch.nn.modules.dropout.Dropout -> fastdrop.modules.Dropout" in str(report)
    assert report.left == tuple(line for line in report if line.action == "left")
    # The same survey, before and after: what replace_dropout would do, then what it did.
    assert before == report
    after = fastdrop.dropout_report(model)
    assert {line.action for line in after if "Dropout" in line.cls and "My" not in line.cls} == {"fastdrop"}
    assert after.replaced == ()


class SdpaAttention(nn.Module):  # the pattern of Hugging Face's sdpa attention: p read off a module
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).transpose(1, -2).unbind(-3)
        p = self.dropout.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).flatten(-2)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(5)

    def forward(self, x):
        return F.dropout(self.norm(x), 0.2, self.training) + F.dropout(x, 0.0, self.training)


def test_report_of_a_training_forward():
    model = nn.Sequential(SdpaAttention(), nn.Dropout(0.1), Head()).eval()
    x = torch.randn(2, 5, 8)
    stats = model[2].norm.running_mean.clone()
    rng = torch.random.get_rng_state()
    report = fastdrop.dropout_report(model, x)
    assert not any(m.training for m in model.modules())  # modes, buffers, RNG put back
    assert torch.equal(model[2].norm.running_mean, stats) and torch.equal(torch.random.get_rng_state(), rng)
    lines = {(line.cls.rsplit(".", 1)[1], line.action): line for line in report}
    assert lines.keys() == {("Dropout", "replaced"), ("SdpaAttention", "left"), ("Dropout", "unused"),
                            ("Head", "left")}
    assert lines["Dropout", "unused"].names == ("0.dropout",)
    assert lines["SdpaAttention", "left"].detail == (
        "calls scaled_dot_product_attention(dropout_p=0.1) in its forward: stays fused in the attention kernel")
    assert lines["Head", "left"].names == ("2",) and "torch.nn.functional.dropout(p=0.2)" in lines["Head", "left"].detail
    fastdrop.replace_dropout(model)
    with fastdrop.patched():
        after = fastdrop.dropout_report(model, x)
    assert {(line.cls.rsplit(".", 1)[1], line.action) for line in after} == {
        ("Dropout", "fastdrop"), ("SdpaAttention", "left"), ("Dropout", "unused")}


def test_is_fastdrop():
    for m in (fastdrop.Dropout(), fastdrop.Dropout2d(), fastdrop.AlphaDropout(), fastdrop.DropPath(0.1),
              fastdrop.NoiseDropout(0.1), fastdrop.StochasticDepth(0.1, "row")):
        assert fastdrop.is_fastdrop(m)
    assert repr(fastdrop.Dropout(0.2)) == repr(nn.Dropout(0.2))  # why is_fastdrop is needed
    assert not fastdrop.is_fastdrop(nn.Dropout()) and not fastdrop.is_fastdrop(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expected an nn.Module, but got Tensor"):
        fastdrop.is_fastdrop(torch.ones(1))


# ---- the switch

ROUTED = {  # patched name -> (call, fastdrop's equivalent)
    "F.dropout": (lambda x: F.dropout(x, 0.3), lambda x: fastdrop.dropout(x, 0.3)),
    "F.dropout1d": (lambda x: F.dropout1d(x[0], 0.3), lambda x: fastdrop.dropout1d(x[0], 0.3)),
    "F.dropout2d": (lambda x: F.dropout2d(x, 0.3), lambda x: fastdrop.dropout2d(x, 0.3)),
    "F.dropout3d": (lambda x: F.dropout3d(x[None], 0.3), lambda x: fastdrop.dropout3d(x[None], 0.3)),
    "F.alpha_dropout": (lambda x: F.alpha_dropout(x, 0.3, True), lambda x: fastdrop.alpha_dropout(x, 0.3, True)),
    "F.feature_alpha_dropout": (lambda x: F.feature_alpha_dropout(x, 0.3, True),
                                lambda x: fastdrop.feature_alpha_dropout(x, 0.3, True)),
    "torch.dropout": (lambda x: torch.dropout(x, 0.3, True), lambda x: fastdrop.dropout(x, 0.3)),
    "torch.alpha_dropout": (lambda x: torch.alpha_dropout(x, 0.3, True),
                            lambda x: fastdrop.alpha_dropout(x, 0.3, True)),
    "torch.feature_alpha_dropout": (lambda x: torch.feature_alpha_dropout(x, 0.3, True),
                                    lambda x: fastdrop.feature_alpha_dropout(x, 0.3, True)),
    "torch.feature_dropout": (lambda x: torch.feature_dropout(x, 0.3, True),
                              lambda x: fastdrop.dropout2d(x, 0.3)),
}
INPLACE = ["dropout_", "alpha_dropout_", "feature_alpha_dropout_", "feature_dropout_"]
PATCHED_NAMES = ([("F", n) for n in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                                     "feature_alpha_dropout")]
                 + [("torch", n) for n in ("dropout", "alpha_dropout", "feature_alpha_dropout", "feature_dropout")]
                 + [("torch", n) for n in INPLACE])
ORIGINALS = {(m, n): getattr({"F": F, "torch": torch}[m], n) for m, n in PATCHED_NAMES}


def current():
    return {(m, n): getattr({"F": F, "torch": torch}[m], n) for m, n in PATCHED_NAMES}


def outcome(fn, *args, **kwargs):
    """What a call does, as data: the input itself back, or the error, plus the warnings."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            result = fn(*args, **kwargs) is args[0]
        except Exception as e:
            result = (type(e), str(e))
    return result, [str(x.message) for x in w]


def pytorch_behaviour():
    """Eval identity, p == 0 identity, error texts and warnings of every patched function."""
    out = []
    for (m, n), fn in current().items():
        for x in (torch.randn(2, 3, 4), torch.randn(2, 3, 4, 5)):
            if m == "torch":
                out += [outcome(fn, x, 0.5, False), outcome(fn, x, 0.0, True)]
            else:
                out += [outcome(fn, x, 0.5, training=False), outcome(fn, x, 0.0, training=True)]
        for bad in ((torch.randn(3, 4), 1.5, True), (torch.ones(3, 4, dtype=torch.int64), 0.5, True),
                    (torch.tensor(1.0), 0.5, True), (torch.ones(3, 4), 0.5, None)):
            out.append(outcome(fn, *bad))
    return out


@pytest.fixture
def unpatched():
    yield
    fastdrop.unpatch()
    assert current() == ORIGINALS


def test_patch_off_is_pytorch(unpatched):
    before = pytorch_behaviour()
    assert sum(isinstance(b[0], tuple) for b in before) > 20 and sum(b[0] is True for b in before) > 20
    with fastdrop.patched():
        assert all(current()[k] is not ORIGINALS[k] for k in ORIGINALS)
        assert pytorch_behaviour() != before
    assert current() == ORIGINALS  # the very objects
    assert pytorch_behaviour() == before
    fastdrop.patch()
    fastdrop.patch()  # idempotent
    with fastdrop.patched():  # nested: leaves the outer patch on
        pass
    assert all(current()[k] is not ORIGINALS[k] for k in ORIGINALS)
    fastdrop.unpatch()
    assert current() == ORIGINALS and pytorch_behaviour() == before
    with fastdrop.patched():  # overlapping blocks (as from two threads): off when the last ends
        inner = fastdrop.patched()
        inner.__enter__()
    assert all(current()[k] is not ORIGINALS[k] for k in ORIGINALS)
    inner.__exit__(None, None, None)
    assert current() == ORIGINALS


@pytest.mark.parametrize("name", list(ROUTED))
def test_patch_routes_to_fastdrop(name, unpatched):
    call, mine = ROUTED[name]
    x = torch.randn(2, 3, 4, 5)
    with fastdrop.patched(), count_dropout() as c:
        torch.manual_seed(7)
        got = call(x)
    torch.manual_seed(7)
    assert torch.equal(got, mine(x))
    assert c.calls["fastdrop"] == 1 and c.calls["torch"] == 0
    with count_dropout() as c:  # off: PyTorch's
        call(x)
    assert c.calls["fastdrop"] == 0 and c.calls["torch"] == 1


@pytest.mark.parametrize("name", INPLACE)
def test_patch_routes_inplace_forms(name, unpatched):
    x = torch.randn(2, 3, 4)
    y = x.clone()
    with fastdrop.patched():
        torch.manual_seed(3)
        assert getattr(torch, name)(y, 0.4, True) is y
    torch.manual_seed(3)
    assert torch.equal(y, _fastdrop_of(name)(x))


def _fastdrop_of(name):
    return {"dropout_": lambda x: fastdrop.dropout(x, 0.4),
            "alpha_dropout_": lambda x: fastdrop.alpha_dropout(x, 0.4, True),
            "feature_alpha_dropout_": lambda x: fastdrop.feature_alpha_dropout(x, 0.4, True),
            "feature_dropout_": lambda x: fastdrop.dropout(x, 0.4, noise_shape=(2, 3, 1))}[name]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_patch_routes_cuda_tensors(unpatched):
    x = torch.randn(4, 3, 8, 8, device="cuda")
    with fastdrop.patched(), count_dropout() as c:
        torch.manual_seed(5)
        got = [F.dropout(x, 0.3), torch.dropout(x, 0.3, True), F.dropout2d(x, 0.3)]
    torch.manual_seed(5)
    mine = [fastdrop.dropout(x, 0.3), fastdrop.dropout(x, 0.3), fastdrop.dropout2d(x, 0.3)]
    assert all(torch.equal(a, b) for a, b in zip(got, mine))
    assert dict(c.calls) == {"fastdrop": 3}


def test_patch_leaves_what_fastdrop_does_not_run_to_pytorch(unpatched):
    class Sub(torch.Tensor):
        pass

    x = torch.randn(4, 4)
    ints = torch.ones(4, dtype=torch.int64)
    unpatched_error = outcome(F.dropout, ints, 0.5)
    with fastdrop.patched():
        assert outcome(F.dropout, ints, 0.5) == unpatched_error
    with fastdrop.patched(), count_dropout() as c:
        F.dropout(x.as_subclass(Sub), 0.5)
        with pytest.raises(RuntimeError, match="Feature dropout requires at least 2 dimensions in the input"):
            torch.feature_dropout(torch.ones(3), 0.5, True)
    assert c.calls["torch"] == 1 and c.calls["fastdrop"] == 0


def test_patch_reaches_multihead_attention_and_other_threads(unpatched):
    mha = nn.MultiheadAttention(8, 2, dropout=0.2)
    x = torch.randn(5, 2, 8)
    with count_dropout() as c:
        mha(x, x, x, need_weights=True)
    assert dict(c.calls) == {"torch": 1}
    fastdrop.patch()
    with count_dropout() as c:
        mha(x, x, x, need_weights=True)
        mha(x, x, x, need_weights=False)  # dropout_p goes to scaled_dot_product_attention
        nn.Dropout(0.5)(x)  # torch's module calls F.dropout: routed too
    assert dict(c.calls) == {"fastdrop": 2, "sdpa": 1}
    seen = []
    t = threading.Thread(target=lambda: seen.append(F.dropout is not ORIGINALS["F", "dropout"]))
    t.start()
    t.join(timeout=30)
    assert seen == [True]  # process-wide, not per thread


FIRST_COMPILE_PATCHED = """
import torch, torch.nn.functional as F, fastdrop
graphs = []
def backend(gm, example_inputs):
    graphs.append(str(gm.graph))
    return gm.forward
def fn(x):
    return F.dropout(x, 0.3) + torch.dropout(x, 0.2, True)
x = torch.randn(4, 4)
fastdrop.patch()
torch.compile(fn, backend=backend, fullgraph=True)(x)
fastdrop.unpatch()
torch.compile(fn, backend=backend, fullgraph=True)(x)
print(repr(graphs))
"""


def test_torch_compile_first_used_while_patched():
    # A fresh process, where torch.compile is first used while patched. Its table of torch
    # functions, built then, once took the routed functions for PyTorch's: the graph called
    # them opaquely, and after unpatch fullgraph=True failed on torch.dropout.
    done = subprocess.run([sys.executable, "-c", FIRST_COMPILE_PATCHED], capture_output=True, text=True,
                          check=False, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    patched_graph, unpatched_graph = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert patched_graph.count("torch.ops.fastdrop.dropout") == 2 and "fastdrop.migrate" not in patched_graph
    assert "fastdrop" not in unpatched_graph
    assert len(re.findall(r"target=torch\.(nn\.functional\.)?dropout\]", unpatched_graph)) == 2


def test_patch_under_torch_compile(unpatched):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    def fn(x):
        return F.dropout(x, 0.3) + torch.dropout(x, 0.2, True) + F.dropout2d(x, 0.1)

    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 4, 4)
    with fastdrop.patched():
        y = compiled(x)
    assert graphs[-1].count("torch.ops.fastdrop.dropout") == 3 and "torch.dropout" not in graphs[-1]
    assert y.shape == x.shape
    compiled(x)  # off: recompiled to PyTorch's
    assert len(graphs) == 2 and "fastdrop" not in graphs[-1] and "torch.dropout" in graphs[-1]
