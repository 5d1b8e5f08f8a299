"""nn.Module forms: drop-ins for torch.nn's dropout modules (and timm's and torchvision's
stochastic depth); ``fastdrop.migrate`` swaps them into a model.

Each subclasses its torch.nn counterpart (same ``__constants__``, ``extra_repr``, p check),
so code that looks for ``nn.Dropout`` instances still finds them. ``keep_prob`` is the
TensorFlow spelling of ``1 - p``. Under ``torch.jit.script`` each forward runs the
registered operator (``ops.scripted``), with a seed drawn per run.
"""

from __future__ import annotations

import torch
from torch import nn

from typing import List, Optional

from . import contract
from .backends import load_native
from . import functional as F
from ._args import P_DEFAULT, broadcast_noise, resolve_p
from .variants import alpha_constants, scale_of, shared_dims


def scripted(x: torch.Tensor, p: float, training: bool, inplace: bool, kind: str, scale_by_keep: bool = True,
             noise_shape: Optional[List[Optional[int]]] = None) -> torch.Tensor:
    """A fastdrop module's forward in TorchScript: the table's mask and scale, then the operator,
    which draws a seed per run. The module checked p when it was built."""
    if not training or p == 0.0 or x.numel() == 0:
        return x
    shared = shared_dims(kind, x.dim(), p)
    if noise_shape is not None:
        noise = broadcast_noise(noise_shape, x.shape)
        shared = []
        for d in range(len(noise)):
            if noise[d] == 1:
                shared.append(d)
    scale = scale_of(p, kind, scale_by_keep)
    affine: Optional[List[float]] = None
    if (kind == "alpha_dropout" or kind == "feature_alpha_dropout") and p < 1.0:
        a, add, drop = alpha_constants(p, x.dtype)
        scale = a
        affine = [add, drop]
    y = torch.ops.fastdrop.dropout(x, p, shared, scale, affine)
    if inplace:
        return x.copy_(y)
    return y


class _Scriptable:
    def __prepare_scriptable__(self):
        # torch.jit.script compiles forward's call of the operator: it must be loaded by then.
        load_native()
        return self


class Dropout(_Scriptable, nn.Dropout):
    """Drop-in for ``torch.nn.Dropout``."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return scripted(input, self.p, self.training, self.inplace, "dropout")
        return F.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(_Scriptable, nn.Dropout1d):
    """Drop-in for ``torch.nn.Dropout1d``: zeroes whole channels of (N, C, L) or (C, L)."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return scripted(input, self.p, self.training, self.inplace, "dropout1d")
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(_Scriptable, nn.Dropout2d):
    """Drop-in for ``torch.nn.Dropout2d``: zeroes whole channels of (N, C, H, W)."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return scripted(input, self.p, self.training, self.inplace, "dropout2d")
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(_Scriptable, nn.Dropout3d):
    """Drop-in for ``torch.nn.Dropout3d``: zeroes whole channels of (N, C, D, H, W)."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return scripted(input, self.p, self.training, self.inplace, "dropout3d")
        return F.dropout3d(input, self.p, self.training, self.inplace)


class AlphaDropout(_Scriptable, nn.AlphaDropout):
    """Drop-in for ``torch.nn.AlphaDropout``. Like it, ignores ``inplace`` in forward."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return scripted(input, self.p, self.training, False, "alpha_dropout")
        return F.alpha_dropout(input, self.p, self.training)


class FeatureAlphaDropout(_Scriptable, nn.FeatureAlphaDropout):
    """Drop-in for ``torch.nn.FeatureAlphaDropout``. Like it, ignores ``inplace`` in forward."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return scripted(input, self.p, self.training, False, "feature_alpha_dropout")
        return F.feature_alpha_dropout(input, self.p, self.training)


class DropPath(_Scriptable, nn.Module):
    """Drop-in for timm's ``DropPath`` (stochastic depth): drops whole samples of a residual branch."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True, *, keep_prob: float | None = None):
        super().__init__()
        if keep_prob is not None:
            if drop_prob != 0.0:
                raise ValueError(f"give drop_prob or keep_prob, not both (got drop_prob={drop_prob}, "
                                 f"keep_prob={keep_prob})")
            drop_prob = resolve_p(P_DEFAULT, keep_prob, "DropPath")
        else:
            contract.check_p(drop_prob, name="drop_prob", fn="DropPath")  # when built, as nn.Dropout checks p
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        if torch.jit.is_scripting():
            return scripted(x, self.drop_prob, self.training, False, "drop_path", self.scale_by_keep)
        return F.drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class NoiseDropout(_Scriptable, nn.Module):
    """Dropout with one keep bit per element of ``noise_shape`` (see ``fastdrop.noise_dropout``).

    ``NoiseDropout(0.1, noise_shape=(None, 1, None))`` shares one mask along dim 1 of a
    (B, L, D) input; None entries take the input's size. Without ``noise_shape``, one bit
    per element (plain dropout).
    """

    __constants__ = ["p", "noise_shape", "inplace"]

    def __init__(self, p: float = P_DEFAULT, noise_shape=None, inplace: bool = False, *,
                 keep_prob: float | None = None):
        super().__init__()
        self.p = resolve_p(p, keep_prob)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.inplace = inplace

    def forward(self, input):
        if torch.jit.is_scripting():
            return scripted(input, self.p, self.training, self.inplace, "dropout", True, self.noise_shape)
        return F.dropout(input, self.p, self.training, self.inplace, noise_shape=self.noise_shape)

    def extra_repr(self) -> str:
        return f"p={self.p}, noise_shape={self.noise_shape}, inplace={self.inplace}"


class StochasticDepth(_Scriptable, nn.Module):
    """Drop-in for torchvision's ``ops.StochasticDepth``: ``mode="row"`` drops whole samples
    (one keep bit per sample, as ``DropPath``), ``mode="batch"`` the whole input (one bit).

    Kept inputs are scaled by 1/(1-p); ``p == 1`` gives zeros. ``p`` and ``mode`` are checked
    in forward with torchvision's texts, as torchvision checks them. ``keep_prob`` (= 1 - p)
    may be given instead of ``p``.
    """

    def __init__(self, p: float | None = None, mode: str | None = None, *, keep_prob: float | None = None) -> None:
        super().__init__()
        if keep_prob is not None:
            if p is not None:
                raise ValueError(f"give p or keep_prob, not both (got p={p}, keep_prob={keep_prob})")
            p = resolve_p(P_DEFAULT, keep_prob, "StochasticDepth")
        for name, value in (("p", p), ("mode", mode)):  # required, as in torchvision's signature
            if value is None:
                raise TypeError(f"StochasticDepth.__init__() missing 1 required argument: '{name}'"
                                + (" (or keep_prob)" if name == "p" else ""))
        self.p = p
        self.mode = mode

    def forward(self, input):
        if not 0.0 <= self.p <= 1.0:  # torchvision's checks and texts, in its order
            raise ValueError(f"drop probability has to be between 0 and 1, but got {self.p}")
        if self.mode not in ("batch", "row"):
            raise ValueError(f"mode has to be either 'batch' or 'row', but got {self.mode}")
        if torch.jit.is_scripting():
            kind = "drop_path" if self.mode == "row" else "stochastic_depth"
            return scripted(input, self.p, self.training, False, kind)
        return F.stochastic_depth(input, self.p, self.mode, self.training)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, mode={self.mode})"
