"""
One call, any backend: NumPy, PyTorch, CuPy
===========================================

convsv is written against the array API: the kernel's namespace decides where the work
runs, and the result comes back in that namespace, on that device, in the kernel's
precision. On CUDA, convsv sends the blocks to cuSOLVER's batched ``gesvda`` and certifies
every block's values from its factors. Backends that are not installed, or have no GPU
here, are reported and skipped.
"""

import importlib
import time

import matplotlib.pyplot as plt
import numpy as np

import convsv

c, n = 64, 16
k64 = np.random.default_rng(8).standard_normal((c, c, 3, 3))
reference = convsv.singular_values(k64, n)  # NumPy, float64


def backends():
    yield "numpy", lambda a: a, lambda: None
    for name, device in [("torch", "cpu"), ("torch", "cuda"), ("cupy", "cuda")]:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            print(f"{name}: not installed")
            continue
        if name == "torch" and device == "cuda" and not mod.cuda.is_available():
            print("torch:cuda: no CUDA device here")
            continue
        if name == "cupy":
            try:
                mod.cuda.runtime.getDeviceCount()
            except mod.cuda.runtime.CUDARuntimeError:  # no driver or no device
                print("cupy:cuda: no CUDA device here")
                continue
        if name == "torch":
            sync = mod.cuda.synchronize if device == "cuda" else (lambda: None)
            yield (f"torch:{device}", lambda a, m=mod, d=device: m.asarray(a, device=d), sync)
        else:
            yield "cupy:cuda", mod.asarray, mod.cuda.Device().synchronize


# %%
# The same call everywhere, in float32 (complex64 blocks); the error is against the
# float64 NumPy result, relative to the norm.
times, errors = {}, {}
for label, asarray, sync in backends():
    k = asarray(k64.astype(np.float32))
    convsv.singular_values(k, n)  # warm-up (GPU context, FFT plans)
    sync()
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        sv = convsv.singular_values(k, n)
        sync()
        best = min(best, time.perf_counter() - t0)
    host = np.asarray(sv.cpu() if hasattr(sv, "cpu") else (sv.get() if hasattr(sv, "get") else sv))
    times[label] = best
    errors[label] = np.abs(host - reference).max() / reference[0]
    print(
        f"{label:>10}: {type(sv).__module__}.{type(sv).__name__} {sv.dtype}, "
        f"{sv.shape[0]} values, {best * 1e3:6.1f} ms, max rel. error {errors[label]:.1e}"
    )

fig, ax = plt.subplots(figsize=(6.5, 3.2))
labels = list(times)
ax.barh(labels, [times[lb] * 1e3 for lb in labels], color="C0")
for i, lb in enumerate(labels):
    ax.text(times[lb] * 1e3, i, f"  err {errors[lb]:.0e}", va="center")
ax.set_xlabel(f"singular_values, c={c}, n={n}, float32: ms (best of 3, shared CPU)")
ax.set_xlim(0, max(times.values()) * 1e3 * 1.5)
fig.tight_layout()
plt.show()
