"""
The layer's spectrum is not the reshaped kernel's
=================================================

``torch.nn.utils.parametrizations.spectral_norm`` divides a convolution's weight by the
largest singular value of the weight *reshaped* to a ``c_out x (c_in k_h k_w)`` matrix.
That matrix is not the layer's operator: the layer's largest singular value can be up to
``sqrt(k_h k_w)`` times larger (Sedghi et al. 2019, Sec. 1), so a "spectrally normalised"
layer is not 1-Lipschitz. Here we compute both with NumPy and :func:`convsv.singular_values`.
"""

import matplotlib.pyplot as plt
import numpy as np

import convsv

rng = np.random.default_rng(0)
c, n = 16, 16

# %%
# Two 3x3 kernels: a random one, and a smooth one (non-negative taps, as low-pass
# filters learned by early layers often are).
kernels = {
    "random": rng.standard_normal((c, c, 3, 3)),
    "smooth": rng.uniform(0.0, 1.0, (c, c, 3, 3)),
}

# %%
# Normalise each kernel as ``spectral_norm`` does -- by the largest singular value of the
# reshaped ``c_out x (c_in * 9)`` matrix, computed directly -- then ask convsv for the
# layer's true spectrum on a periodic ``n x n`` input.
spectra = {}
for name, k in kernels.items():
    reshaped = np.linalg.svd(k.reshape(c, -1), compute_uv=False)
    k = k / reshaped[0]
    true = convsv.singular_values(k, n)
    spectra[name] = (reshaped / reshaped[0], true)
    print(
        f"{name:>6}: reshaped norm 1.000, layer norm {true[0]:.3f} "
        f"(bound sqrt(9) = 3), {true.size} singular values"
    )

# %%
# The smooth kernel's layer norm is close to the worst case ``3``: its constant (DC)
# frequency adds all nine taps coherently, which the reshaped matrix never sees.
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
for ax, (name, (reshaped, true)) in zip(axes, spectra.items()):
    ax.plot(np.linspace(0, 1, true.size), true, label=f"layer ({true.size} values)")
    ax.plot(np.linspace(0, 1, reshaped.size), reshaped, "o", label="reshaped kernel")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_title(f"{name} kernel, normalised like spectral_norm")
    ax.set_xlabel("index / count")
axes[0].set_ylabel("singular value")
axes[0].legend()
fig.tight_layout()
plt.show()
