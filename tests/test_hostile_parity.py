"""Hostile input where fastdrop follows PyTorch 2.13 exactly: each test says what PyTorch does."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastdrop

try:
    from .test_hostile import assert_raises_like, assert_same, expected_dropout, torch_error
except ImportError:
    from test_hostile import assert_raises_like, assert_same, expected_dropout, torch_error

triton_ok = pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
                               reason="needs a GPU or TRITON_INTERPRET=1")


# p == 1 on the Triton backend: zeros, as PyTorch (the scale reaches the kernel as float64 bits).
@triton_ok
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_p_one_on_triton_backend_gives_zeros(dtype):
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter's tensors are on the CPU
    x = torch.tensor([math.nan, math.inf, -1.0, 2.0] * 8, dtype=dtype, device=device)
    y = fastdrop.dropout(x, 1.0, seed=7, backend="triton")
    assert torch.equal(y, torch.zeros_like(x))


# NaN p: PyTorch raises RuntimeError from ATen; fastdrop raises an error that is both a
# RuntimeError and a ValueError, with PyTorch's text.
@pytest.mark.parametrize("training", [True, False])
def test_nan_p_raises_runtime_error_like_torch(training):
    x = torch.ones(4)
    err = torch_error(lambda: F.dropout(x, math.nan, training))
    assert isinstance(err, RuntimeError)
    assert_raises_like(err, lambda: fastdrop.dropout(x, math.nan, training, seed=1))


# bool p: PyTorch accepts True (p = 1: zeros), False (p = 0: the input itself) and numpy bools.
@pytest.mark.parametrize("p", [True, False, np.bool_(True)], ids=repr)
def test_bool_p_accepted_like_torch(p):
    x = torch.randn(16)
    ref = F.dropout(x, p)
    y = fastdrop.dropout(x, p, seed=1)
    assert torch.equal(y, ref)
    assert (y is x) == (ref is x)
    fastdrop.Dropout(p)


# A 0-dim tensor p without grad is accepted as a number, as PyTorch's argument parser does.
@pytest.mark.parametrize("p", [torch.tensor(0.3), torch.tensor(0.3, dtype=torch.float64), torch.tensor(0),
                               torch.tensor(1.0)], ids=repr)
def test_zero_dim_tensor_p_accepted_like_torch(p):
    x = torch.randn(64)
    F.dropout(x, p)
    y = fastdrop.dropout(x, p, seed=11)
    assert_same(y, expected_dropout(x, float(p), 11))


# p of a wrong type (str, None, complex, list, tensor with grad, 1-d tensor): TypeError, as PyTorch.
@pytest.mark.parametrize(
    "p", ["0.5", None, 0.5 + 0j, [0.5], torch.tensor(0.3, requires_grad=True), torch.tensor([0.3])], ids=repr)
def test_p_of_wrong_type_raises_type_error_like_torch(p):
    x = torch.ones(4)
    err = torch_error(lambda: F.dropout(x, p))
    assert isinstance(err, TypeError)
    with pytest.raises(TypeError):
        fastdrop.dropout(x, p, seed=1)


# A meta tensor that requires grad gives an output that requires grad, as PyTorch.
def test_meta_output_keeps_autograd():
    x = torch.empty(3, 5, device="meta", requires_grad=True)
    assert F.dropout(x, 0.5).requires_grad
    y = fastdrop.dropout(x, 0.5, seed=1)
    assert y.requires_grad and y.grad_fn is not None


# A meta tensor draws no seed: a shape-only pass leaves the CPU generator alone, as PyTorch.
def test_meta_input_leaves_cpu_rng_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    F.dropout(torch.empty(8, device="meta"), 0.5)
    assert torch.equal(torch.get_rng_state(), state)
    fastdrop.dropout(torch.empty(8, device="meta"), 0.5)
    assert torch.equal(torch.get_rng_state(), state)


# inplace=True on a leaf that requires grad (or a view of one) is refused before anything is
# written, with PyTorch's text.
@pytest.mark.parametrize("view", [False, True])
def test_inplace_on_leaf_requiring_grad_refused_before_writing(view):
    leaf = torch.ones(8, requires_grad=True)
    target = leaf[:4] if view else leaf
    err = torch_error(lambda: F.dropout(leaf[:4] if view else leaf, 0.5, inplace=True))
    assert torch.equal(leaf.detach(), torch.ones(8))
    assert_raises_like(err, lambda: fastdrop.dropout(target, 0.5, inplace=True, seed=1))
    assert torch.equal(leaf.detach(), torch.ones(8))


# Arguments are checked whatever the batch size: an empty input does not skip them.
@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(seed=1, offset=-5), dict(seed=1.5),
                                    dict(seed=1, backend="bogus")], ids=repr)
def test_empty_input_still_checks_arguments(kwargs):
    with pytest.raises((TypeError, ValueError)):
        fastdrop.dropout(torch.ones(4), 0.5, **kwargs)
    with pytest.raises((TypeError, ValueError)):
        fastdrop.dropout(torch.ones(0, 4), 0.5, **kwargs)


# A generator that is not a torch.Generator is a TypeError naming the argument.
@pytest.mark.parametrize("gen", [5, "cpu", np.random.default_rng(0)], ids=lambda g: type(g).__name__)
def test_generator_of_wrong_type_raises_type_error(gen):
    with pytest.raises(TypeError, match="generator"):
        fastdrop.dropout(torch.ones(4), 0.5, generator=gen)


# dropout_mask refuses negative dimensions, as torch.empty does.
@pytest.mark.parametrize("shape", [(-1,), (-1, 4), (3, -1)], ids=repr)
def test_dropout_mask_refuses_negative_dims(shape):
    torch_error(lambda: torch.empty(shape))
    with pytest.raises((RuntimeError, ValueError)):
        fastdrop.dropout_mask(shape, 0.5, seed=1)


# training must be a bool, as PyTorch's parser requires.
@pytest.mark.parametrize("training", [None, "yes"], ids=repr)
def test_training_must_be_bool_like_torch(training):
    x = torch.ones(4)
    err = torch_error(lambda: F.dropout(x, 0.5, training=training))
    with pytest.raises(type(err)):
        fastdrop.dropout(x, 0.5, training=training, seed=1)
