"""Small multilinear-algebra helpers shared by the TT and Tucker modules."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["mode_product", "rank_for_tolerance", "unfold_svd"]


def mode_product(t: Any, mat: Any, mode: int, xp: ModuleType) -> Any:
    """``t x_mode mat``: contract axis ``mode`` of ``t`` with the columns of ``mat`` (new, old)."""
    out = xp.tensordot(t, mat, axes=([mode], [1]))  # new axis appended last
    return xp.moveaxis(out, -1, mode)


def unfold_svd(t: Any, mode: int, xp: ModuleType) -> tuple[Any, Any]:
    """Left singular vectors and singular values of the mode-``mode`` unfolding."""
    n = int(t.shape[mode])
    mat = xp.reshape(xp.moveaxis(t, mode, 0), (n, -1))
    u, s, _ = xp.linalg.svd(mat, full_matrices=False)
    return u, s


def rank_for_tolerance(s: Any, rel_budget: float) -> int:
    """Smallest rank ``r`` whose discarded tail ``sum(s[r:]**2)`` is at most ``rel_budget``
    times ``sum(s**2)``.

    Computed on ``s / max(s)``: the squares of a 1e-200 (or 1e200) tensor's singular values
    underflow (overflow), which made every rank 1 (raised OverflowError).
    """
    top = max((abs(float(v)) for v in s), default=0.0)
    if top == 0.0:
        return 1
    sq = np.asarray([(float(v) / top) ** 2 for v in s])
    tails = np.concatenate([np.cumsum(sq[::-1])[::-1], [0.0]])  # tails[r] = sum(sq[r:])
    return max(1, int(np.argmax(tails <= rel_budget * tails[0])))
