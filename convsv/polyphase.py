r"""Strided periodic convolutions as stride-1 convolutions of polyphase components.

Senderovich, Bulatova, Obukhov, Rakhuba, *Towards Practical Control of Singular
Values of Convolutional Layers*, NeurIPS 2022, Theorem 2 (eqs. 8-10).

A layer with stride ``s`` (``n % s == 0``) reads input position ``s*i + q`` with
``q = p * dilation`` for tap ``p``. Writing ``q = s*a + r`` with phase ``r = q mod s``
and coarse offset ``a = q // s`` turns it into a stride-1 periodic convolution on the
coarse grid ``m = n / s`` whose input has ``s^d * c_in`` channels, the polyphase
components ``x_r[c, j] = x[c, s*j + r]``:

.. math:: y[o, i] = \sum_{c, r} \sum_a K'[o, (c, r), a]\, x_r[c, (i + a) \bmod m].

Its per-frequency blocks are therefore ``c_out x (s^d * c_in)`` (PyTorch orientation;
the transpose of what one gets by following eq. 9 literally for ``s > 1``), and the
singular values of the layer are the union over the ``m^d`` coarse frequencies of the
blocks' singular values (eq. 10). The channel order of the blocks' columns is
``(c, r_1, ..., r_d)``, ``c`` slowest.

This module owns the tap -> (phase, offset) bookkeeping and the split of signals (and
full-support kernels) into polyphase components; :mod:`convsv.fft` and :mod:`convsv.lfa`
turn it into symbols.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from ._array_api import as_result, device_of, itemsize
from ._validation import ConvSpec, check_memory, conv_spec, grouped, prepare_kernel

__all__ = ["polyphase_kernel"]


def tap_phase_offset(k: int, s: int, dilation: int) -> tuple[np.ndarray, np.ndarray]:
    """Phase ``r`` and coarse offset ``a`` of every tap along one axis."""
    q = np.arange(k) * dilation
    return q % s, q // s


def axis_phase_matrix(k: int, s: int, dilation: int, size: int | None) -> np.ndarray:
    """One-hot ``Q[p, r, b]``: tap ``p`` lands on phase ``r`` at coarse offset ``b``.

    With ``size`` (the coarse grid ``m``) offsets wrap around the torus, which is what
    makes kernels larger than the input correct; with ``None`` they are kept unwrapped.
    """
    r, a = tap_phase_offset(k, s, dilation)
    b = a % size if size is not None else a
    q = np.zeros((k, s, int(b.max()) + 1 if size is None else size))
    q[np.arange(k), r, b] = 1.0  # distinct taps never share (r, a) unwrapped
    return q


def contract_axes(kg: Any, mats: list[Any], xp: ModuleType) -> Any:
    """Contract the spatial axes of ``kg`` ``(G, co, ci, *k)`` with per-axis matrices.

    ``mats[j]`` has shape ``(k_j, s_j, B_j)``. Returns ``(G, co, ci, s_1..s_d, B_1..B_d)``.
    """
    d = len(mats)
    t = kg
    for mat in mats:
        # tensordot appends the (s_j, B_j) axes at the end; the next spatial axis
        # is then always at position 3.
        t = xp.tensordot(t, mat, axes=([3], [0]))
    perm = (0, 1, 2, *(3 + 2 * j for j in range(d)), *(4 + 2 * j for j in range(d)))
    return xp.permute_dims(t, perm)


def grouped_polyphase(kg: Any, spec: ConvSpec, xp: ModuleType) -> Any:
    """Wrapped polyphase kernel ``(G, co/G, (ci/G) * s^d, *m)`` of a grouped kernel."""
    dev = device_of(kg)
    mats = [
        xp.asarray(axis_phase_matrix(k, s, dl, m), dtype=kg.dtype, device=dev)
        for k, s, dl, m in zip(spec.k, spec.stride, spec.dilation, spec.m)
    ]
    t = contract_axes(kg, mats, xp)
    g, co, ci = (int(v) for v in kg.shape[:3])
    return xp.reshape(t, (g, co, ci * spec.phases, *spec.m))


def polyphase_kernel(
    kernel: Any,
    n: Any,
    stride: Any = 1,
    *,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    memory_limit: Any = None,
    xp: Any = None,
) -> Any:
    """Polyphase (Theorem 2) kernel of a strided periodic convolution.

    Parameters
    ----------
    kernel : array
        ``(c_out, c_in/groups, *k)`` (``layout="oihw"``) or ``(*k, c_in/groups, c_out)``
        (``layout="hwio"``), 1-3 spatial axes.
    n : int or tuple of int
        Input spatial size; must be divisible by ``stride`` on every axis.
    stride, dilation : int or tuple of int
    groups : int
    layout : {"oihw", "hwio"}
    memory_limit : float or str, optional
        Byte budget for the result and the copy that reorders it (default 1 GiB; strings
        such as ``"4GiB"`` accepted).
    xp : namespace, optional

    Returns
    -------
    array
        Stride-1 kernel on the coarse torus ``m = n / stride``: shape
        ``(c_out, c_in * s^d, *m)`` for ``groups == 1`` and
        ``(groups, c_out/groups, (c_in/groups) * s^d, *m)`` otherwise, columns ordered
        ``(c, r_1, ..., r_d)``. Taps beyond the torus are wrapped (summed), as in
        Senderovich et al. eq. (8) applied to the zero-padded kernel.

    Notes
    -----
    The stride-1 periodic convolution with this kernel on inputs of ``s^d * c_in``
    polyphase channels is the same linear map as the strided layer.
    """
    k, xp = prepare_kernel(kernel, layout=layout, xp=xp)
    spec = conv_spec(k, n, stride, dilation, groups)
    require_divisible(spec)
    # the result, and the contraction it is copied from when its axes are reordered
    check_memory(
        2 * spec.c_out * spec.c_in * math.prod(spec.n) / spec.groups * itemsize(xp, k.dtype),
        memory_limit,
        "the polyphase kernel",
        "raise memory_limit",
        alternative="use convsv.symbols(frequencies=...) or convsv.singular_values, "
        "which never build the kernel on the whole torus",
    )
    out = grouped_polyphase(grouped(k, spec, xp), spec, xp)
    return as_result(out[0, ...] if spec.groups == 1 else out)


def split_phases(x: Any, spec: ConvSpec, xp: ModuleType) -> Any:
    """``(*lead, c, *n)`` -> ``(*lead, c * s^d, *m)``, channels ordered ``(c, r_1..r_d)``.

    ``x[..., c, s*j + r]`` becomes ``out[..., (c, r), j]``: the polyphase components of a
    signal, or of a full-support kernel. A permutation, so exact.
    """
    d = spec.d
    lead = tuple(int(v) for v in x.shape[: -d - 1])
    c, q = int(x.shape[-d - 1]), len(lead) + 1
    t = xp.reshape(x, (*lead, c, *[v for ms in zip(spec.m, spec.stride) for v in ms]))
    t = xp.permute_dims(
        t, (*range(q), *(q + 1 + 2 * j for j in range(d)), *(q + 2 * j for j in range(d)))
    )
    return xp.reshape(t, (*lead, c * spec.phases, *spec.m))


def merge_phases(t: Any, spec: ConvSpec, xp: ModuleType) -> Any:
    """Inverse of :func:`split_phases`: ``(*lead, c * s^d, *m)`` -> ``(*lead, c, *n)``."""
    d = spec.d
    lead = tuple(int(v) for v in t.shape[: -d - 1])
    c, q = int(t.shape[-d - 1]) // spec.phases, len(lead) + 1
    t = xp.reshape(t, (*lead, c, *spec.stride, *spec.m))
    t = xp.permute_dims(t, (*range(q), *(v for j in range(d) for v in (q + d + j, q + j))))
    return xp.reshape(t, (*lead, c, *spec.n))


def require_divisible(spec: ConvSpec) -> None:
    if not spec.divisible:
        msg = (
            f"the polyphase/FFT path needs n divisible by stride on every axis, got "
            f"n={spec.n}, stride={spec.stride}; use method='dense' (small layers) or "
            f"choose n a multiple of the stride"
        )
        raise ValueError(msg)
