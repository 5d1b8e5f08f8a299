"""The dropout family: noise shapes, Dropout1d/2d/3d, alpha dropout, drop path, fused residual
forms, modules and replace_dropout, each against its PyTorch (or timm) counterpart.

Masks come from the public contract (``fastdrop.dropout_mask``, itself checked element by
element in test_contract.py) reshaped to the noise shape; a few elements are also checked
against the plain-integer Philox in reference.py. Values are exact wherever the math is.
'triton' runs the kernels (Triton's interpreter on CPU tensors, or a GPU).
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdrop
from fastdrop import contract, variants
from fastdrop.backends import reference
from fastdrop.backends import triton as launcher
from reference import (FLOAT_DTYPES, Z_BOUND, assert_bitwise_equal, binomial_z, keep_element, nonzero_randn,
                       reference_mask, scaled, ulp_distance)

HAS_KERNEL_DEVICE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
KDEV = "cuda" if torch.cuda.is_available() else "cpu"  # where backend='triton' runs
needs_kernels = pytest.mark.skipif(not HAS_KERNEL_DEVICE, reason="needs a GPU or TRITON_INTERPRET=1")
BACKENDS = ["cpu", pytest.param("triton", marks=needs_kernels)]
SEED = 0x0123456789ABCDEF
ALPHA = 1.7580993408473766


def dev(backend):
    return KDEV if backend == "triton" else "cpu"


def noise_reference(x, p, noise_shape, seed, offset=0):
    """Plain dropout's values where the contract's bit at the noise index keeps."""
    keep = reference_mask(noise_shape, p, seed, offset, device=x.device)
    return torch.where(keep, scaled(x, p), torch.zeros((), dtype=x.dtype, device=x.device))


def aten_alpha(x, keep, p):
    """ATen's _dropout_impl for alpha dropout, op for op, given its 0/1 noise as a bool mask."""
    a = 1.0 / math.sqrt((ALPHA * ALPHA * p + 1) * (1 - p))
    noise = keep.to(x.dtype)
    b = noise.add(-1).mul_(ALPHA * a).add_(ALPHA * a * p)
    noise.mul_(a)
    return x.mul(noise).add_(b)


def assert_close_truncated_alpha(y, ref, p):
    """bfloat16 alpha dropout under Triton's interpreter, which truncates float32 -> bfloat16
    where a GPU rounds: each of the two roundings (x * a, then + b) may be off by an ulp, and
    the sum can cancel, so the bound is on the magnitudes, not the result's ulps."""
    a, b_keep, b_drop = variants.alpha_constants(p, y.dtype)
    assert torch.equal(y == b_drop, ref == b_drop)
    eps = torch.finfo(y.dtype).eps
    err = (y.double() - ref.double()).abs()
    assert (err <= 2 * eps * (ref.double().abs() + 2 * abs(b_keep))).all()


def feature_shape(shape):
    return tuple(shape[:2]) + (1,) * (len(shape) - 2)


# ---------------------------------------------------------------------------------------
# noise_shape: the general form.

