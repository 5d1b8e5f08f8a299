"""fastdrop: fused, seed-driven dropout for PyTorch."""

from . import contract
from ._sharded import rng_in_sync
from .autograd import DropoutFunction
from .functional import (alpha_dropout, bias_dropout_add, drop_path, dropout, dropout1d, dropout2d, dropout3d,
                         dropout_add, dropout_mask, feature_alpha_dropout, noise_dropout, philox)
from .migrate import dropout_report, is_fastdrop, patch, patched, replace_dropout, unpatch
from .modules import (AlphaDropout, Dropout, Dropout1d, Dropout2d, Dropout3d, DropPath, FeatureAlphaDropout,
                      NoiseDropout, StochasticDepth)

__all__ = [
    "AlphaDropout", "DropPath", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "DropoutFunction",
    "FeatureAlphaDropout", "NoiseDropout", "StochasticDepth", "alpha_dropout", "bias_dropout_add", "contract",
    "drop_path", "dropout", "dropout1d", "dropout2d", "dropout3d", "dropout_add", "dropout_mask", "dropout_report",
    "feature_alpha_dropout", "is_fastdrop", "noise_dropout", "patch", "patched", "philox", "replace_dropout",
    "rng_in_sync", "unpatch",
]
__version__ = "0.1.0"
