"""fastdrop under PyTorch's program transforms, side by side with torch's own dropout.

jit.trace, jit.script, FX, torch.func (grad, vjp, jacrev, jacfwd, jvp, vmap, functional_call),
forward-mode AD, checkpoint with a generator, and the edge behaviour of in-place calls and
``__torch_function__``. Where PyTorch's result is random, both are held to the same
properties (values in {0, x/(1-p)}, keep rate, the zero pattern shared by output and
gradient); where a pinned seed makes fastdrop's result exact, it is compared exactly with the
eager call.
"""

import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

import fastdrop

P = 0.5
SCALE = 1 / (1 - P)
IMPLS = {"torch": F.dropout, "fastdrop": fastdrop.dropout}


@pytest.fixture(autouse=True)
def fixed_seed():
    torch.manual_seed(1234)  # unseeded calls draw from the global generator: fixed per test


def keep_rate_ok(kept, n, p=P):
    """The kept fraction within 6 standard deviations of 1 - p (binomial)."""
    sd = math.sqrt(p * (1 - p) / n)
    return abs(kept / n - (1 - p)) < 6 * sd


def assert_dropout_of(y, x, scale=SCALE):
    """Every element of y is 0 or x * scale, and the kept fraction is plausible."""
    kept = y != 0
    assert torch.equal(y[kept], (x * scale)[kept])
    assert torch.all(y[~kept] == 0)
    assert keep_rate_ok(int(kept.sum()), y.numel())


def ones(*shape):
    return torch.ones(*shape)  # nonzero everywhere: the zero pattern of y is the mask


# ---- jit.trace -------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_trace_draws_a_fresh_mask_each_run(impl, requires_grad):
    fn = IMPLS[impl]
    x = torch.randn(64, 64).abs_().add_(0.1).requires_grad_(requires_grad)
    traced = torch.jit.trace(lambda t: fn(t, P, True), x, check_trace=False)
    y1, y2 = traced(x), traced(x)
    assert_dropout_of(y1.detach(), x.detach())
    assert_dropout_of(y2.detach(), x.detach())
    assert not torch.equal(y1 != 0, y2 != 0)  # a new mask per run, not the one drawn at trace time
    if impl == "fastdrop":
        assert "fastdrop::dropout" in str(traced.graph)
    if requires_grad:
        (g,) = torch.autograd.grad(y1.sum(), x)
        assert torch.equal(g != 0, y1 != 0)  # backward regenerates the same mask


def test_trace_under_no_grad_never_returns_uninitialised_memory():
    x = torch.randn(128, 33).abs_().add_(0.1)
    with torch.no_grad():
        traced = torch.jit.trace(lambda t: fastdrop.dropout(t, P), x, check_trace=False)
        for _ in range(3):
            assert_dropout_of(traced(x), x)


@pytest.mark.parametrize("seed", [0, 12345, 2**63 + 5, 2**64 - 1])
def test_trace_with_a_seed_equals_the_eager_call(seed):
    x = torch.randn(5, 77)
    traced = torch.jit.trace(lambda t: fastdrop.dropout(t, 0.3, seed=seed, offset=7), x)
    expected = fastdrop.dropout(x, 0.3, seed=seed, offset=7)
    assert torch.equal(traced(x), expected)
    assert torch.equal(traced(x), expected)


