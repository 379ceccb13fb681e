"""Input checks shared by every public function.

Everything here runs before any large allocation, and every message names the
argument, the value it got and what would be accepted.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ._array_api import resolve, to_namespace

__all__ = ["ConvSpec", "check_choice", "check_memory", "conv_spec", "normalize_tuple",
           "prepare_kernel"]

LAYOUTS = ("oihw", "hwio")

#: Default budget (bytes) for anything convsv builds densely.
DEFAULT_MEMORY_LIMIT = 2**30


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        msg = f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        raise ValueError(msg)
    return value


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        msg = f"{name} must be a positive int, got bool {value!r}"
        raise TypeError(msg)
    try:
        return operator.index(value)
    except TypeError:
        msg = f"{name} must be a positive int or a tuple of them, got {value!r}"
        raise TypeError(msg) from None


def normalize_tuple(value: Any, name: str, d: int, *, minimum: int = 1) -> tuple[int, ...]:
    """``value`` (an int or a length-``d`` sequence) as a tuple of ``d`` ints >= minimum."""
    if isinstance(value, (tuple, list)):
        if len(value) != d:
            msg = (f"{name} must be an int or a sequence of {d} ints (one per spatial "
                   f"axis of the kernel), got {value!r} of length {len(value)}")
            raise ValueError(msg)
        out = tuple(_as_int(v, name) for v in value)
    else:
        out = (_as_int(value, name),) * d
    if any(v < minimum for v in out):
        msg = f"{name} must be >= {minimum} on every axis, got {value!r}"
        raise ValueError(msg)
    return out


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_memory(nbytes: float, limit: float | None, what: str, hint: str) -> None:
    """Refuse to build something larger than ``limit`` bytes."""
    limit = DEFAULT_MEMORY_LIMIT if limit is None else limit
    if nbytes > limit:
        msg = (f"{what} needs about {_fmt_bytes(nbytes)}, more than memory_limit="
               f"{_fmt_bytes(limit)}; {hint}")
        raise ValueError(msg)


@dataclass(frozen=True)
class ConvSpec:
    """Geometry of a periodic (or zero-padded) strided, dilated, grouped convolution.

    All tuples have one entry per spatial axis. ``out`` is the output size
    ``ceil(n / s)``; ``m = n // s`` is the polyphase grid (meaningful when ``divisible``).
    """

    c_out: int
    c_in: int  # total input channels (kernel holds c_in // groups)
    groups: int
    k: tuple[int, ...]
    n: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def d(self) -> int:
        return len(self.k)

    @property
    def out(self) -> tuple[int, ...]:
        return tuple(-(-n // s) for n, s in zip(self.n, self.stride))

    @property
    def divisible(self) -> bool:
        return all(n % s == 0 for n, s in zip(self.n, self.stride))

    @property
    def m(self) -> tuple[int, ...]:
        return tuple(n // s for n, s in zip(self.n, self.stride))

    @property
    def phases(self) -> int:
        return math.prod(self.stride)

    @property
    def taps(self) -> tuple[int, ...]:
        """Number of polyphase taps per axis, ``(k - 1) * dilation // s + 1``."""
        return tuple((k - 1) * dl // s + 1 for k, dl, s in zip(self.k, self.dilation, self.stride))

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the operator."""
        return self.c_out * math.prod(self.out), self.c_in * math.prod(self.n)

    @property
    def n_singular_values(self) -> int:
        return min(self.shape)


def prepare_kernel(kernel: Any, *, layout: str, xp: Any, name: str = "kernel",
                   allow_complex: bool = True) -> tuple[Any, ModuleType]:
    """Resolve the namespace, move ``kernel`` there, check dtype/finiteness, return oihw.

    Returns ``(kernel_oihw, xp)``. The input is never modified; the permuted result is a
    view or a new array.
    """
    check_choice(layout, "layout", LAYOUTS)
    xp = resolve(xp, kernel)
    k = to_namespace(kernel, xp, name=name)
    if k.ndim not in (3, 4, 5):
        msg = (f"{name} must have 3, 4 or 5 dimensions (two channel axes and 1-3 spatial "
               f"axes, layout {layout!r}), got shape {tuple(k.shape)}")
        raise ValueError(msg)
    allowed = (xp.float32, xp.float64) + ((xp.complex64, xp.complex128) if allow_complex else ())
    if k.dtype not in allowed:
        names = "float32, float64" + (", complex64, complex128" if allow_complex else "")
        msg = f"{name} must have dtype {names}; got {k.dtype}. Cast it first (e.g. to float32)."
        raise TypeError(msg)
    if any(int(s) == 0 for s in k.shape):
        msg = f"{name} must have no empty axis, got shape {tuple(k.shape)}"
        raise ValueError(msg)
    if not bool(xp.all(xp.isfinite(k))):
        msg = f"{name} contains NaN or Inf; the spectrum of such a layer is undefined"
        raise ValueError(msg)
    if layout == "hwio":
        d = k.ndim - 2
        k = xp.permute_dims(k, (d + 1, d, *range(d)))
    return k, xp


def conv_spec(kernel_oihw: Any, n: Any, stride: Any, dilation: Any, groups: Any) -> ConvSpec:
    """Validate the geometry against an oihw kernel."""
    d = kernel_oihw.ndim - 2
    n_t = normalize_tuple(n, "n", d)
    s_t = normalize_tuple(stride, "stride", d)
    dl_t = normalize_tuple(dilation, "dilation", d)
    g = _as_int(groups, "groups")
    if g < 1:
        msg = f"groups must be a positive int, got {groups!r}"
        raise ValueError(msg)
    c_out, c_in_g = int(kernel_oihw.shape[0]), int(kernel_oihw.shape[1])
    if c_out % g:
        msg = (f"groups={g} must divide the number of output channels c_out={c_out} "
               f"(kernel shape {tuple(kernel_oihw.shape)} in oihw order)")
        raise ValueError(msg)
    return ConvSpec(c_out=c_out, c_in=c_in_g * g, groups=g,
                    k=tuple(int(v) for v in kernel_oihw.shape[2:]),
                    n=n_t, stride=s_t, dilation=dl_t)


def grouped(kernel_oihw: Any, spec: ConvSpec, xp: ModuleType) -> Any:
    """Kernel as ``(groups, c_out/groups, c_in/groups, *k)``."""
    return xp.reshape(kernel_oihw, (spec.groups, spec.c_out // spec.groups,
                                    spec.c_in // spec.groups, *spec.k))
