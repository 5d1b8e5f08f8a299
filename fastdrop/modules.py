"""nn.Module forms: drop-ins for torch.nn's dropout modules, and the one-line migration.

Each subclasses its torch.nn counterpart (same ``__constants__``, ``extra_repr``, p check),
so code that looks for ``nn.Dropout`` instances still finds them. ``keep_prob`` is the
TensorFlow spelling of ``1 - p``. Under ``torch.jit.script`` each forward runs the
registered operator (``ops.scripted``), with a seed drawn per run.
"""

from __future__ import annotations

import torch
from torch import nn

from . import family, ops
from . import functional as F
from ._dispatch import P_DEFAULT, resolve_p


class Dropout(nn.Dropout):
    """Drop-in for ``torch.nn.Dropout``."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return ops.scripted(input, self.p, self.training, self.inplace, "dropout")
        return F.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(nn.Dropout1d):
    """Drop-in for ``torch.nn.Dropout1d``: zeroes whole channels of (N, C, L) or (C, L)."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return ops.scripted(input, self.p, self.training, self.inplace, "dropout1d")
        return family.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(nn.Dropout2d):
    """Drop-in for ``torch.nn.Dropout2d``: zeroes whole channels of (N, C, H, W)."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return ops.scripted(input, self.p, self.training, self.inplace, "dropout2d")
        return family.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(nn.Dropout3d):
    """Drop-in for ``torch.nn.Dropout3d``: zeroes whole channels of (N, C, D, H, W)."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return ops.scripted(input, self.p, self.training, self.inplace, "dropout3d")
        return family.dropout3d(input, self.p, self.training, self.inplace)


class AlphaDropout(nn.AlphaDropout):
    """Drop-in for ``torch.nn.AlphaDropout``. Like it, ignores ``inplace`` in forward."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return ops.scripted(input, self.p, self.training, False, "alpha")
        return family.alpha_dropout(input, self.p, self.training)


class FeatureAlphaDropout(nn.FeatureAlphaDropout):
    """Drop-in for ``torch.nn.FeatureAlphaDropout``. Like it, ignores ``inplace`` in forward."""

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__(resolve_p(p, keep_prob), inplace)

    def forward(self, input):
        if torch.jit.is_scripting():
            return ops.scripted(input, self.p, self.training, False, "feature_alpha")
        return family.feature_alpha_dropout(input, self.p, self.training)


class DropPath(nn.Module):
    """Drop-in for timm's ``DropPath`` (stochastic depth): drops whole samples of a residual branch."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True, *, keep_prob: float | None = None):
        super().__init__()
        if keep_prob is not None:
            if drop_prob != 0.0:
                raise ValueError(f"give drop_prob or keep_prob, not both (got drop_prob={drop_prob}, "
                                 f"keep_prob={keep_prob})")
            drop_prob = resolve_p(P_DEFAULT, keep_prob)
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        if torch.jit.is_scripting():
            return ops.scripted(x, self.drop_prob, self.training, False, "drop_path", self.scale_by_keep)
        return family.drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class NoiseDropout(nn.Module):
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
            return ops.scripted(input, self.p, self.training, self.inplace, "dropout", True, self.noise_shape)
        return F.dropout(input, self.p, self.training, self.inplace, noise_shape=self.noise_shape)

    def extra_repr(self) -> str:
        return f"p={self.p}, noise_shape={self.noise_shape}, inplace={self.inplace}"


# Exact torch.nn types only: a user subclass may have its own forward.
_SWAPS = {
    nn.Dropout: Dropout,
    nn.Dropout1d: Dropout1d,
    nn.Dropout2d: Dropout2d,
    nn.Dropout3d: Dropout3d,
    nn.AlphaDropout: AlphaDropout,
    nn.FeatureAlphaDropout: FeatureAlphaDropout,
}


def replace_dropout(model: nn.Module) -> nn.Module:
    """Swap every torch.nn dropout module in ``model`` for fastdrop's; returns the model.

    Swaps ``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` and ``FeatureAlphaDropout``
    (exact types), each keeping its p, inplace and training mode; a module shared by several
    parents stays shared. ``model`` itself is returned swapped if it is one of them. Hooks
    registered on the old modules are not carried over.
    """
    swapped = {}

    def swap(m):
        cls = _SWAPS.get(type(m))
        if cls is None:
            return m
        if id(m) not in swapped:
            new = cls(m.p, m.inplace)
            new.train(m.training)
            swapped[id(m)] = new
        return swapped[id(m)]

    root = swap(model)
    if root is not model:
        return root
    for parent in list(model.modules()):
        # _modules, not named_children(): that yields a child held twice by one parent once.
        for name, child in list(parent._modules.items()):
            new = swap(child)
            if new is not child:
                setattr(parent, name, new)
    return model