def test_traced_module_saves_and_loads(tmp_path):
    model = nn.Sequential(nn.Linear(16, 32), fastdrop.Dropout(P), nn.ReLU(), fastdrop.DropPath(0.5)).train()
    x = torch.randn(256, 16)
    traced = torch.jit.trace(model, x, check_trace=False)
    torch.jit.save(traced, str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    y1, y2 = loaded(x), loaded(x)
    assert not torch.equal(y1, y2)
    pinned = torch.jit.trace(lambda t: fastdrop.dropout(t, 0.2, seed=99), x)
    torch.jit.save(pinned, str(tmp_path / "f.pt"))
    assert torch.equal(torch.jit.load(str(tmp_path / "f.pt"))(x), fastdrop.dropout(x, 0.2, seed=99))


def test_trace_of_the_family_keeps_each_mask_shape():
    x = ones(16, 8, 5, 5)
    d2 = torch.jit.trace(fastdrop.Dropout2d(P).train(), x, check_trace=False)(x)
    assert torch.equal(d2, d2[:, :, :1, :1].expand_as(d2))  # one bit per (sample, channel)
    dp = torch.jit.trace(fastdrop.DropPath(P).train(), x, check_trace=False)(x)
    assert torch.equal(dp, dp[:, :1, :1, :1].expand_as(dp))  # one bit per sample
    assert set(dp.unique().tolist()) == {0.0, SCALE}
    ad = torch.jit.trace(fastdrop.AlphaDropout(P).train(), x, check_trace=False)(x)
    ref = fastdrop.alpha_dropout(x, P, True, seed=1)
    assert set(ad.unique().tolist()) == set(ref.unique().tolist())


# ---- jit.script ------------------------------------------------------------------------

SCRIPTED = [
    (fastdrop.Dropout(P), nn.Dropout(P), None),
    (fastdrop.Dropout1d(P), nn.Dropout1d(P), (2,)),
    (fastdrop.Dropout2d(P), nn.Dropout2d(P), (2, 3)),
    (fastdrop.Dropout3d(P), nn.Dropout3d(P), (2, 3, 4)),
    (fastdrop.AlphaDropout(P), nn.AlphaDropout(P), None),
    (fastdrop.FeatureAlphaDropout(P), nn.FeatureAlphaDropout(P), (2, 3)),
    (fastdrop.DropPath(P), None, (1, 2, 3)),
    (fastdrop.NoiseDropout(P, noise_shape=(1, None, None, 1)), None, (0, 3)),
    (fastdrop.StochasticDepth(P, "row"), None, (1, 2, 3)),
]
SHAPES = {fastdrop.Dropout1d: (16, 12, 7), fastdrop.Dropout3d: (4, 12, 2, 3, 5)}


@pytest.mark.parametrize("ours,theirs,shared", SCRIPTED, ids=lambda v: type(v).__name__)
def test_script_each_module_runs_and_draws_fresh_masks(ours, theirs, shared, tmp_path):
    x = ones(*SHAPES.get(type(ours), (16, 12, 5, 5)))
    scripted = torch.jit.script(ours.train())
    torch.jit.save(scripted, tmp_path / "m.pt")
    for m in (scripted, torch.jit.load(tmp_path / "m.pt")):
        y1, y2 = m(x), m(x)
        assert not torch.equal(y1, y2)
        if shared is not None:  # the mask is shared along these dims, as the eager module's
            assert torch.equal(y1, y1.amax(dim=shared, keepdim=True).expand_as(y1))
        eager = type(ours).forward(ours, x) if theirs is None else theirs.train()(x)
        assert set(y1.unique().tolist()) == set(eager.unique().tolist())  # the same value set
        m.eval()
        assert m(x) is x or torch.equal(m(x), x)


def test_script_of_stochastic_depth_batch_mode_shares_one_bit():
    m = torch.jit.script(fastdrop.StochasticDepth(P, "batch").train())
    x = ones(6, 3, 2)
    torch.manual_seed(0)
    outs = {m(x).unique().item() for _ in range(40)}  # one bit: all zeros or all scaled
    assert outs == {0.0, SCALE}


def test_script_of_the_functional_api_names_the_way_forward():
    with pytest.raises(RuntimeError, match="torch.compile or torch.export"):
        torch.jit.script(fastdrop.dropout)
    with pytest.raises(RuntimeError, match="fastdrop.drop_path takes keyword-only arguments"):
        torch.jit.script(fastdrop.drop_path)


def test_script_of_a_model_with_fastdrop_modules_trains():
    torch.manual_seed(0)
    model = torch.jit.script(nn.Sequential(nn.Linear(8, 16), fastdrop.Dropout(0.2), nn.Linear(16, 1)))
    x, target = torch.randn(64, 8), torch.randn(64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ---- FX ----------------------------------------------------------------------------------

class Net(nn.Module):
    def __init__(self, dropout_mod, dropout2d_mod, drop_path_mod):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.d2, self.dp, self.d = dropout2d_mod, drop_path_mod, dropout_mod
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        h = self.dp(self.d2(self.conv(x))) + x.mean(1, keepdim=True)
        return self.fc(self.d(h.flatten(1)))


def test_fx_symbolic_trace_records_one_node_per_call_and_trains_with_fresh_masks():
    model = Net(fastdrop.Dropout(0.3), fastdrop.Dropout2d(0.3), fastdrop.DropPath(0.3)).train()
    gm = torch.fx.symbolic_trace(model)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(fastdrop.dropout) == 1
    assert targets.count(fastdrop.dropout2d) == 1
    assert targets.count(fastdrop.drop_path) == 1
    x = torch.randn(32, 3, 6, 6)
    assert not torch.equal(gm(x), gm(x))
    torch.manual_seed(3)
    a = gm(x)
    torch.manual_seed(3)
    assert torch.equal(a, model(x))  # the GraphModule runs the very calls of the model
    gm(x).sum().backward()
    assert gm.conv.weight.grad is not None


def test_fx_trace_of_functional_calls_and_torch_reference():
    def f(x):
        return fastdrop.dropout(x, 0.25, training=True) + F.dropout(x, 0.25, training=True)

    gm = torch.fx.symbolic_trace(f)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert fastdrop.dropout in targets and F.dropout in targets


def test_fx_feature_extractor_after_replace_dropout():
    tv = pytest.importorskip("torchvision", reason="torchvision not importable (CPU torch with a CUDA wheel)")
    from torchvision.models.feature_extraction import create_feature_extractor

    model = fastdrop.replace_dropout(tv.models.squeezenet1_1(num_classes=10)).train()
    extractor = create_feature_extractor(model, return_nodes={"classifier": "out"})
    out = extractor(torch.randn(2, 3, 64, 64))["out"]
    assert out.shape == (2, 10)


class Logged(torch.Tensor):
    calls = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("fn", [F.dropout, fastdrop.dropout, fastdrop.dropout2d, fastdrop.alpha_dropout,
                                fastdrop.drop_path, fastdrop.noise_dropout])
def test_torch_function_subclasses_get_the_call(fn):
    x = torch.ones(4, 3, 2).as_subclass(Logged)
    Logged.calls.clear()
    if fn is fastdrop.noise_dropout:
        fn(x, 0.5, (1, 3, 1))
    else:
        fn(x, 0.5, True)
    assert Logged.calls[0] is fn


def test_torch_function_subclasses_get_dropout_add():
    x, r = torch.ones(4, 3).as_subclass(Logged), torch.ones(4, 3)
    Logged.calls.clear()
    fastdrop.dropout_add(x, r, 0.5)
    assert Logged.calls[0] is fastdrop.dropout_add


# ---- torch.func ----------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_func_grad_is_the_mask_times_the_scale(impl):
    fn = IMPLS[impl]
    x = torch.randn(4000)
    out = {}

    def f(t):
        y = fn(t, P, True)
        out["y"] = y
        return (y * 3).sum()

    g = torch.func.grad(f)(x)
    assert set(g.unique().tolist()) <= {0.0, 3 * SCALE}
    assert keep_rate_ok(int((g != 0).sum()), g.numel())


def test_func_grad_vjp_jacrev_with_a_seed_are_exact():
    x = torch.randn(40)
    keep = fastdrop.dropout_mask(x.shape, 0.4, seed=5)
    expected = keep / 0.6
    g = torch.func.grad(lambda t: fastdrop.dropout(t, 0.4, seed=5).sum())(x)
    assert torch.equal(g, expected.float())
    y, vjp = torch.func.vjp(lambda t: fastdrop.dropout(t, 0.4, seed=5), x)
    assert torch.equal(y, fastdrop.dropout(x, 0.4, seed=5))
    assert torch.equal(vjp(torch.ones_like(x))[0], expected.float())
    jac = torch.func.jacrev(lambda t: fastdrop.dropout(t, 0.4, seed=5))(x)
    assert torch.equal(jac, torch.diag(expected.float()))


@pytest.mark.parametrize("impl", IMPLS)
def test_func_jacrev_of_an_unseeded_call_is_diagonal_with_one_mask(impl):
    fn = IMPLS[impl]
    x = torch.randn(300)
    jac = torch.func.jacrev(lambda t: fn(t, P, True))(x)
    diag = torch.diagonal(jac)
    assert torch.equal(jac, torch.diag(diag))
    assert set(diag.unique().tolist()) <= {0.0, SCALE}


def test_func_functional_call_on_a_fastdrop_model():
    model = nn.Sequential(nn.Linear(6, 6), fastdrop.Dropout(0.5)).train()
    params = dict(model.named_parameters())
    x = torch.randn(100, 6)
    grads = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x,)).sum())(params)
    assert grads["0.weight"].shape == (6, 6)
    torch.manual_seed(1)
    a = torch.func.functional_call(model, params, (x,))
    assert_dropout_of(a, model[0](x))


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_randomness_error_is_pytorchs_error(impl):
    fn = IMPLS[impl]
    with pytest.raises(RuntimeError, match="vmap: called random operation while in randomness error mode"):
        torch.func.vmap(lambda t: fn(t, P, True))(torch.randn(3, 4))


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_different_gives_each_sample_its_own_mask(impl):
    fn = IMPLS[impl]
    x = ones(64, 500)
    y = torch.func.vmap(lambda t: fn(t, P, True), randomness="different")(x)
    assert_dropout_of(y, x)
    assert len({tuple(r.tolist()) for r in (y != 0)}) == 64


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_same_gives_every_sample_one_mask(impl):
    fn = IMPLS[impl]
    x = ones(16, 2000)
    y = torch.func.vmap(lambda t: fn(t, P, True), randomness="same")(x)
    assert_dropout_of(y[0], x[0])
    assert torch.equal(y, y[:1].expand_as(y))