NOISE_CASES = [  # (input shape, noise_shape as given, resolved noise shape)
    ((4, 6, 5, 3), (4, 6, 1, 1), (4, 6, 1, 1)),     # channel dropout
    ((5, 7, 3), (1, 7, 1), (1, 7, 1)),              # one mask shared across the batch
    ((5, 7, 3), (7, 1), (1, 7, 1)),                 # missing leading dims broadcast (are 1)
    ((5, 7, 3), (None, 1, None), (5, 1, 3)),        # None takes the input's size
    ((3, 4, 2, 5, 2), (3, 1, 2, 1, 2), (3, 1, 2, 1, 2)),  # alternating shared dims
    ((6, 5), (1, 1), (1, 1)),                       # one bit for everything
    ((7, 9), (7, 9), (7, 9)),                       # one bit per element: plain dropout
    ((1023,), (1,), (1,)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,given,noise", NOISE_CASES)
@pytest.mark.parametrize("offset", [0, 3])
def test_noise_dropout_equals_reference(backend, shape, given, noise, offset):
    x = nonzero_randn(shape, torch.float32, device=dev(backend))
    y = fastdrop.noise_dropout(x, 0.3, given, seed=SEED, offset=offset, backend=backend)
    assert_bitwise_equal(y, noise_reference(x, 0.3, noise, SEED, offset))


def test_noise_bits_are_the_contract_bits_at_the_noise_index():
    # Independent of fastdrop.contract: plain-integer Philox at offset + row-major noise index.
    x = torch.ones(3, 4, 5, 2)
    noise, p, offset = (3, 1, 5, 1), 0.5, 7
    y = fastdrop.noise_dropout(x, p, noise, seed=SEED, offset=offset, backend="cpu")
    for n in range(3):
        for h in range(5):
            kept = keep_element(SEED, offset + n * 5 + h, p)
            assert bool((y[n, :, h, :] != 0).all()) == kept and bool((y[n, :, h, :] == 0).all()) != kept


def test_full_noise_shape_is_plain_dropout():
    x = torch.randn(33, 17)
    assert_bitwise_equal(fastdrop.noise_dropout(x, 0.4, x.shape, seed=5, offset=2),
                         fastdrop.dropout(x, 0.4, seed=5, offset=2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_dropout_any_strides_no_copy(backend):
    base = nonzero_randn((4, 6, 5, 3), torch.float32, device=dev(backend))
    noise = (4, 6, 1, 1)
    ref = noise_reference(base, 0.5, noise, SEED)
    for x in (base.to(memory_format=torch.channels_last), base.transpose(0, 2).contiguous().transpose(0, 2)):
        y = fastdrop.noise_dropout(x, 0.5, noise, seed=SEED, backend=backend)
        assert y.stride() == x.stride()
        assert_bitwise_equal(y, ref)
    sliced = torch.randn(4, 12, 5, 6, device=dev(backend))[:, ::2, :, 1:4]  # gaps: y is dense
    assert_bitwise_equal(fastdrop.noise_dropout(sliced, 0.5, noise, seed=SEED, backend=backend),
                         noise_reference(sliced, 0.5, noise, SEED))


@pytest.mark.parametrize("noise_shape,error", [
    ((4, 6, 2, 1), ValueError), ((1, 4, 6, 1, 1), ValueError), ((4, 0, 1, 1), ValueError),
    ((4, 6.0, 1, 1), TypeError), (5, TypeError), ("abc", TypeError), ((True, 1), TypeError),
])
def test_noise_shape_not_broadcastable_is_refused(noise_shape, error):
    x = torch.ones(4, 6, 5, 3)
    with pytest.raises(error, match="noise_shape"):
        fastdrop.noise_dropout(x, 0.5, noise_shape)
    with pytest.raises(error, match="noise_shape"):  # in eval too: a wrong shape is a bug either way
        fastdrop.noise_dropout(x, 0.5, noise_shape, training=False)


@needs_kernels
def test_noise_dropout_reserves_one_element_per_noise_element(monkeypatch):
    # The Python draw (the Triton backend's): one stream element per noise element.
    seen = []
    from fastdrop import _rng
    real = _rng.reserve
    monkeypatch.setattr(_rng, "reserve", lambda n, d, g: seen.append(n) or real(n, d, g))
    fastdrop.noise_dropout(torch.ones(8, 3, 5, 5, device=KDEV), 0.5, (8, 3, 1, 1), backend="triton")
    fastdrop.dropout2d(torch.ones(8, 3, 5, 5, device=KDEV), 0.5, backend="triton")
    fastdrop.drop_path(torch.ones(8, 3, 5, device=KDEV), 0.5, True, backend="triton")
    assert seen == [24, 24, 8]
    torch.manual_seed(3)
    a = fastdrop.dropout2d(torch.ones(8, 3, 5, 5), 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, fastdrop.dropout2d(torch.ones(8, 3, 5, 5), 0.5))


# ---------------------------------------------------------------------------------------
# Channel dropout, alpha dropout, drop path: values and masks.

CHANNEL_FNS = [  # (fastdrop fn, torch fn, input shape, noise shape of the input)
    (fastdrop.dropout1d, F.dropout1d, (6, 5, 7), (6, 5, 1)),
    (fastdrop.dropout1d, F.dropout1d, (5, 7), (5, 1)),                 # unbatched
    (fastdrop.dropout2d, F.dropout2d, (4, 6, 5, 3), (4, 6, 1, 1)),
    (fastdrop.dropout2d, F.dropout2d, (6, 5, 7), (6, 5, 1)),           # 3-D: (N, C, L), as PyTorch
    (fastdrop.dropout3d, F.dropout3d, (3, 4, 2, 3, 2), (3, 4, 1, 1, 1)),
    (fastdrop.dropout3d, F.dropout3d, (4, 2, 3, 2), (4, 1, 1, 1)),     # unbatched
    # Ranks PyTorch warns about, with its shapes of noise: 2-D to dropout2d is per element;
    # dropout3d takes anything but 5-D as unbatched, so 3-D and 6-D share along all but dim 0.
    (fastdrop.dropout2d, F.dropout2d, (6, 5), (6, 5)),
    (fastdrop.dropout3d, F.dropout3d, (6, 2, 3), (6, 1, 1)),
    (fastdrop.dropout3d, F.dropout3d, (5, 3, 2, 1, 2, 2), (5, 1, 1, 1, 1, 1)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn,torch_fn,shape,noise", CHANNEL_FNS)
def test_channel_dropout_is_noise_dropout(backend, fn, torch_fn, shape, noise):
    x = nonzero_randn(shape, torch.float32, device=dev(backend))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = fn(x, 0.4, seed=SEED, offset=1, backend=backend)
    assert_bitwise_equal(y, noise_reference(x, 0.4, noise, SEED, 1))


@pytest.mark.parametrize("fn,torch_fn,shape,noise", CHANNEL_FNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_dropout_equals_torch_given_its_mask(fn, torch_fn, shape, noise, dtype):
    # PyTorch's own output decides the mask (x != 0 everywhere); fastdrop's formula with that
    # mask must give PyTorch's values. Exact at p = 0.5 (scale 2), within 1 ulp at p = 0.3
    # (PyTorch divides by 1 - p in the input's dtype, fastdrop rounds 1 / (1 - p) once).
    x = nonzero_randn(shape, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p, ulps in ((0.5, 0), (0.3, 1)):
            torch.manual_seed(0)
            out = torch_fn(x, p, True)
            keep = out != 0
            shared = tuple(d for d in range(len(shape)) if noise[d] == 1)
            if shared:  # (amax over dim=() would reduce every dim)
                assert torch.equal(keep, keep.amax(dim=shared, keepdim=True).expand(shape))  # PyTorch's too
            mine = torch.where(keep, scaled(x, p), torch.zeros((), dtype=dtype))
            assert ulp_distance(mine, out).max().item() <= ulps


@pytest.mark.parametrize("fn,shape,noise", [
    (fastdrop.dropout1d, (64, 32, 3), (64, 32, 1)),
    (fastdrop.dropout2d, (64, 32, 2, 2), (64, 32, 1, 1)),
    (fastdrop.dropout3d, (32, 64, 2, 1, 2), (32, 64, 1, 1, 1)),
    (lambda x, p, **kw: fastdrop.drop_path(x, p, True, **kw), (2048, 3, 2), (2048, 1, 1)),
    (lambda x, p, **kw: fastdrop.noise_dropout(x, p, (1, 2048, 1), **kw), (4, 2048, 3), (1, 2048, 1)),
])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_whole_units_dropped_at_rate_p(fn, shape, noise, p):
    x = torch.ones(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = fn(x, p, seed=SEED + int(p * 10))
    keep = y != 0
    shared = tuple(d for d in range(len(shape)) if noise[d] == 1)
    unit = keep.amax(dim=shared, keepdim=True)
    assert torch.equal(keep, unit.expand(shape)), "a unit was partly dropped"
    assert torch.equal(keep, keep.amin(dim=shared, keepdim=True).expand(shape))
    n = math.prod(noise)
    assert abs(binomial_z(int(unit.sum()), n, 1 - p)) < Z_BOUND


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("feature", [False, True])
def test_alpha_dropout_equals_aten_formula(backend, dtype, feature):
    shape = (4, 6, 5, 3)
    x = nonzero_randn(shape, dtype, device=dev(backend))
    fn = fastdrop.feature_alpha_dropout if feature else fastdrop.alpha_dropout
    y = fn(x, 0.3, True, seed=SEED, offset=2, backend=backend)
    keep = reference_mask(feature_shape(shape) if feature else shape, 0.3, SEED, 2, device=x.device)
    ref = aten_alpha(x, keep, 0.3)
    if backend == "triton" and dtype == torch.bfloat16 and KDEV == "cpu":
        assert_close_truncated_alpha(y, ref, 0.3)
    else:
        assert_bitwise_equal(y, ref)


@pytest.mark.parametrize("feature", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_alpha_dropout_equals_torch_given_its_mask(feature, dtype):
    # On real PyTorch output: on zeros the only values are b_kept and b_dropped; on x, the
    # kept elements are those not equal to b_dropped, and fastdrop's formula gives PyTorch's values.
    shape = (8, 16, 3)
    torch_fn = F.feature_alpha_dropout if feature else F.alpha_dropout
    fn = fastdrop.feature_alpha_dropout if feature else fastdrop.alpha_dropout
    z = torch.zeros(shape, dtype=dtype)
    torch.manual_seed(0)
    t_vals = set(torch_fn(z, 0.3, True).unique().tolist())
    assert t_vals == set(fn(z, 0.3, True, seed=SEED).unique().tolist()) and len(t_vals) == 2
    x = nonzero_randn(shape, dtype)
    torch.manual_seed(1)
    out = torch_fn(x, 0.3, True)
    a, b_keep, b_drop = variants.alpha_constants(0.3, dtype)
    keep = out != b_drop
    assert_bitwise_equal(out, aten_alpha(x, keep, 0.3))  # the test's reference formula is PyTorch's
    assert_bitwise_equal(out, reference.transform(x, keep, a, (b_keep, b_drop)).to(dtype))  # and fastdrop's


def test_alpha_dropout_keeps_zero_mean_unit_variance():
    x = torch.randn(1 << 18, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = fastdrop.alpha_dropout(x, 0.2, True, seed=SEED)
    # Mean 0 and variance 1 up to sampling error (n = 2**18: sd of the mean ~ 0.002).
    assert abs(y.mean().item()) < 0.01 and abs(y.var().item() - 1) < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_drop_path_equals_timm_given_the_mask(backend, scale_by_keep):
    x = nonzero_randn((16, 5, 3), torch.float32, device=dev(backend))
    p = 0.25  # 1 / 0.75 rounds the same whether divided in float32 or float64
    y = fastdrop.drop_path(x, p, True, scale_by_keep, seed=SEED, backend=backend)
    # timm's drop_path with the contract's mask as its random tensor.
    random_tensor = reference_mask((16, 1, 1), p, SEED, device=x.device).to(x.dtype)
    if scale_by_keep:
        random_tensor.div_(1 - p)
    # Equal values; timm's x * 0 gives -0.0 for negative x where fastdrop writes 0.0.
    assert torch.equal(y, x * random_tensor) and not (y.signbit() & (y == 0)).any()


# ---------------------------------------------------------------------------------------
# Gradients: exact given the mask, gradcheck, double backward.

VARIANTS = {  # name -> (fn(x, **kw), x shape, d(output)/dx as a function of x's result)
    "noise": lambda x, **kw: fastdrop.noise_dropout(x, 0.4, (1, 3, 1), **kw),
    "dropout1d": lambda x, **kw: fastdrop.dropout1d(x, 0.4, **kw),
    "dropout2d": lambda x, **kw: fastdrop.dropout2d(x.unsqueeze(-1), 0.4, **kw).squeeze(-1),
    "dropout3d": lambda x, **kw: fastdrop.dropout3d(x.unsqueeze(0), 0.4, **kw).squeeze(0),
    "alpha": lambda x, **kw: fastdrop.alpha_dropout(x, 0.4, True, **kw),
    "feature_alpha": lambda x, **kw: fastdrop.feature_alpha_dropout(x, 0.4, True, **kw),
    "drop_path": lambda x, **kw: fastdrop.drop_path(x, 0.4, True, **kw),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_gradcheck(backend, name):
    if backend == "triton" and name not in ("noise", "alpha") and KDEV == "cpu":
        pytest.skip("interpreter time: the kernel path of the other variants is the same Function")
    x = torch.randn(4, 3, 5, dtype=torch.float64, device=dev(backend), requires_grad=True)
    fn = VARIANTS[name]
    kw = dict(seed=SEED, offset=1, backend=backend)
    assert torch.autograd.gradcheck(lambda t: fn(t, **kw), (x,), fast_mode=backend == "triton")
    if backend == "cpu":
        assert torch.autograd.gradgradcheck(lambda t: fn(t, **kw), (x,))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gradients_equal_torch_autograd_given_the_mask(dtype):
    shape = (4, 6, 5)
    x = nonzero_randn(shape, dtype).requires_grad_()
    g = nonzero_randn(shape, dtype, generator=torch.Generator().manual_seed(9))
    # Channel dropout: grad = g * keep * scale, rounded once.
    keep = reference_mask((4, 6, 1), 0.3, SEED, device="cpu")
    (gx,) = torch.autograd.grad(fastdrop.dropout1d(x, 0.3, seed=SEED), x, g)
    assert_bitwise_equal(gx, torch.where(keep, scaled(g, 0.3), torch.zeros((), dtype=dtype)))
    # Alpha dropout: torch autograd through ATen's formula.
    keep = reference_mask(shape, 0.3, SEED, device="cpu")
    xr = x.detach().clone().requires_grad_()
    (ref,) = torch.autograd.grad(aten_alpha(xr, keep, 0.3), xr, g)
    (gx,) = torch.autograd.grad(fastdrop.alpha_dropout(x, 0.3, True, seed=SEED), x, g)
    assert torch.equal(gx, ref)  # bits too, but for g * 0 = -0.0 where fastdrop writes 0.0
    assert_bitwise_equal(gx[keep], ref[keep])


def test_inplace_variants_write_the_input_and_differentiate():
    for fn in (lambda t: fastdrop.dropout2d(t, 0.5, inplace=True, seed=3),
               lambda t: fastdrop.noise_dropout(t, 0.5, (4, 1, 5, 1), inplace=True, seed=3)):
        leaf = torch.randn(4, 6, 5, 3, requires_grad=True)
        x = leaf * 1.0
        ref = fn(x.detach().clone())
        y = fn(x)
        assert y is x and torch.equal(y, ref)
        y.sum().backward()
        assert torch.equal(leaf.grad, (ref != 0).float() * 2)
    with pytest.raises(RuntimeError, match="more than one element"):
        fastdrop.dropout2d(torch.ones(2, 3, 1, 1).expand(2, 3, 4, 4), 0.5, inplace=True)


def test_channels_last_inplace_keeps_layout():
    x = torch.randn(4, 6, 5, 3).to(memory_format=torch.channels_last)
    ref = fastdrop.dropout2d(x.contiguous(), 0.5, seed=SEED)
    strides = x.stride()
    y = fastdrop.dropout2d(x, 0.5, inplace=True, seed=SEED)
    assert y is x and x.stride() == strides and torch.equal(y, ref)


# ---------------------------------------------------------------------------------------
# PyTorch's rank rules, warnings, errors, identity cases.

def outcome(fn):
    """(exception type and text or 'ok', result shape, [(warning category, text)])."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            r = fn()
            result = ("ok", tuple(r.shape))
        except Exception as e:  # noqa: BLE001 - whatever PyTorch raises is the target
            result = (type(e).__name__, str(e))
    return result, [(w.category, str(w.message)) for w in caught]


PAIRS = [(fastdrop.dropout1d, F.dropout1d), (fastdrop.dropout2d, F.dropout2d), (fastdrop.dropout3d, F.dropout3d),
         (fastdrop.feature_alpha_dropout, F.feature_alpha_dropout), (fastdrop.alpha_dropout, F.alpha_dropout)]


@pytest.mark.parametrize("fns", PAIRS, ids=lambda f: f[0].__name__)
@pytest.mark.parametrize("ndim", range(7))
@pytest.mark.parametrize("p,training", [(0.5, True), (0.5, False), (0.0, True), (1.0, True), (1.5, True),
                                        (-0.1, False)])
def test_rank_rules_errors_and_warnings_equal_torch(fns, ndim, p, training):
    fn, torch_fn = fns
    x = torch.ones([2] * ndim)
    assert outcome(lambda: fn(x, p, training)) == outcome(lambda: torch_fn(x, p, training))


@pytest.mark.parametrize("fns", PAIRS, ids=lambda f: f[0].__name__)
def test_empty_and_eval_return_the_input(fns):
    fn, torch_fn = fns
    tail = (4,) if fn is fastdrop.dropout1d else (4, 4)
    for x, p, training in ((torch.ones(0, 3, *tail), 0.5, True), (torch.ones(2, 3, *tail), 0.5, False),
                           (torch.ones(2, 3, *tail), 0.0, True)):
        assert fn(x, p, training) is x
    x = torch.ones(2, 3, 4, 4)
    assert fastdrop.drop_path(x, 0.5) is x and fastdrop.drop_path(x, 0.0, True) is x
    assert fastdrop.noise_dropout(x, 0.5, (2, 3, 1, 1), training=False) is x


@pytest.mark.parametrize("fn", [fastdrop.dropout2d, fastdrop.alpha_dropout, fastdrop.feature_alpha_dropout,
                                lambda x, p, t, **kw: fastdrop.drop_path(x, p, t, **kw),
                                lambda x, p, t, **kw: fastdrop.noise_dropout(x, p, (3, 4, 1, 1), t, **kw)])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf * 0
def test_p_one_gives_zeros_with_zero_gradient(fn, backend):
    # (On the kernel path the scale, 0.0, reaches the kernel as the bits 0: an int32 argument.)
    x = torch.tensor([math.inf, -math.inf, math.nan, 1.0] * 12, device=dev(backend)).reshape(3, 4, 2, 2)
    x.requires_grad_()
    y = fn(x, 1.0, True, backend=backend)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y)) and torch.equal(x.grad, torch.zeros_like(x))
    r = torch.randn(3, 4, 2, 2, device=dev(backend))
    assert torch.equal(fastdrop.bias_dropout_add(x, x[0, 0, 0], r, 1.0, True, backend=backend), r)


# ---------------------------------------------------------------------------------------
# The kernels against the CPU path, bit for bit.

KERNEL_CASES = {
    "dropout2d": lambda x, **kw: fastdrop.dropout2d(x, 0.3, **kw),
    "dropout2d_channels_last": lambda x, **kw: fastdrop.dropout2d(x.to(memory_format=torch.channels_last),
                                                                  0.3, **kw),
    "dropout1d_unbatched": lambda x, **kw: fastdrop.dropout1d(x[0, :, :, 0], 0.3, **kw),
    "dropout3d_channels_last": lambda x, **kw: fastdrop.dropout3d(
        x.unsqueeze(2).expand(-1, -1, 2, -1, -1).contiguous(memory_format=torch.channels_last_3d), 0.3, **kw),
    "noise_batch_shared": lambda x, **kw: fastdrop.noise_dropout(x, 0.3, (1, 9, 1, 11), **kw),
    "alpha": lambda x, **kw: fastdrop.alpha_dropout(x, 0.3, True, **kw),
    "alpha_transposed": lambda x, **kw: fastdrop.alpha_dropout(x.transpose(1, 3), 0.3, True, **kw),
    "feature_alpha_channels_last": lambda x, **kw: fastdrop.feature_alpha_dropout(
        x.to(memory_format=torch.channels_last), 0.3, True, **kw),
    "drop_path": lambda x, **kw: fastdrop.drop_path(x, 0.3, True, **kw),
    "dropout_add": lambda x, **kw: fastdrop.dropout_add(x, x.flip(0), 0.3, **kw),
    "bias_dropout_add": lambda x, **kw: fastdrop.bias_dropout_add(x, x[0, 0, 0], x.flip(0), 0.3, **kw),
}


@needs_kernels
@pytest.mark.parametrize("name", sorted(KERNEL_CASES))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_kernel_equals_cpu_path(name, dtype):
    x = nonzero_randn((5, 9, 7, 11), dtype)
    fn = KERNEL_CASES[name]
    on_cpu = fn(x, seed=SEED, offset=3, backend="cpu")
    ker = fn(x.to(KDEV), seed=SEED, offset=3, backend="triton").cpu()
    assert ker.stride() == on_cpu.stride()
    if dtype == torch.bfloat16 and KDEV == "cpu" and "alpha" in name:
        assert_close_truncated_alpha(ker, on_cpu, 0.3)
    elif dtype == torch.bfloat16 and KDEV == "cpu":  # the interpreter truncates to bfloat16
        assert ulp_distance(ker, on_cpu).max().item() <= 1
        assert torch.equal(ker == 0, on_cpu == 0)
    else:
        assert_bitwise_equal(ker, on_cpu)


@needs_kernels
@pytest.mark.parametrize("block", [64, 1024])
def test_kernel_mask_does_not_depend_on_the_tile(block):
    x = nonzero_randn((6, 5, 3, 7), torch.float32, device=KDEV)
    for x_ in (x, x.to(memory_format=torch.channels_last)):
        for noise in ((6, 5, 1, 1), (1, 5, 3, 1)):
            y = torch.empty_like(x_)
            launcher.launch(x_, y, SEED, 1, contract.keep_threshold(0.5), 2.0, block=block,
                              mask_strides=contract.noise_strides(noise))
            assert_bitwise_equal(y.cpu(), noise_reference(x_.cpu(), 0.5, noise, SEED, 1))


@needs_kernels
def test_kernel_walks_more_dims_than_it_merges():
    # Six dims no merge can join: the launcher walks them slice by slice, same mask.
    x = nonzero_randn((3, 2, 4, 2, 3, 2), torch.float32, device=KDEV).permute(5, 3, 1, 4, 2, 0)
    for noise in (None, (2, 1, 2, 1, 4, 1)):
        ref = (noise_reference(x.cpu(), 0.5, noise, SEED) if noise else
               noise_reference(x.cpu(), 0.5, x.shape, SEED))
        got = (fastdrop.noise_dropout(x, 0.5, noise, seed=SEED, backend="triton") if noise else
               fastdrop.dropout(x, 0.5, seed=SEED, backend="triton"))
        assert_bitwise_equal(got.cpu(), ref)


# ---------------------------------------------------------------------------------------
# Fused residual forms.

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dropout_add_equals_the_unfused_expression(backend, dtype, with_bias):
    # float32/float64: the fused op rounds exactly like residual + dropout(x + bias).
    g = torch.Generator().manual_seed(2)
    x, r = (torch.randn(7, 5, 33, generator=g, dtype=dtype).to(dev(backend)) for _ in range(2))
    bias = torch.randn(33, generator=g, dtype=dtype).to(dev(backend))
    kw = dict(seed=SEED, offset=5, backend=backend)
    if with_bias:
        y, ref = fastdrop.bias_dropout_add(x, bias, r, 0.3, True, **kw), r + fastdrop.dropout(x + bias, 0.3, **kw)
    else:
        y, ref = fastdrop.dropout_add(x, r, 0.3, **kw), r + fastdrop.dropout(x, 0.3, **kw)
    assert_bitwise_equal(y, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dropout_add_half_rounds_once(dtype):
    x, r, b = (nonzero_randn(s, dtype, generator=torch.Generator().manual_seed(i)) for i, s in
               enumerate([(9, 40), (9, 40), (40,)]))
    y = fastdrop.bias_dropout_add(x, b, r, 0.3, True, seed=SEED)
    keep = reference_mask(x.shape, 0.3, SEED)
    exact = r.double() + torch.where(keep, (x.double() + b.double()) * (1 / 0.7), 0)
    assert torch.equal(y, ((r.float() + torch.where(keep, (x.float() + b.float()) * (1 / 0.7), 0))).to(dtype))
    assert (y.double() - exact).abs().max() <= torch.finfo(dtype).eps * exact.abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_add_gradients(backend):
    g = torch.Generator().manual_seed(4)
    x, r = (torch.randn(3, 4, 6, generator=g, dtype=torch.float64).to(dev(backend)).requires_grad_()
            for _ in range(2))
    bias = torch.randn(6, generator=g, dtype=torch.float64).to(dev(backend)).requires_grad_()
    kw = dict(seed=SEED, offset=2, backend=backend)
    assert torch.autograd.gradcheck(lambda a, b, c: fastdrop.bias_dropout_add(a, b, c, 0.4, True, **kw),
                                    (x, bias, r), fast_mode=backend == "triton")
    gout = torch.randn(3, 4, 6, generator=g, dtype=torch.float64).to(dev(backend))
    gx, gb, gr = torch.autograd.grad(fastdrop.bias_dropout_add(x, bias, r, 0.4, True, **kw), (x, bias, r), gout)
    keep = reference_mask(x.shape, 0.4, SEED, 2, device=x.device)
    assert torch.equal(gx, torch.where(keep, gout * (1 / 0.6), 0)) and torch.equal(gr, gout)
    assert torch.equal(gb, gx.sum((0, 1)))
    (gx2,) = torch.autograd.grad(fastdrop.dropout_add(x, r, 0.4, **kw), x, gout)
    assert torch.equal(gx2, gx)


def test_dropout_add_eval_and_checks():
    x, r, b = torch.randn(3, 4), torch.randn(3, 4), torch.randn(4)
    assert torch.equal(fastdrop.dropout_add(x, r, 0.5, False), r + x)
    assert torch.equal(fastdrop.bias_dropout_add(x, b, r, 0.5, False), r + (x + b))
    assert torch.equal(fastdrop.bias_dropout_add(x, b, r, 0.0, True), r + (x + b))
    assert torch.equal(fastdrop.bias_dropout_add(x, None, r, 0.5, seed=1), fastdrop.dropout_add(x, r, 0.5, seed=1))
    xt = torch.randn(4, 3).t()  # non-contiguous inputs are copied; same result
    assert torch.equal(fastdrop.dropout_add(xt, r, 0.5, seed=1), fastdrop.dropout_add(xt.contiguous(), r, 0.5, seed=1))
    with pytest.raises(ValueError, match="residual must have x's shape"):
        fastdrop.dropout_add(x, r[:2], 0.5)
    with pytest.raises(ValueError, match="bias must have shape"):
        fastdrop.bias_dropout_add(x, torch.randn(3), r, 0.5)
    with pytest.raises(TypeError, match="one dtype"):
        fastdrop.dropout_add(x, r.double(), 0.5)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        fastdrop.dropout_add(x, r, 1.5)


# ---------------------------------------------------------------------------------------
# Modules and replace_dropout.

MODULE_PAIRS = [(fastdrop.Dropout, nn.Dropout), (fastdrop.Dropout1d, nn.Dropout1d),
                (fastdrop.Dropout2d, nn.Dropout2d), (fastdrop.Dropout3d, nn.Dropout3d),
                (fastdrop.AlphaDropout, nn.AlphaDropout), (fastdrop.FeatureAlphaDropout, nn.FeatureAlphaDropout)]


@pytest.mark.parametrize("mine,theirs", MODULE_PAIRS, ids=lambda c: c.__name__)
def test_modules_are_drop_ins(mine, theirs):
    assert repr(mine(0.3, True)) == repr(theirs(0.3, True)) and repr(mine()) == repr(theirs())
    assert isinstance(mine(), theirs) and mine.__constants__ == theirs.__constants__
    assert mine(keep_prob=0.8).p == pytest.approx(0.2)
    with pytest.raises(ValueError) as mine_err:
        mine(1.3)
    with pytest.raises(ValueError) as their_err:
        theirs(1.3)
    assert str(mine_err.value) == str(their_err.value)
    m = mine(0.5).eval()
    x = {fastdrop.Dropout1d: torch.randn(2, 3, 4), fastdrop.Dropout2d: torch.randn(2, 3, 4, 4)}.get(
        mine, torch.randn(2, 3, 4, 4, 4))
    assert m(x) is x


def test_module_forwards_use_their_own_p():
    x = torch.ones(64, 32, 2, 2)
    torch.manual_seed(0)
    rates = [(fastdrop.Dropout2d(p)(x)[:, :, 0, 0] == 0).float().mean().item() for p in (0.1, 0.5, 0.9)]
    assert rates[0] < 0.2 and 0.4 < rates[1] < 0.6 and rates[2] > 0.8
    dp = fastdrop.DropPath(0.25)
    assert repr(dp) == "DropPath(drop_prob=0.250)" and fastdrop.DropPath(keep_prob=0.75).drop_prob == 0.25
    assert dp.eval()(x) is x
    nd = fastdrop.NoiseDropout(0.5, (None, 1, 1, 1))
    y = nd(x)
    assert torch.equal(y, y[:, :1, :1, :1].expand_as(y))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Dropout2d(0.2),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


def small_cnn(shared):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Block(8), nn.MaxPool2d(2), nn.Dropout2d(0.1, inplace=True),
        Block(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), shared, nn.Linear(16, 16), nn.ReLU(), shared),
        nn.AlphaDropout(0.05), nn.Linear(16, 10))


def test_replace_dropout_on_a_cnn():
    torch.manual_seed(0)
    shared = nn.Dropout(0.3)
    model = small_cnn(shared)
    model[2].body[3].train(False)  # a mixed-mode model keeps each module's mode
    original = {name: (type(m), m.p, m.inplace, m.training) for name, m in model.named_modules()
                if isinstance(m, nn.modules.dropout._DropoutNd)}
    ref = small_cnn(nn.Dropout(0.3))
    ref.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 16, 16)
    assert fastdrop.replace_dropout(model) is model
    swapped = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
    assert swapped.keys() == original.keys()
    for name, m in swapped.items():
        cls, p, inplace, training = original[name]
        assert type(m).__module__ == "fastdrop.modules" and isinstance(m, cls)
        assert (m.p, m.inplace, m.training) == (p, inplace, training)
    assert model[8][2] is model[8][5]  # still shared
    model.eval()
    ref.eval()
    assert torch.equal(model(x), ref(x))
    model.train()
    out = model(x)
    assert out.shape == (4, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    target = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(0))

    def eval_loss():
        model.eval()
        with torch.no_grad():
            loss = F.cross_entropy(model(x), target).item()
        model.train()
        return loss

    before = eval_loss()
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), target).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
    assert eval_loss() < 0.75 * before


def test_replace_dropout_root_and_subclasses():
    class MyDropout(nn.Dropout):  # may override forward: left alone
        pass

    root = nn.Dropout2d(0.4).eval()
    new = fastdrop.replace_dropout(root)
    assert type(new) is fastdrop.Dropout2d and new.p == 0.4 and not new.training
    model = nn.Sequential(MyDropout(0.2), nn.ModuleList([nn.Dropout3d(0.1)]), nn.ModuleDict({"a": nn.Dropout1d()}))
    fastdrop.replace_dropout(model)
    assert type(model[0]) is MyDropout
    assert type(model[1][0]) is fastdrop.Dropout3d and type(model[2]["a"]) is fastdrop.Dropout1d
    already = fastdrop.replace_dropout(model)
    assert type(already[1][0]) is fastdrop.Dropout3d
