"""fastdrop.dropout against torch.nn.functional.dropout: signature behaviour, errors, identity
cases, dtypes, layouts, kept values and keep rates, RNG plumbing. CPU path."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastdrop
from reference import (FLOAT_DTYPES, HALF_DTYPES, Z_BOUND, binomial_z, nonzero_randn, reference_dropout,
                       reference_mask, scaled, ulp_distance)

BAD_P = [-0.1, 1.1, float("nan"), -1e-12, 1 + 1e-12]


def torch_error(fn):
    try:
        fn()
    except (ValueError, RuntimeError) as e:
        return e
    raise AssertionError("PyTorch did not raise")


# ---------------------------------------------------------------------------------------
# Invalid p, identity cases, p == 1.


@pytest.mark.parametrize("p", BAD_P)
@pytest.mark.parametrize("training", [True, False])
def test_invalid_p_message_equals_torch(p, training):
    x = torch.ones(3)
    expected = torch_error(lambda: F.dropout(x, p, training))
    for inplace in (False, True):
        with pytest.raises(ValueError) as info:
            fastdrop.dropout(x, p, training, inplace=inplace)
        assert str(info.value) == str(expected)
        # PyTorch raises RuntimeError for NaN (from ATen): fastdrop's error is also one.
        assert isinstance(info.value, type(expected))


@pytest.mark.parametrize("p", [-0.1, 1.1, -1e-12, 1 + 1e-12])
def test_invalid_p_module_message_equals_torch(p):
    expected = str(torch_error(lambda: torch.nn.Dropout(p)))
    with pytest.raises(ValueError) as info:
        fastdrop.Dropout(p)
    assert str(info.value) == expected


def test_nan_p_module_raises():
    # nn.Dropout(nan) is accepted by PyTorch and fails at the first forward; fastdrop refuses at
    # construction with F.dropout's text.
    expected = str(torch_error(lambda: F.dropout(torch.ones(3), float("nan"))))
    with pytest.raises(ValueError) as info:
        fastdrop.Dropout(float("nan"))
    assert str(info.value) == expected


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
def test_identity_returns_input_object(dtype, inplace):
    x = torch.randn(5, 7).to(dtype)
    before = x.clone()
    for kwargs in (dict(p=0.0), dict(p=0), dict(p=0.5, training=False), dict(p=1.0, training=False)):
        assert F.dropout(x, inplace=inplace, **kwargs) is x
        assert fastdrop.dropout(x, inplace=inplace, **kwargs) is x
        assert fastdrop.dropout(x, inplace=inplace, seed=3, **kwargs) is x
    for kwargs in (dict(keep_prob=1.0), dict(keep_prob=0.5, training=False)):
        assert fastdrop.dropout(x, inplace=inplace, **kwargs) is x
        assert fastdrop.dropout(x, inplace=inplace, seed=3, **kwargs) is x
    assert torch.equal(x, before)


def test_identity_with_requires_grad():
    x = torch.randn(4, requires_grad=True)
    assert fastdrop.dropout(x, 0.0) is x
    assert fastdrop.dropout(x, 0.3, training=False) is x


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
def test_p1_zeros_even_for_inf_nan(dtype, inplace):
    x = torch.tensor([1.0, -2.0, float("inf"), float("-inf"), float("nan"), 0.0, -0.0]).to(dtype)
    y = fastdrop.dropout(x, 1.0, inplace=inplace)
    assert y.dtype == dtype and y.shape == x.shape
    assert not y.isnan().any()
    assert (y == 0).all()
    if inplace:
        assert y is x


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_p1_zero_grads_no_nan(dtype):
    x = torch.tensor([1.0, float("inf"), float("-inf"), float("nan"), 3.0]).to(dtype).requires_grad_()
    y = fastdrop.dropout(x, 1.0)
    grad = torch.tensor([1.0, 2.0, float("nan"), float("inf"), -1.0]).to(dtype)
    y.backward(grad)
    assert not x.grad.isnan().any()
    assert (x.grad == 0).all()


@pytest.mark.parametrize("p", [True, False, 1, 0, np.float32(0.25), np.float64(0.25), torch.tensor(0.25)])
def test_p_types_like_torch(p):
    # PyTorch's parser takes bools, ints, numpy scalars and 0-dim tensors as numbers.
    x = torch.ones(1000)
    F.dropout(x, p)  # accepted by PyTorch
    assert torch.equal(fastdrop.dropout(x, p, seed=2), fastdrop.dropout(x, float(p), seed=2))
    torch.manual_seed(4)
    a = fastdrop.Dropout(p)(x)
    torch.manual_seed(4)
    assert torch.equal(a, fastdrop.Dropout(float(p))(x))


def test_p1_keep_prob_zero():
    x = torch.full((9,), float("inf"))
    assert (fastdrop.dropout(x, keep_prob=0.0) == 0).all()


# ---------------------------------------------------------------------------------------
# Kept values: exact given the mask, and within 1 ulp of PyTorch's.

P_VALUES = [0.1, 0.3, 1 / 3, 0.5, 0.7, 0.9, 0.999]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("p", P_VALUES)
def test_values_exact_given_mask(dtype, p):
    seed, offset = 31337, 5
    x = nonzero_randn((4099,), dtype)
    y = fastdrop.dropout(x, p, seed=seed, offset=offset)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    mask = reference_mask(x.shape, p, seed, offset)
    assert torch.equal(y != 0, mask)
    assert torch.equal(y, reference_dropout(x, p, seed, offset))
    # The kept values are x * (1/(1-p)) rounded once from float32 (half types) or exactly
    # in x's dtype: spelled out once more here.
    if dtype in HALF_DTYPES:
        expect = (x.float() * torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)).to(dtype)
    else:
        expect = x * torch.tensor(1.0 / (1.0 - p), dtype=dtype)
    assert torch.equal(y[mask], expect[mask])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("p", P_VALUES)
def test_kept_values_within_one_ulp_of_torch(dtype, p):
    x = (nonzero_randn((20000,), torch.float64) * 100).to(dtype)
    torch.manual_seed(0)
    yt = F.dropout(x, p)
    yf = fastdrop.dropout(x, p, seed=8)
    kept_t, kept_f = yt != 0, yf != 0
    assert kept_t.any() and kept_f.any()
    # PyTorch's kept values are within 1 ulp of the formula (on CPU it scales by 1/(1-p)
    # rounded to x's dtype, computed in that dtype) ...
    assert ulp_distance(yt[kept_t], scaled(x, p)[kept_t]).max() <= 1
    # ... and fastdrop's kept values are the formula exactly, so where both keep an element
    # they are within 1 ulp of each other.
    assert torch.equal(yf[kept_f], scaled(x, p)[kept_f])
    both = kept_t & kept_f
    if both.any():
        assert ulp_distance(yt[both], yf[both]).max() <= 1


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dropped_inf_nan_become_zero(dtype):
    # Kept inf/NaN stay inf/NaN (x * scale); dropped ones are 0, not NaN.
    seed, p = 5, 0.5
    x = torch.tensor([float("inf"), float("-inf"), float("nan")] * 40).to(dtype)
    y = fastdrop.dropout(x, p, seed=seed)
    mask = reference_mask(x.shape, p, seed)
    assert 0 < int(mask.sum()) < x.numel()
    assert (y[~mask] == 0).all()
    assert torch.equal(y[mask].isinf(), x[mask].isinf())
    assert torch.equal(y[mask].isnan(), x[mask].isnan())


# ---------------------------------------------------------------------------------------
# Keep rate against the binomial distribution, and against PyTorch.


@pytest.mark.parametrize("p", [0.01, 0.2, 0.5, 0.8, 0.99])
@pytest.mark.parametrize("seed", [0, 1, 2**64 - 1])
def test_keep_rate_binomial(p, seed):
    n = 1 << 17
    y = fastdrop.dropout(torch.ones(n), p, seed=seed)
    kept = int((y != 0).sum())
    assert abs(binomial_z(kept, n, 1 - p)) < Z_BOUND
    # Every kept value is exactly the scale; the mean is kept / (n (1 - p)).
    assert torch.equal(y[y != 0], torch.full((kept,), 1.0 / (1.0 - p)))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_keep_rate_matches_torch(p):
    # Two-sample z: fastdrop's and PyTorch's keep counts differ by no more than sampling noise.
    n = 1 << 17
    torch.manual_seed(123)
    k_torch = int((F.dropout(torch.ones(n), p) != 0).sum())
    k_fast = int((fastdrop.dropout(torch.ones(n), p, seed=123) != 0).sum())
    assert abs(k_fast - k_torch) / math.sqrt(2 * n * p * (1 - p)) < Z_BOUND
    assert abs(binomial_z(k_torch, n, 1 - p)) < Z_BOUND


def test_mean_preserved():
    # PyTorch's own check (mean within 0.05 at p=0.2), with the bound derived instead:
    # Var(y_i) = x_i^2 p / (1 - p).
    p, n = 0.2, 1 << 16
    x = nonzero_randn((n,), torch.float64)
    y = fastdrop.dropout(x, p, seed=99)
    sd = math.sqrt(float((x * x).sum()) * p / (1 - p)) / n
    assert abs(float(y.mean() - x.mean())) < Z_BOUND * sd


# ---------------------------------------------------------------------------------------
# keep_prob spelling.


@pytest.mark.parametrize("keep_prob", [0.9, 0.5, 0.25])
def test_keep_prob_equals_p(keep_prob):
    x = torch.randn(2049)
    a = fastdrop.dropout(x, keep_prob=keep_prob, seed=17)
    b = fastdrop.dropout(x, 1 - keep_prob, seed=17)
    assert torch.equal(a, b)
    mod = fastdrop.Dropout(keep_prob=keep_prob)
    assert mod.p == float(f"{1 - keep_prob:.15g}")  # 1 - keep_prob to 15 digits: 0.1, not 0.09999999999999998
    torch.manual_seed(5)
    c = mod(x)
    torch.manual_seed(5)
    d = fastdrop.Dropout(1 - keep_prob)(x)
    assert torch.equal(c, d)


def test_keep_prob_reprs_as_its_p():
    assert repr(fastdrop.Dropout(keep_prob=0.9)) == "Dropout(p=0.1, inplace=False)"
    assert repr(fastdrop.Dropout2d(keep_prob=0.7)) == "Dropout2d(p=0.3, inplace=False)"


def test_keep_prob_09_mask_is_p_01_mask():
    x = torch.ones(4096)
    y = fastdrop.dropout(x, keep_prob=0.9, seed=3)
    assert torch.equal(y != 0, fastdrop.dropout_mask(x.shape, 0.1, seed=3))


@pytest.mark.parametrize("p", [0.5, 0.1, 0.0])
def test_keep_prob_and_p_conflict(p):
    with pytest.raises(ValueError):
        fastdrop.dropout(torch.ones(3), p, keep_prob=0.9)
    with pytest.raises(ValueError):
        fastdrop.dropout(torch.ones(3), p=p, keep_prob=0.9, training=False)
    with pytest.raises(ValueError):
        fastdrop.Dropout(p, keep_prob=0.9)
    with pytest.raises(ValueError):
        fastdrop.Dropout(p=p, keep_prob=0.9)


@pytest.mark.parametrize("keep_prob", [-0.1, 1.1, float("nan")])
def test_keep_prob_invalid(keep_prob):
    with pytest.raises(ValueError):
        fastdrop.dropout(torch.ones(3), keep_prob=keep_prob)
    with pytest.raises(ValueError):
        fastdrop.Dropout(keep_prob=keep_prob)


def test_default_p_is_half():
    x = torch.randn(1000)
    assert torch.equal(fastdrop.dropout(x, seed=4), fastdrop.dropout(x, 0.5, seed=4))
    assert fastdrop.Dropout().p == torch.nn.Dropout().p == 0.5


# ---------------------------------------------------------------------------------------
# inplace.


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_inplace_writes_into_input(dtype):
    x = nonzero_randn((33, 17), dtype)
    expect = reference_dropout(x, 0.4, 6, 2)
    y = fastdrop.dropout(x, 0.4, inplace=True, seed=6, offset=2)
    assert y is x
    assert torch.equal(x, expect)


@pytest.mark.parametrize("make", ["transposed", "sliced", "channels_last"])
def test_inplace_on_views(make):
    base = nonzero_randn((4, 6, 5, 3), torch.float32)
    view = {"transposed": lambda t: t.transpose(1, 3),
            "sliced": lambda t: t[:, ::2, 1:],
            "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last)}[make](base.clone())
    expect = reference_dropout(view.contiguous(), 0.5, 12)
    owner = view._base if view._base is not None else view
    untouched = owner.clone()
    y = fastdrop.dropout(view, 0.5, inplace=True, seed=12)
    assert y is view
    assert torch.equal(view, expect)
    if make == "sliced":  # elements outside the view are not written
        written = torch.zeros_like(owner, dtype=torch.bool)
        written[:, ::2, 1:] = True
        assert torch.equal(owner[~written], untouched[~written])


@pytest.mark.parametrize("make", [lambda x: x, lambda x: x[1:]])
def test_inplace_leaf_requires_grad_raises_like_torch(make):
    x = torch.randn(5, requires_grad=True)
    expected = str(torch_error(lambda: F.dropout(make(x), 0.5, inplace=True)))
    before = x.detach().clone()
    with pytest.raises(RuntimeError) as info:
        fastdrop.dropout(make(x), 0.5, inplace=True)
    assert str(info.value) == expected
    assert torch.equal(x.detach(), before)  # refused before writing


def test_inplace_under_no_grad_returns_input():
    x, x_torch = torch.ones(1000, requires_grad=True), torch.ones(1000, requires_grad=True)
    with torch.no_grad():
        assert F.dropout(x_torch, 0.5, inplace=True) is x_torch
        y = fastdrop.dropout(x, 0.5, inplace=True, seed=1)
    assert y is x
    assert torch.equal(x.detach() != 0, reference_mask(x.shape, 0.5, 1))


def test_inplace_overlapping_raises_like_torch():
    x = torch.randn(3, 1).expand(3, 5)
    expected = str(torch_error(lambda: F.dropout(x, 0.5, inplace=True)))
    with pytest.raises(RuntimeError) as info:
        fastdrop.dropout(x, 0.5, inplace=True)
    assert str(info.value) == expected


# ---------------------------------------------------------------------------------------
# Layouts: strides follow PyTorch, values follow the logical index.

LAYOUTS = {
    "contiguous": lambda: nonzero_randn((17, 33), torch.float32),
    "transposed": lambda: nonzero_randn((17, 33), torch.float32).t(),
    "sliced": lambda: nonzero_randn((17, 33), torch.float32)[:, ::2],
    "offset_view": lambda: nonzero_randn((1025,), torch.float32)[3:],
    "channels_last": lambda: nonzero_randn((2, 3, 5, 7), torch.float32).contiguous(
        memory_format=torch.channels_last),
    "channels_last_3d": lambda: nonzero_randn((2, 3, 4, 5, 3), torch.float32).contiguous(
        memory_format=torch.channels_last_3d),
    "permuted_3d": lambda: nonzero_randn((4, 5, 6), torch.float32).permute(2, 0, 1),
    "permuted_5d": lambda: nonzero_randn((2, 3, 4, 5, 6), torch.float32).permute(4, 2, 0, 3, 1),
    "sliced_5d": lambda: nonzero_randn((2, 3, 4, 5, 6), torch.float32)[:, ::2, :, ::2, 1:],
    "expanded": lambda: nonzero_randn((3, 1), torch.float32).expand(3, 5),
    "size1_dims": lambda: nonzero_randn((1, 7, 1, 3), torch.float32).transpose(0, 2),
    "strided_2d": lambda: nonzero_randn((6, 8), torch.float32)[::2, 1::3],
}


def significant_strides(t):
    """Strides of the dims of size > 1 (a size-1 dim's stride never addresses memory)."""
    return tuple(st if sz > 1 else None for sz, st in zip(t.shape, t.stride()))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layouts(layout, dtype):
    x = LAYOUTS[layout]().to(dtype)
    seed, p = 2**40 + 3, 0.5
    y = fastdrop.dropout(x, p, seed=seed)
    assert y.shape == x.shape
    assert significant_strides(y) == significant_strides(F.dropout(x, p))
    assert torch.equal(y, fastdrop.dropout(x.contiguous(), p, seed=seed))
    assert torch.equal(y, reference_dropout(x, p, seed))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_grad(layout):
    seed, p = 9, 0.3
    x = LAYOUTS[layout]().to(torch.float64).requires_grad_()
    g = nonzero_randn(x.shape, torch.float64)
    fastdrop.dropout(x, p, seed=seed).backward(g)
    assert torch.equal(x.grad, reference_dropout(g, p, seed))


# ---------------------------------------------------------------------------------------
# Empty and 0-dim tensors.


@pytest.mark.parametrize("shape", [(0,), (3, 0, 2), (0, 4)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_empty(shape, dtype):
    x = torch.empty(shape, dtype=dtype)
    for kwargs in (dict(), dict(seed=1), dict(inplace=True)):
        y = fastdrop.dropout(x, 0.5, **kwargs)
        ref = F.dropout(x, 0.5)
        assert y.shape == ref.shape and y.dtype == ref.dtype and y.stride() == ref.stride()
    x = torch.empty(shape, dtype=dtype, requires_grad=True)
    y = fastdrop.dropout(x, 0.5)
    if y.requires_grad:
        y.sum().backward()
        assert x.grad is None or x.grad.shape == x.shape


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_zero_dim(dtype):
    x = torch.tensor(1.5, dtype=dtype)
    outs = []
    for seed in range(64):
        y = fastdrop.dropout(x, 0.5, seed=seed)
        assert y.shape == () and y.dtype == dtype
        assert torch.equal(y, reference_dropout(x, 0.5, seed))
        outs.append(float(y))
    assert set(outs) == {0.0, 3.0}
    xg = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    fastdrop.dropout(xg, 0.5, seed=1).backward()
    assert xg.grad.shape == () and float(xg.grad) == 2.0 * float(reference_mask((), 0.5, 1))


# ---------------------------------------------------------------------------------------
# Seeds, offsets and the generator.


def test_same_seed_same_output():
    x = torch.randn(3, 1000)
    assert torch.equal(fastdrop.dropout(x, 0.5, seed=5, offset=7), fastdrop.dropout(x, 0.5, seed=5, offset=7))


@pytest.mark.parametrize("other", [dict(seed=6, offset=7), dict(seed=5, offset=8), dict(seed=5, offset=0)])
def test_different_seed_or_offset_different_mask(other):
    x = torch.ones(3, 1000)
    assert not torch.equal(fastdrop.dropout(x, 0.5, seed=5, offset=7), fastdrop.dropout(x, 0.5, **other))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_mask_independent_of_dtype(dtype):
    x = torch.ones(1023)
    assert torch.equal(fastdrop.dropout(x, 0.3, seed=1) != 0, fastdrop.dropout(x.to(dtype), 0.3, seed=1) != 0)


def test_manual_seed_reproduces_and_calls_differ():
    x = torch.ones(4096)
    torch.manual_seed(2024)
    a1, a2 = fastdrop.dropout(x, 0.5), fastdrop.dropout(x, 0.5)
    torch.manual_seed(2024)
    b1, b2 = fastdrop.dropout(x, 0.5), fastdrop.dropout(x, 0.5)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)
    torch.manual_seed(2025)
    assert not torch.equal(fastdrop.dropout(x, 0.5), a1)


def test_generator_argument():
    x = torch.ones(4096)
    g = torch.Generator().manual_seed(11)
    a1, a2 = fastdrop.dropout(x, 0.5, generator=g), fastdrop.dropout(x, 0.5, generator=g)
    g.manual_seed(11)
    torch.manual_seed(0)  # the global generator plays no part
    b1 = fastdrop.dropout(x, 0.5, generator=g)
    assert torch.equal(a1, b1)
    assert not torch.equal(a1, a2)
    # The generator is the only source: the global RNG state is untouched.
    state = torch.get_rng_state()
    fastdrop.dropout(x, 0.5, generator=g)
    assert torch.equal(torch.get_rng_state(), state)


def test_no_seed_keep_rate():
    n, p = 1 << 17, 0.3
    torch.manual_seed(0)
    kept = int((fastdrop.dropout(torch.ones(n), p) != 0).sum())
    assert abs(binomial_z(kept, n, 1 - p)) < Z_BOUND


def test_offset_needs_seed():
    with pytest.raises(ValueError):
        fastdrop.dropout(torch.ones(3), 0.5, offset=4)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(seed=-1), ValueError), (dict(seed=2**64), ValueError), (dict(seed=1.0), TypeError),
    (dict(seed=1, offset=-1), ValueError), (dict(seed=1, offset=2**64 - 2), ValueError),
])
def test_bad_seed_offset(kwargs, exc):
    with pytest.raises(exc):
        fastdrop.dropout(torch.ones(3), 0.5, **kwargs)