@pytest.mark.parametrize("in_dims", [0, 1])
def test_vmap_with_a_seed_different_is_the_stacked_tensor_and_same_is_one_sample(in_dims):
    x = torch.randn(6, 50) if in_dims == 0 else torch.randn(50, 6)
    stacked = x if in_dims == 0 else x.t()
    f = lambda t: fastdrop.dropout(t, 0.3, seed=21, offset=4)  # noqa: E731
    for randomness in ("error", "different"):
        y = torch.func.vmap(f, in_dims=in_dims, randomness=randomness)(x)
        assert torch.equal(y, fastdrop.dropout(stacked.contiguous(), 0.3, seed=21, offset=4))
    y = torch.func.vmap(f, in_dims=in_dims, randomness="same")(x)
    for i in range(6):
        assert torch.equal(y[i], fastdrop.dropout(stacked[i].contiguous(), 0.3, seed=21, offset=4))


def test_vmap_of_the_family_batches_the_noise_shape():
    x = ones(5, 8, 3, 4, 4)  # a batch of 5 (N, C, H, W) inputs
    y = torch.func.vmap(lambda t: fastdrop.dropout2d(t, P, True, seed=3), randomness="different")(x)
    assert torch.equal(y, fastdrop.dropout(x, P, noise_shape=(5, 8, 3, 1, 1), seed=3))
    y = torch.func.vmap(lambda t: fastdrop.drop_path(t, P, True), randomness="same")(x)
    assert torch.equal(y, y[:1].expand_as(y))


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_of_an_unbatched_input_follows_the_randomness(impl):
    fn, x = IMPLS[impl], ones(300)  # x is not batched: only the added zeros are
    y = torch.func.vmap(lambda b: fn(x, P, True) + b, randomness="different")(torch.zeros(8))
    assert len({tuple(r.tolist()) for r in (y != 0)}) == 8
    y = torch.func.vmap(lambda b: fn(x, P, True) + b, randomness="same")(torch.zeros(8))
    assert torch.equal(y, y[:1].expand_as(y))
    with pytest.raises(RuntimeError, match="randomness error mode"):
        torch.func.vmap(lambda b: fn(x, P, True) + b)(torch.zeros(8))


