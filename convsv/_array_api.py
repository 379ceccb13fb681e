"""Namespace resolution, backend moves and dtype promotion.

Every public function funnels its arrays through :func:`resolve` so that the rest of
the package only ever sees one array-API namespace and arrays that already live on it.
This is also the single place that knows about individual backends.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

__all__ = ["array_namespace", "as_namespace", "as_result", "complex_dtype", "device_of",
           "is_on_host", "real_dtype", "resolve", "to_namespace", "to_numpy"]

# Raw libraries whose array-API view lives in array_api_compat.<name>.
_COMPAT_WRAPPED = ("numpy", "torch", "cupy", "dask.array")


def array_namespace(*arrays: Any) -> ModuleType:
    """Array-API namespace of ``arrays`` (compat-wrapped; raises on mixed backends)."""
    return array_api_compat.array_namespace(*arrays)


def as_namespace(xp: Any) -> ModuleType:
    """Return the array-API namespace for ``xp``.

    ``xp`` may be a raw module (``numpy``, ``torch``, ``cupy``), its
    array-api-compat wrapper, or an already compliant namespace such as
    ``array_api_strict``.
    """
    name = getattr(xp, "__name__", None)
    if not isinstance(xp, ModuleType) or name is None:
        msg = (f"xp must be an array namespace module such as numpy, torch, cupy or "
               f"array_api_strict (or None to infer it), got {xp!r}")
        raise TypeError(msg)
    if name.startswith("array_api_compat."):
        return xp
    if name in _COMPAT_WRAPPED:
        return importlib.import_module(f"array_api_compat.{name}")
    if hasattr(xp, "__array_api_version__"):
        return xp
    try:  # any other library that array-api-compat knows (e.g. jax.numpy)
        return array_api_compat.array_namespace(xp.asarray(0.0))
    except (TypeError, AttributeError) as exc:
        msg = (f"xp={name!r} is not an array-API namespace; pass numpy, torch, cupy, "
               f"array_api_strict or their array_api_compat wrappers")
        raise TypeError(msg) from exc


def device_of(x: Any) -> Any:
    return array_api_compat.device(x)


def is_on_host(x: Any) -> bool:
    """Whether ``x`` lives in host memory (so that moving it anywhere is allowed)."""
    if array_api_compat.is_cupy_array(x):
        return False
    if array_api_compat.is_torch_array(x):
        return x.device.type == "cpu"
    return True  # numpy, array_api_strict, Python sequences


def _namespace_name(xp: ModuleType) -> str:
    return xp.__name__.removeprefix("array_api_compat.")


def _is_host_namespace(xp: ModuleType, device: Any) -> bool:
    name = _namespace_name(xp)
    if name == "cupy":
        return False
    if name == "torch" and device is not None:
        return str(device).startswith("cpu")
    return True


def to_namespace(x: Any, xp: ModuleType, *, name: str = "array", device: Any = None) -> Any:
    """Return ``x`` as an array of namespace ``xp`` (on ``device`` if given).

    Arrays already in ``xp`` are returned unchanged (never copied). Arrays of another
    backend are moved (DLPack where possible). Moving device memory to a host backend
    raises ``ValueError``: convsv never copies GPU data to the host behind your back.
    """
    if not array_api_compat.is_array_api_obj(x):
        if isinstance(x, (bool, np.bool_)):
            msg = f"{name} must be a real or complex floating array, got bool"
            raise TypeError(msg)
        x = np.asarray(x)
    try:
        same = array_namespace(x) is xp \
            or _namespace_name(array_namespace(x)) == _namespace_name(xp)
    except TypeError:
        same = False
    if same:
        if device is not None and device_of(x) != device:
            return xp.asarray(x, device=device)
        return x
    if getattr(x, "requires_grad", False) and array_api_compat.is_torch_array(x):
        # moving it would drop the graph (and torch refuses .numpy() on it anyway)
        msg = (f"{name} is a torch tensor that requires grad, but xp={_namespace_name(xp)!r} "
               f"would leave autograd behind; pass xp=torch (or xp=None) to differentiate "
               f"through convsv, or detach it first ({name}.detach())")
        raise ValueError(msg)
    if not is_on_host(x) and _is_host_namespace(xp, device):
        msg = (f"{name} lives on device {device_of(x)!r} but xp={_namespace_name(xp)!r} "
               f"computes on the host; convsv does not copy device memory to the host "
               f"silently. Move it yourself (e.g. .cpu() / .get()) or pass a GPU namespace.")
        raise ValueError(msg)
    try:
        out = xp.from_dlpack(x)
    except (TypeError, ValueError, RuntimeError, AttributeError, BufferError, NotImplementedError):
        # Cross-device DLPack (host -> GPU) is not supported by every library; x is on
        # the host here, so going through NumPy is an explicit host->device upload.
        out = xp.asarray(np.asarray(x))
    if device is not None and device_of(out) != device:
        out = xp.asarray(out, device=device)
    return out


def as_result(x: Any) -> Any:
    """``x`` as convsv returns arrays: C-contiguous, and a 0-d array rather than a scalar.

    NumPy's and CuPy's ``flip`` (behind ``sort(descending=True)``) return negative-stride
    views that ``torch.from_numpy`` and DLPack consumers reject, and NumPy reductions
    return ``numpy.float64`` scalars where the docstrings promise 0-d arrays. Torch is
    made contiguous too (a no-op for results that already are); autograd is kept.
    """
    if isinstance(x, np.generic):
        return np.asarray(x)
    if isinstance(x, np.ndarray) or array_api_compat.is_cupy_array(x):
        return x if x.flags.c_contiguous else x.copy(order="C")
    if array_api_compat.is_torch_array(x):
        return x.contiguous()
    return x  # array_api_strict, dask: no strides to fix


def to_numpy(x: Any) -> np.ndarray:
    """Host copy of ``x`` for reporting/tests only (raises for device arrays)."""
    if not is_on_host(x):
        msg = "to_numpy refuses to copy device memory to the host"
        raise ValueError(msg)
    if array_api_compat.is_torch_array(x):
        return x.detach().numpy()
    return np.asarray(x)


def resolve(xp: Any, *arrays: Any) -> ModuleType:
    """Namespace to compute in: ``xp`` if given, else inferred from ``arrays``."""
    if xp is not None:
        return as_namespace(xp)
    arrs = [a for a in arrays if array_api_compat.is_array_api_obj(a)]
    if not arrs:
        return importlib.import_module("array_api_compat.numpy")
    try:
        return array_namespace(*arrs)
    except TypeError as exc:
        kinds = sorted({type(a).__module__.split(".")[0] for a in arrs})
        msg = (f"arrays of different backends ({', '.join(kinds)}) were passed together; "
               f"pass xp=... to say which one to compute in")
        raise TypeError(msg) from exc


def complex_dtype(xp: ModuleType, dtype: Any) -> Any:
    """float32/complex64 -> complex64, float64/complex128 -> complex128."""
    if dtype in (xp.float32, xp.complex64):
        return xp.complex64
    return xp.complex128


def real_dtype(xp: ModuleType, dtype: Any) -> Any:
    """complex64/float32 -> float32, complex128/float64 -> float64."""
    if dtype in (xp.float32, xp.complex64):
        return xp.float32
    return xp.float64


def itemsize(xp: ModuleType, dtype: Any) -> int:
    """Bytes per element of a float or complex ``dtype``."""
    real = xp.finfo(real_dtype(xp, dtype)).bits // 8
    return 2 * real if xp.isdtype(dtype, "complex floating") else real
