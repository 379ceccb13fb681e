"""Input checks shared by every public function.

Everything here runs before any large allocation, and every message names the
argument, the value it got and what would be accepted. Numbers are accepted as Python
numbers, NumPy scalars and 0-d arrays of any backend (e.g. ``0.5 * operator_norm(w, n)``
on torch); memory budgets also as strings such as ``"512MiB"`` or ``"2 GB"``.
"""

from __future__ import annotations

import math
import operator
import os
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ._array_api import library_of, resolve, to_namespace

__all__ = [
    "ConvSpec",
    "as_float",
    "as_int",
    "check_choice",
    "check_memory",
    "conv_spec",
    "env_num_threads",
    "normalize_tuple",
    "parse_memory_limit",
    "prepare_kernel",
]

LAYOUTS = ("oihw", "hwio")

#: Default budget (bytes) for anything convsv builds densely.
DEFAULT_MEMORY_LIMIT = 2**30

#: Environment variable that sets convsv's own worker threads (NumPy backend).
NUM_THREADS_ENV = "CONVSV_NUM_THREADS"


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        msg = f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        raise ValueError(msg)
    return value


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None and getattr(value, "ndim", 0):
        return f"an array of shape {tuple(shape)}"
    return repr(value)


def _is_complex(value: Any) -> bool:
    if isinstance(value, complex):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and "complex" in str(dtype)


def as_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """``value`` as a Python int: ints, NumPy integers and 0-d integer arrays/tensors.

    Floats (even integral ones) and bools are refused: an iteration count of ``50.0``
    or ``True`` is more likely a mix-up than intended.
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        msg = f"{name} must be an int, got bool {value!r}"
        raise TypeError(msg)
    try:
        out = operator.index(value)
    except TypeError:
        msg = (
            f"{name} must be an int (a Python or NumPy integer or a 0-d integer array), "
            f"got {_describe(value)} of type {type(value).__name__}"
        )
        raise TypeError(msg) from None
    if minimum is not None and out < minimum:
        msg = f"{name} must be >= {minimum}, got {out}"
        raise ValueError(msg)
    return out


def as_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a finite Python float within the given bounds.

    Accepts Python and NumPy reals and 0-d real arrays of any backend (a grad-requiring
    0-d tensor is read by value). ``min_open``/``max_open`` make a bound strict.
    """
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or type(value).__name__ == "bool_"
        or isinstance(value, str)
        or value is None
        or _is_complex(value)
    ):
        msg = f"{name} must be a real number, got {value!r}"
        raise TypeError(msg)
    if getattr(value, "ndim", 0) not in (0, None):
        msg = (
            f"{name} must be a real number (a Python/NumPy scalar or a 0-d array), got "
            f"{_describe(value)}"
        )
        raise TypeError(msg)
    if getattr(value, "requires_grad", False):
        value = value.detach()  # a bound is a number, not part of the graph
    try:
        out = float(value)
    except (TypeError, ValueError):
        msg = f"{name} must be a real number, got {value!r} of type {type(value).__name__}"
        raise TypeError(msg) from None
    if not math.isfinite(out):
        msg = f"{name} must be finite, got {out!r}"
        raise ValueError(msg)
    low_bad = minimum is not None and (out <= minimum if min_open else out < minimum)
    high_bad = maximum is not None and (out >= maximum if max_open else out > maximum)
    if low_bad or high_bad:
        lo = "(-inf" if minimum is None else f"{'(' if min_open else '['}{minimum:g}"
        hi = "inf)" if maximum is None else f"{maximum:g}{')' if max_open else ']'}"
        msg = f"{name} must be in {lo}, {hi}, got {out!r}"
        raise ValueError(msg)
    return out


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        msg = f"{name} must be a positive int, got bool {value!r}"
        raise TypeError(msg)
    try:
        return operator.index(value)
    except TypeError:
        msg = f"{name} must be a positive int or a tuple of them, got {_describe(value)}"
        raise TypeError(msg) from None


def normalize_tuple(
    value: Any, name: str, d: int, *, minimum: int = 1, per: str = "spatial axis of the kernel"
) -> tuple[int, ...]:
    """``value`` (an int or a length-``d`` sequence) as a tuple of ``d`` ints >= minimum.

    An int may be a NumPy integer or a 0-d integer array; a sequence may be a list,
    tuple or 1-d integer array. ``per`` names what the entries are for (messages).
    """
    if isinstance(value, (tuple, list)) or getattr(value, "ndim", 0) == 1:
        seq = list(value)
        if len(seq) != d:
            msg = (
                f"{name} must be an int or a sequence of {d} ints (one per {per}), got "
                f"{value!r} of length {len(seq)}"
            )
            raise ValueError(msg)
        out = tuple(_as_int(v, name) for v in seq)
    else:
        out = (_as_int(value, name),) * d
    if any(v < minimum for v in out):
        msg = f"{name} must be >= {minimum} on every axis, got {value!r}"
        raise ValueError(msg)
    return out


_UNITS = {
    "": 1,
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "p": 10**15,
    "pb": 10**15,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "pib": 2**50,
}
_MEMORY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_memory_limit(value: Any, name: str = "memory_limit") -> float:
    """A byte budget: ``None`` (1 GiB), a positive number of bytes, or a string.

    Strings are a number and a unit, case-insensitive: ``"512MiB"``, ``"2 GiB"``,
    ``"1GB"`` (SI: 10^9), ``"1.5e9"``; units B, kB/MB/GB/TB/PB and KiB/MiB/GiB/TiB/PiB.
    """
    if value is None:
        return float(DEFAULT_MEMORY_LIMIT)
    if isinstance(value, str):
        match = _MEMORY_RE.match(value)
        unit = match.group(2).lower() if match else None
        if unit not in _UNITS:
            msg = (
                f"{name} must be a number of bytes or a string like '512MiB', '2 GiB' or "
                f"'1GB' (units B, kB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB), got "
                f"{value!r}"
            )
            raise ValueError(msg)
        out = float(match.group(1)) * _UNITS[unit]
    else:
        try:
            out = as_float(value, name)
        except TypeError:
            msg = (
                f"{name} must be a number of bytes, a string like '512MiB' or None "
                f"(1 GiB), got {value!r}"
            )
            raise TypeError(msg) from None
    if not out > 0:
        msg = f"{name} must be positive, got {value!r}"
        raise ValueError(msg)
    return out