def test_offset_at_stream_end():
    x = torch.ones(3)
    y = fastdrop.dropout(x, 0.5, seed=1, offset=2**64 - 3)
    assert torch.equal(y != 0, reference_mask((3,), 0.5, 1, 2**64 - 3))


# ---------------------------------------------------------------------------------------
# Input checks and backends.


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_non_float_input_raises(dtype):
    x = torch.zeros(4, dtype=dtype)
    with pytest.raises(TypeError, match="floating-point"):
        fastdrop.dropout(x, 0.5)


def test_non_tensor_input_raises():
    with pytest.raises(TypeError):
        fastdrop.dropout([1.0, 2.0], 0.5)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        fastdrop.dropout(torch.ones(3), 0.5, backend="gpu")


def test_auto_is_cpu_on_cpu_tensors():
    x = torch.randn(5000)
    assert torch.equal(fastdrop.dropout(x, 0.5, seed=1), fastdrop.dropout(x, 0.5, seed=1, backend="cpu"))


def test_meta_tensor_shape_and_strides():
    x = torch.empty(4, 5, device="meta").t()
    y = fastdrop.dropout(x, 0.5)
    ref = F.dropout(x, 0.5)
    assert y.device.type == "meta" and y.shape == ref.shape and y.stride() == ref.stride()


