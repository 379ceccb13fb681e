"""
Kernels larger than the input
=============================

A 5x5 kernel on a 4x4 periodic input wraps around the torus: taps ``p`` and ``p + n`` act
on the same pixel and add up. Sedghi et al.'s published two NumPy lines
(:func:`convsv.reference.sedghi_singular_values`) take ``fft2(kernel, input_shape)``,
which *crops* the kernel to ``n x n`` and so drops the wrapped taps. convsv evaluates the
symbols from the taps (LFA) and agrees with the dense operator.
"""

import matplotlib.pyplot as plt
import numpy as np

import convsv
from convsv.reference import sedghi_singular_values

rng = np.random.default_rng(2)
c, n = 4, 4
k = rng.standard_normal((c, c, 5, 5))

# %%
# Three answers: convsv, the published lines (which expect the ``(kh, kw, c_in, c_out)``
# layout) and the SVD of the dense operator, the ground truth.
ours = convsv.singular_values(k, n)
sedghi = np.sort(sedghi_singular_values(k.transpose(2, 3, 1, 0), (n, n)).ravel())[::-1]
dense = np.linalg.svd(convsv.dense_operator(k, n), compute_uv=False)
print(f"max |convsv - dense| = {np.abs(ours - dense).max():.1e}")
print(
    f"max |Sedghi - dense| = {np.abs(sedghi - dense).max():.2f}  (norms: true "
    f"{dense[0]:.3f}, cropped {sedghi[0]:.3f})"
)

# %%
# With a 3x3 kernel (smaller than the input) the two agree again.
k3 = k[:, :, :3, :3]
diff3 = np.abs(
    convsv.singular_values(k3, n)
    - np.sort(sedghi_singular_values(k3.transpose(2, 3, 1, 0), (n, n)).ravel())[::-1]
)
print(f"3x3 kernel: max |convsv - Sedghi| = {diff3.max():.1e}")

fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.plot(dense, "k-", lw=3, alpha=0.3, label="dense operator (truth)")
ax.plot(ours, "C0.", label="convsv")
ax.plot(sedghi, "C3x", ms=4, label="Sedghi's lines (cropped kernel)")
ax.set_xlabel("index")
ax.set_ylabel("singular value")
ax.set_title("5x5 kernel on a 4x4 torus")
ax.legend()
fig.tight_layout()
plt.show()
