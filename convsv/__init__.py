"""convsv: exact singular values of convolutional layers on any array-API backend."""

from . import stiefel, sttp, tt, tucker
from .bounds import singular_value_bounds
from .circulant import dense_operator
from .lfa import symbols
from .operator import apply, apply_adjoint
from .polyphase import polyphase_kernel
from .projection import ClipInfo, ClipWarning, clip, clip_, clip_once
from .singular_vectors import svd
from .spectrum import operator_norm, singular_values

__version__ = "0.1.0"

__all__ = [
    "ClipInfo",
    "ClipWarning",
    "__version__",
    "apply",
    "apply_adjoint",
    "clip",
    "clip_",
    "clip_once",
    "dense_operator",
    "operator_norm",
    "polyphase_kernel",
    "singular_value_bounds",
    "singular_values",
    "stiefel",
    "sttp",
    "svd",
    "symbols",
    "tt",
    "tucker",
]