def env_num_threads(default: int) -> int:
    """Worker threads from ``CONVSV_NUM_THREADS`` (a positive int), else ``default``."""
    raw = os.environ.get(NUM_THREADS_ENV, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        msg = (
            f"environment variable {NUM_THREADS_ENV} must be a positive integer (the "
            f"number of worker threads), got {raw!r}; unset it to use every core"
        )
        raise ValueError(msg)
    return value


def format_bytes(n: float) -> str:
    """``n`` bytes with a binary unit (B to EiB), three significant digits."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    k = 0
    while k + 1 < len(units) and n >= 1024 ** (k + 1):
        k += 1
    return f"{int(n)} bytes" if k == 0 else f"{n / 1024**k:.3g} {units[k]}"


_fmt_bytes = format_bytes


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None


def check_memory(
    nbytes: float, limit: Any, what: str, hint: str, *, alternative: str | None = None
) -> None:
    """Refuse to build something larger than ``limit`` bytes (None: 1 GiB; strings allowed).

    ``hint`` says what to do when raising the budget is a sensible option. When the
    request exceeds this machine's RAM, raising ``memory_limit`` cannot help, so the
    message says so and offers ``alternative`` instead.
    """
    limit = parse_memory_limit(limit)
    if nbytes <= limit:
        return
    ram = physical_memory()
    if ram is not None and nbytes > ram:
        instead = alternative or (
            "use a smaller input size n or fewer channels, or a method that works in chunks"
        )
        msg = (
            f"{what} needs about {format_bytes(nbytes)}, more than this machine's "
            f"{format_bytes(ram)} of RAM (memory_limit={format_bytes(limit)}); raising "
            f"memory_limit would not help: {instead}"
        )
    else:
        msg = (
            f"{what} needs about {format_bytes(nbytes)}, more than memory_limit="
            f"{format_bytes(limit)}; {hint}"
        )
    raise ValueError(msg)


def check_fits_ram(nbytes: float, what: str, alternative: str) -> None:
    """Refuse a result larger than this machine's RAM (``memory_limit`` aside)."""
    ram = physical_memory()
    if ram is not None and nbytes > ram:
        check_memory(nbytes, ram, what, "", alternative=alternative)


def reject_module(kernel: Any, name: str = "kernel") -> None:
    """TypeError for a layer object (e.g. ``torch.nn.Conv2d``) passed where a kernel goes.

    Duck-typed (a ``weight`` attribute on an object of a ``torch``/``flax``/... class that
    is not itself an array) so that nothing heavy is imported to detect it.
    """
    if hasattr(kernel, "shape") and hasattr(kernel, "dtype"):
        return
    weight = getattr(type(kernel), "weight", None) is not None or hasattr(kernel, "weight")
    if not weight:
        return
    cls = type(kernel)
    where = f"{cls.__module__}.{cls.__qualname__}"
    hint = (
        "use convsv.torch for torch.nn layers (it reads stride, dilation, groups and "
        "padding from the layer), or pass its weight: kernel=layer.weight.detach()"
        if library_of(kernel) == "torch"
        else "pass its weight array"
    )
    msg = f"{name} must be an array, got a {where} layer object; {hint}"
    raise TypeError(msg)


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


def prepare_kernel(
    kernel: Any, *, layout: str, xp: Any, name: str = "kernel", allow_complex: bool = True
) -> tuple[Any, ModuleType]:
    """Resolve the namespace, move ``kernel`` there, check dtype/finiteness, return oihw.

    Returns ``(kernel_oihw, xp)``. The input is never modified; the permuted result is a
    view or a new array.
    """
    check_choice(layout, "layout", LAYOUTS)
    reject_module(kernel, name)
    xp = resolve(xp, kernel)
    k = to_namespace(kernel, xp, name=name)
    if k.ndim not in (3, 4, 5):
        msg = (
            f"{name} must have 3, 4 or 5 dimensions (two channel axes and 1-3 spatial "
            f"axes, layout {layout!r}), got shape {tuple(k.shape)}"
        )
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
        msg = f"groups must be a positive int, got {g!r}"
        raise ValueError(msg)
    c_out, c_in_g = int(kernel_oihw.shape[0]), int(kernel_oihw.shape[1])
    if c_out % g:
        msg = (
            f"groups={g} must divide the number of output channels c_out={c_out} "
            f"(kernel shape {tuple(kernel_oihw.shape)} in oihw order)"
        )
        raise ValueError(msg)
    return ConvSpec(
        c_out=c_out,
        c_in=c_in_g * g,
        groups=g,
        k=tuple(int(v) for v in kernel_oihw.shape[2:]),
        n=n_t,
        stride=s_t,
        dilation=dl_t,
    )


def grouped(kernel_oihw: Any, spec: ConvSpec, xp: ModuleType) -> Any:
    """Kernel as ``(groups, c_out/groups, c_in/groups, *k)``."""
    return xp.reshape(
        kernel_oihw, (spec.groups, spec.c_out // spec.groups, spec.c_in // spec.groups, *spec.k)
    )
