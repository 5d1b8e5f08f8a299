"""Counting the random dropout calls of a forward pass: PyTorch's, fastdrop's, and the dropout
fused in scaled_dot_product_attention.

PyTorch's are counted at the ATen level (a TorchDispatchMode), so calls nested in other torch
functions (nn.MultiheadAttention's) are seen too: each of its dropouts draws its noise with one
``bernoulli`` (CPU; also timm's drop_path and torchvision's stochastic_depth) or one fused
dropout op (CUDA). Those drawn inside scaled_dot_product_attention are counted apart.
fastdrop's are counted there too: under a TorchDispatchMode every call of the family is the
``fastdrop::dropout`` operator.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from fastdrop.backends import load_native

load_native()  # registers fastdrop::dropout

TORCH_RANDOM_OPS = {
    torch.ops.aten.bernoulli_.float, torch.ops.aten.bernoulli_.Tensor, torch.ops.aten.bernoulli.default,
    torch.ops.aten.bernoulli.p, torch.ops.aten.native_dropout.default, torch.ops.aten._fused_dropout.default,
}


class DropoutCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = Counter()  # "torch", "fastdrop", "sdpa" (calls with dropout_p > 0)
        self._sdpa = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in TORCH_RANDOM_OPS:
            if not self._sdpa:
                self.calls["torch"] += 1
        elif func is torch.ops.fastdrop.dropout.default:
            self.calls["fastdrop"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def share(self) -> str:
        """fastdrop calls / all dropout calls, SDPA's fused dropout apart."""
        c = self.calls
        return f"{c['fastdrop']}/{c['fastdrop'] + c['torch']}" + (f" (+{c['sdpa']} in SDPA)" if c["sdpa"] else "")


@contextlib.contextmanager
def count_dropout():
    """``with count_dropout() as c: model(x)``; then ``c.calls``."""
    counter = DropoutCount()
    sdpa = F.scaled_dot_product_attention

    def counted_sdpa(*args, **kwargs):
        dropout_p = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
        if dropout_p > 0:
            counter.calls["sdpa"] += 1
        counter._sdpa += 1
        try:
            return sdpa(*args, **kwargs)
        finally:
            counter._sdpa -= 1

    with pytest.MonkeyPatch.context() as mp, counter:
        mp.setattr(F, "scaled_dot_product_attention", counted_sdpa)
        yield counter
