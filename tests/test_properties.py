"""Property: dropout(x) == x * mask * 1/(1-p) and grad_in == grad_out * mask * 1/(1-p),
with the mask from ``fastdrop.dropout_mask``, for any shape, strides, dtype, p, seed, offset.

Hypothesis draws the cases deterministically (derandomize=True): the same examples run
every time. Strides cover transposes, permutations, slices, channels-last and expanded
(stride-0) views. Most examples use the CPU backend; a few go through the Triton kernel.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastdrop

try:
    from .test_hostile import FLOATS, assert_same, expected_dropout
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from test_hostile import FLOATS, assert_same, expected_dropout

U64 = 1 << 64
DENSE = ("contiguous", "transposed", "permuted", "channels_last")
LAYOUTS = DENSE + ("sliced", "expanded")


def make_view(base, layout, shape, perm):
    """A view of ``base`` with logical ``shape`` and the strides of ``layout``."""
    if layout in ("contiguous", "expanded"):
        return base
    if layout == "transposed":
        return base.transpose(-1, -2)
    if layout == "permuted":
        return base.permute(*perm)
    if layout == "channels_last":
        return base  # base was made channels-last
    if layout == "sliced":
        return base[tuple(slice(1, 1 + 2 * s, 2) for s in shape)]
    raise AssertionError(layout)


def base_shape(layout, shape, perm):
    if layout == "transposed":
        return shape[:-2] + (shape[-1], shape[-2])
    if layout == "permuted":
        inv = [perm.index(i) for i in range(len(perm))]
        return tuple(shape[i] for i in inv)
    if layout == "sliced":
        return tuple(2 * s + 2 for s in shape)
    return shape


@st.composite
def cases(draw, max_numel=4096):
    ndim = draw(st.sampled_from([1, 2, 3, 4, 2, 3, 4, 0]))
    shape = list(draw(st.lists(st.integers(1, 13), min_size=ndim, max_size=ndim)))
    if ndim and draw(st.integers(0, 9)) == 0:  # now and then a zero-size dim
        shape[draw(st.integers(0, ndim - 1))] = 0
    while math.prod(shape) > max_numel:
        shape[shape.index(max(shape))] //= 2
    shape = tuple(shape)
    layouts = [lay for lay in LAYOUTS if
               (lay != "transposed" or ndim >= 2) and (lay != "permuted" or ndim >= 2)
               and (lay != "channels_last" or ndim == 4)]
    layout = draw(st.sampled_from(layouts))
    perm = tuple(draw(st.permutations(range(ndim))))
    dtype = draw(st.sampled_from(FLOATS))
    p = draw(st.one_of(st.floats(0.0, 1.0, allow_nan=False),
                       st.sampled_from([0.0, 1.0, 0.5, 0.1, 0.9, 1e-9, 1 - 1e-9])))
    seed = draw(st.one_of(st.integers(0, U64 - 1), st.sampled_from([0, U64 - 1, 1 << 63, (1 << 32) - 1])))
    numel = math.prod(shape)
    last = U64 - numel
    offset = draw(st.one_of(
        st.integers(0, 1 << 20), st.integers(0, last),
        st.sampled_from([last, (1 << 32) - 3, (1 << 34) - 5, (1 << 63) - 1]).map(lambda o: min(o, last))))
    inplace = draw(st.booleans()) and layout != "expanded"
    values_seed = draw(st.integers(0, 2**31 - 1))
    return dict(shape=shape, layout=layout, perm=perm, dtype=dtype, p=p, seed=seed, offset=offset,
                inplace=inplace, values_seed=values_seed)


def build(case, requires_grad=False):
    g = torch.Generator().manual_seed(case["values_seed"])
    shape, layout, perm, dtype = case["shape"], case["layout"], case["perm"], case["dtype"]
    if layout == "expanded":  # size-1 dims broadcast with stride 0
        small = tuple(1 if i % 2 == 0 else s for i, s in enumerate(shape))
        x = torch.randn(small, generator=g).to(dtype).expand(shape)
        return x, x
    base = torch.randn(base_shape(layout, shape, perm), generator=g).to(dtype)
    if layout == "channels_last":
        base = base.to(memory_format=torch.channels_last)
    x = make_view(base, layout, shape, perm)
    assert x.shape == shape
    return base, x


def check(case, backend):
    p, seed, offset, dtype = case["p"], case["seed"], case["offset"], case["dtype"]
    base, x = build(case)
    if case["inplace"]:
        expected = expected_dropout(x.clone(), p, seed, offset)
        outside = base.clone()
        make_view(outside, case["layout"], case["shape"], case["perm"]).fill_(0)
        y = fastdrop.dropout(x, p, seed=seed, offset=offset, inplace=True, backend=backend)
        assert y is x
        assert_same(x, expected, backend)
        # Nothing outside the view was written.
        after = base.clone()
        make_view(after, case["layout"], case["shape"], case["perm"]).fill_(0)
        assert_same(after, outside)
        return

    before = base.clone()
    leaf = x.detach().requires_grad_()
    y = fastdrop.dropout(leaf, p, seed=seed, offset=offset, backend=backend)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert_same(y, expected_dropout(x, p, seed, offset), backend)
    if case["layout"] in DENSE and x.numel() > 1:
        assert y.stride() == x.stride()  # PyTorch keeps a dense input's layout
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(case["values_seed"] + 1)).to(dtype)
    if x.dim() >= 2:
        grad = grad.transpose(0, 1).contiguous().transpose(0, 1)  # a non-contiguous gradient
    grad_before = grad.clone()
    y.backward(grad)
    assert_same(leaf.grad, expected_dropout(grad, p, seed, offset), backend)
    assert_same(base, before)
    assert_same(grad, grad_before)


@settings(derandomize=True, max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_dropout_is_input_times_mask_times_scale_cpu(case):
    check(case, "cpu")


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="needs a GPU or TRITON_INTERPRET=1")
@settings(derandomize=True, max_examples=10, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases(max_numel=600).filter(lambda c: c["p"] < 1.0))  # p == 1: P1_TRITON in test_hostile
def test_dropout_is_input_times_mask_times_scale_triton(case):
    check(case, "triton")


@pytest.mark.parametrize("layout", ["transposed", "permuted", "channels_last", "sliced", "expanded"])
@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"), reason="no triton"))])
def test_each_layout_once(layout, backend):
    # Every layout is hit at least once whatever Hypothesis draws.
    case = dict(shape=(3, 4, 5, 6), layout=layout, perm=(2, 0, 3, 1), dtype=torch.float32, p=0.3,
                seed=(1 << 64) - 3, offset=(1 << 34) - 101, inplace=False, values_seed=5)
    check(case, backend)
    check(dict(case, inplace=layout != "expanded", dtype=torch.float16), backend)
