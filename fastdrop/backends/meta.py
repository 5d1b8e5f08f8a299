"""The meta backend: tensors with a shape and no values, so nothing to compute."""

import torch


def apply(x, y, seed, offset, threshold, scale, *, noise_shape=None, affine=None):
    return y


def dropout_add(x, bias, residual, seed, offset, threshold, scale):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def fresh(x, seed, offset, threshold, scale, noise_shape, affine):
    return None
