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

__all__ = [
    "array_namespace",
    "as_namespace",
    "as_result",
    "complex_dtype",
    "device_of",
    "is_cupy",
    "is_numpy_namespace",
    "is_on_host",
    "is_torch",
    "is_torch_cuda",
    "is_torch_namespace",
    "library_of",
    "namespace_name",
    "real_dtype",
    "resolve",
    "small_to_host",
    "to_namespace",
    "to_numpy",
]

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
        msg = (
            f"xp must be an array namespace module such as numpy, torch, cupy or "
            f"array_api_strict (or None to infer it), got {xp!r}"
        )
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
        msg = (
            f"xp={name!r} is not an array-API namespace; pass numpy, torch, cupy, "
            f"array_api_strict or their array_api_compat wrappers"
        )
        raise TypeError(msg) from exc


def device_of(x: Any) -> Any:
    return array_api_compat.device(x)


# Backend detection. Every "which library is this?" question in convsv goes through
# these: arrays are recognised by array_api_compat's predicates (which never import the
# library), namespaces by their module name, other objects by their type's package.


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (torch is not imported to find out)."""
    return array_api_compat.is_torch_array(x)


def is_cupy(x: Any) -> bool:
    """Whether ``x`` is a CuPy array (CuPy is not imported to find out)."""
    return array_api_compat.is_cupy_array(x)


def is_torch_cuda(x: Any) -> bool:
    """Whether ``x`` is a torch tensor on a CUDA device."""
    return is_torch(x) and bool(x.is_cuda)


def namespace_name(xp: ModuleType) -> str:
    """``"numpy"``, ``"torch"``, ``"cupy"``, ... for a raw or array-api-compat namespace."""
    return xp.__name__.removeprefix("array_api_compat.")


def is_numpy_namespace(xp: ModuleType) -> bool:
    """Whether ``xp`` is NumPy or its array-api-compat wrapper."""
    return namespace_name(xp) == "numpy"


def is_torch_namespace(xp: ModuleType) -> bool:
    """Whether ``xp`` is torch or its array-api-compat wrapper."""
    return namespace_name(xp) == "torch"


def library_of(obj: Any) -> str:
    """Top-level package defining ``type(obj)`` (``"torch"`` for a tensor or an nn.Module).

    For messages, for objects that are not arrays (layers), and for array_api_strict
    arrays, which array_api_compat has no predicate for; torch and CuPy arrays are told
    apart by :func:`is_torch` / :func:`is_cupy`.
    """
    return type(obj).__module__.split(".")[0]


def is_on_host(x: Any) -> bool:
    """Whether ``x`` lives in host memory (so that moving it anywhere is allowed)."""
    if is_cupy(x):
        return False
    if is_torch(x):
        return x.device.type == "cpu"
    return True  # numpy, array_api_strict, Python sequences


def _is_host_namespace(xp: ModuleType, device: Any) -> bool:
    name = namespace_name(xp)
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
        same = array_namespace(x) is xp or namespace_name(array_namespace(x)) == namespace_name(xp)
    except TypeError:
        same = False
    if same:
        if device is not None and device_of(x) != device:
            return xp.asarray(x, device=device)
        return x
    if is_torch(x) and x.requires_grad:
        # moving it would drop the graph (and torch refuses .numpy() on it anyway)
        msg = (
            f"{name} is a torch tensor that requires grad, but xp={namespace_name(xp)!r} "
            f"would leave autograd behind; pass xp=torch (or xp=None) to differentiate "
            f"through convsv, or detach it first ({name}.detach())"
        )
        raise ValueError(msg)
    if not is_on_host(x) and _is_host_namespace(xp, device):
        msg = (
            f"{name} lives on device {device_of(x)!r} but xp={namespace_name(xp)!r} "
            f"computes on the host; convsv does not copy device memory to the host "
            f"silently. Move it yourself (e.g. .cpu() / .get()) or pass a GPU namespace."
        )
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
    if isinstance(x, np.ndarray) or is_cupy(x):
        return x if x.flags.c_contiguous else x.copy(order="C")
    if is_torch(x):
        return x.contiguous()
    return x  # array_api_strict, dask: no strides to fix


def to_numpy(x: Any) -> np.ndarray:
    """Host copy of ``x`` for reporting/tests only (raises for device arrays)."""
    if not is_on_host(x):
        msg = "to_numpy refuses to copy device memory to the host"
        raise ValueError(msg)
    if is_torch(x):
        return x.detach().numpy()
    return np.asarray(x)


def small_to_host(x: Any) -> np.ndarray:
    """A small control array (flags, ranks, coefficients) copied to the host, any device.

    Unlike :func:`to_numpy` this does leave the GPU: it is for a handful of numbers that
    steer the computation, never for the blocks themselves.
    """
    if is_torch(x):
        return x.detach().cpu().numpy()
    if is_cupy(x):
        return x.get()
    if library_of(x) == "array_api_strict":  # leave its non-default device first
        import array_api_strict

        x = x.to_device(array_api_strict.Device("CPU_DEVICE"))
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
        kinds = sorted({library_of(a) for a in arrs})
        msg = (
            f"arrays of different backends ({', '.join(kinds)}) were passed together; "
            f"pass xp=... to say which one to compute in"
        )
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