def test_vmap_inplace_different_on_an_unbatched_tensor_is_refused():
    x = torch.randn(4)
    before = x.clone()
    with pytest.raises(RuntimeError, match="Cannot ask for different inplace randomness on an unbatched"):
        torch.func.vmap(lambda b: fastdrop.dropout(x, P, True, True) + b, randomness="different")(torch.zeros(3))
    assert torch.equal(x, before)


def test_per_sample_gradients_use_each_samples_forward_mask():
    torch.manual_seed(0)
    w = torch.randn(10, 10)
    xs = torch.randn(8, 10)

    def loss(w, x):
        return (fastdrop.dropout(x @ w, 0.4, seed=77) ** 2).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="different")(w, xs)
    # Under "different" with a seed, sample i's mask is the stacked tensor's row i: offset 10 * i.
    for i in range(8):
        expected = torch.func.grad(lambda w: (fastdrop.dropout(xs[i] @ w, 0.4, seed=77, offset=10 * i) ** 2)
                                   .sum())(w)
        torch.testing.assert_close(per_sample[i], expected)


def test_per_sample_gradients_of_a_model_without_a_seed():
    model = nn.Sequential(nn.Linear(5, 64), fastdrop.Dropout(P), nn.Linear(64, 1)).train()
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.randn(12, 5)

    def loss(p, x):
        return torch.func.functional_call(model, p, (x[None],)).sum()

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="different")(params, xs)
    # d loss / d w2 = dropout(h): zero exactly where the sample's mask dropped a unit.
    g2 = grads["2.weight"][:, 0, :]
    h = F.linear(xs, params["0.weight"], params["0.bias"])
    assert_dropout_of(g2, h)
    assert len({tuple(r.tolist()) for r in (g2 != 0)}) == 12