def test_large_cpu_tensor_chunks():
    # More than one CPU chunk (and a length that is not a multiple of it or of 4).
    n = 3 * (1 << 16) + 5
    x = torch.ones(n)
    y = fastdrop.dropout(x, 0.5, seed=77, offset=3)
    assert torch.equal(y != 0, reference_mask((n,), 0.5, 77, 3))


@pytest.mark.parametrize("noise_shape", [(4, 3, 1, 1), (1, 3, 5, 1), (4, 1, 1, 5)])
def test_noise_shape_keyword_shares_bits_along_size_one_dims(noise_shape):
    x = nonzero_randn((4, 3, 5, 5), torch.float32)
    y = fastdrop.dropout(x, 0.5, noise_shape=noise_shape, seed=21, offset=2)
    assert torch.equal(y, fastdrop.noise_dropout(x, 0.5, noise_shape, seed=21, offset=2))
    mask = fastdrop.dropout_mask(noise_shape, 0.5, seed=21, offset=2).expand(x.shape)
    assert torch.equal(y, torch.where(mask, x * torch.tensor(2.0), 0.0))


@pytest.mark.parametrize("grad_mode", ["no_grad", "no_requires_grad"])
def test_inplace_outside_autograd_bumps_the_version(grad_mode):
    w = torch.randn(1000, requires_grad=True)
    x = w.exp()  # saved by exp's backward: writing into it must invalidate that backward
    version = x._version
    if grad_mode == "no_grad":
        with torch.no_grad():
            fastdrop.dropout(x, 0.5, inplace=True, seed=1)
    else:
        fastdrop.dropout(x.detach(), 0.5, inplace=True, seed=1)
    assert x._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        x.sum().backward()


