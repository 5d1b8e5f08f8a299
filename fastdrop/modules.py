"""nn.Module forms: drop-in for torch.nn.Dropout."""

from __future__ import annotations

from torch import nn

from . import functional as F
from ._dispatch import P_DEFAULT, resolve_p


class Dropout(nn.Module):
    """Drop-in for ``torch.nn.Dropout``; ``keep_prob`` is the TensorFlow spelling of ``1 - p``."""

    __constants__ = ["p", "inplace"]

    def __init__(self, p: float = P_DEFAULT, inplace: bool = False, *, keep_prob: float | None = None):
        super().__init__()
        self.p = resolve_p(p, keep_prob)
        self.inplace = inplace

    def forward(self, input):
        return F.dropout(input, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