def test_func_jvp_and_forward_ad_give_the_masked_tangent():
    x, t = torch.randn(300), torch.randn(300)
    keep = fastdrop.dropout_mask(x.shape, 0.3, seed=8).float()
    expected = keep * t * (1 / 0.7) + t
    f = lambda v: fastdrop.dropout(v, 0.3, seed=8) + v  # noqa: E731
    _, tangent = torch.func.jvp(f, (x,), (t,))
    torch.testing.assert_close(tangent, expected)
    with fwAD.dual_level():
        out = f(fwAD.make_dual(x, t))
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, expected)
    with fwAD.dual_level():  # a dual input that also requires grad
        out = f(fwAD.make_dual(x.clone().requires_grad_(), t))
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_ad_tangent_follows_the_primal_mask(impl):
    fn = IMPLS[impl]
    x, t = torch.rand(2000) + 0.5, torch.randn(2000)
    with fwAD.dual_level():
        y, ty = fwAD.unpack_dual(fn(fwAD.make_dual(x, t), P, True))
    kept = y != 0
    torch.testing.assert_close(ty, torch.where(kept, t * SCALE, 0))
    assert keep_rate_ok(int(kept.sum()), x.numel())
    _, ty = torch.func.jvp(lambda v: fn(v, P, True), (x,), (t,))
    assert set((ty / t).round(decimals=4).unique().tolist()) <= {0.0, SCALE}


def test_alpha_dropout_tangent_is_keep_times_a():
    x, t = torch.randn(500), torch.randn(500)
    y, ty = torch.func.jvp(lambda v: fastdrop.alpha_dropout(v, 0.2, True, seed=4), (x,), (t,))
    keep = fastdrop.dropout_mask(x.shape, 0.2, seed=4)
    a = 1.0 / math.sqrt((1.7580993408473766 ** 2 * 0.2 + 1) * 0.8)
    torch.testing.assert_close(ty, torch.where(keep, t * a, 0))


def test_jacfwd_with_same_randomness_is_diagonal():
    x = torch.randn(50)
    jac = torch.func.jacfwd(lambda t: fastdrop.dropout(t, P, True), randomness="same")(x)
    diag = torch.diagonal(jac)
    assert torch.equal(jac, torch.diag(diag)) and set(diag.unique().tolist()) <= {0.0, SCALE}