@pytest.mark.parametrize("call", [
    lambda t: fastdrop.dropout1d(t.view(4, 5, 5), 0.5, inplace=True, seed=1),
    lambda t: fastdrop.alpha_dropout(t, 0.5, True, inplace=True, seed=1),
    lambda t: fastdrop.dropout(t, 0.5, inplace=True, noise_shape=(4, 1, 1, 1), seed=1),
], ids=["dropout1d", "alpha_dropout", "noise_shape"])
def test_family_inplace_on_a_leaf_is_refused_before_writing(call):
    leaf = torch.ones(4, 5, 1, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        call(leaf)
    assert torch.equal(leaf.detach(), torch.ones(4, 5, 1, 5))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cpu_path_under_inference_mode(dtype):
    x = nonzero_randn((3, 70_001), dtype)  # several CPU tasks
    with torch.inference_mode():
        y = fastdrop.dropout(x, 0.3, seed=4)
        z = fastdrop.alpha_dropout(x, 0.3, True, seed=4)
    assert torch.equal(y, fastdrop.dropout(x, 0.3, seed=4))
    assert torch.equal(z, fastdrop.alpha_dropout(x, 0.3, True, seed=4))


def test_noise_dropout_module_defaults_to_one_bit_per_element():
    x = torch.ones(64, 64)
    torch.manual_seed(0)
    y = fastdrop.NoiseDropout(0.5)(x)
    torch.manual_seed(0)
    assert torch.equal(y, fastdrop.dropout(x, 0.5))
    assert 0 < (y == 0).sum() < x.numel()
