"""convsv for PyTorch: exact spectra, reports and norm control of ``torch.nn`` layers.

``import convsv.torch as cvt``. Layer settings (stride, padding, padding_mode, dilation,
groups, output_padding) are read from the modules; sizes from an input shape or, for a
whole model, from forward hooks. ``import convsv`` alone never imports torch.
"""

from ._clip import clip_, register_clip_hook
from ._layers import operator_norm, singular_values
from ._report import LayerReport, Report, report
from ._spectral_norm import normalised_norm_bounds, spectral_norm

__all__ = [
    "LayerReport",
    "Report",
    "clip_",
    "normalised_norm_bounds",
    "operator_norm",
    "register_clip_hook",
    "report",
    "singular_values",
    "spectral_norm",
]