def test_dropout_add_under_transforms_uses_dropouts_mask():
    x, r = torch.randn(6, 20), torch.randn(6, 20)
    g = torch.func.grad(lambda v: fastdrop.dropout_add(v, r, 0.3, seed=2).sum())(x)
    assert torch.equal(g, fastdrop.dropout_mask(x.shape, 0.3, seed=2) / 0.7)
    y = torch.func.vmap(lambda v, q: fastdrop.dropout_add(v, q, 0.3, seed=2), randomness="different")(x, r)
    torch.testing.assert_close(y, fastdrop.dropout_add(x, r, 0.3, seed=2))


# ---- checkpoint with a generator -----------------------------------------------------------

@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpoint_with_a_generator_is_a_clear_error_before_any_work(use_reentrant):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, requires_grad=True)
    calls = []

    def block(t):
        calls.append(1)
        return fastdrop.dropout(t * 2, 0.5, generator=gen)

    with pytest.raises(ValueError, match="generator= inside torch.utils.checkpoint"):
        torch.utils.checkpoint.checkpoint(block, x, use_reentrant=use_reentrant)
    assert gen.initial_seed() == 0 and torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())


# ---- in-place edge behaviour ---------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_inplace_on_an_inference_tensor_outside_inference_mode_is_refused(impl):
    fn = IMPLS[impl]
    with torch.inference_mode():
        t = torch.ones(10)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        fn(t, P, True, True)
    if impl == "fastdrop":  # refused before writing (PyTorch's own dropout has written by then)
        assert torch.equal(t, torch.ones(10))
    with torch.inference_mode():
        t = torch.ones(10)
        fn(t, P, True, True)
    assert set(t.unique().tolist()) <= {0.0, SCALE}


@pytest.mark.parametrize("inplace", [False, True])
def test_a_negative_view_is_resolved(inplace):
    base = torch.randn(30)
    neg = torch._neg_view(base)
    assert neg.is_neg()
    expected = fastdrop.dropout(-base, 0.4, seed=6)
    y = fastdrop.dropout(neg, 0.4, True, inplace, seed=6)
    assert torch.equal(y, expected)
    if inplace:
        assert y is neg and torch.equal(base, -expected)


def test_dropout_add_compiles_without_graph_breaks():
    x, r = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
    f = torch.compile(lambda a, b: fastdrop.bias_dropout_add(a, None, b, 0.3, seed=9), fullgraph=True,
                      backend="aot_eager")
    y = f(x, r)
    torch.testing.assert_close(y, fastdrop.dropout(x, 0.3, seed=9) + r)
    y.sum().backward()
    assert torch.equal(x.grad, fastdrop.dropout_mask(x.shape, 0.3, seed=9) / 0.7)


@pytest.mark.parametrize("call", [lambda v: fastdrop.dropout(v, 0.5, seed=1),
                                  lambda v: fastdrop.dropout2d(v, 0.5, seed=1),
                                  lambda v: fastdrop.dropout_add(v, v * 2, 0.5, seed=1)])
def test_make_fx_records_the_operator(call):
    # Under a TorchDispatchMode the call is the operator the mode sees: make_fx once recorded
    # an eager call as a bare empty_like, whose graph returned unwritten memory.
    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.randn(2, 3, 4, 5)
    gm = make_fx(call)(x)
    assert "fastdrop.dropout" in gm.code
    assert torch.equal(gm(x), call(x))


def test_dispatch_modes_draw_the_eager_mask():
    # Under a TorchDispatchMode the call is the operator, whose seed is drawn as eager CPU
    # calls draw theirs: watching a run (here, counting its FLOPs) does not change its masks.
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(64)
    for s in range(20):
        with FlopCounterMode(display=False):
            torch.manual_seed(s)
            inside = fastdrop.dropout(x, 0.5)
        torch.manual_seed(s)
        assert torch.equal(inside, fastdrop.dropout(x, 0.5))
