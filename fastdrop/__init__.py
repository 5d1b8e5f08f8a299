"""fastdrop: fused, seed-driven dropout for PyTorch."""

from . import contract
from .functional import dropout, dropout_mask, philox
from .modules import Dropout

__all__ = ["Dropout", "contract", "dropout", "dropout_mask", "philox"]
__version__ = "0.1.0"
