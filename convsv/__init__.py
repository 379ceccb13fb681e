"""convsv: exact singular values of convolutional layers on any array-API backend."""

from .circulant import dense_operator
from .lfa import symbols
from .polyphase import polyphase_kernel
from .spectrum import operator_norm, singular_values

__version__ = "0.1.0"

__all__ = ["__version__", "dense_operator", "operator_norm", "polyphase_kernel",
           "singular_values", "symbols"]
