"""
Strided layers: Theorem 2's polyphase blocks
============================================

A stride-``s`` layer on an ``n x n`` input equals a stride-1 layer on the coarse grid
``n/s`` whose input has ``s^2 c_in`` channels, one per polyphase component (Senderovich et
al. 2022, Theorem 2). :func:`convsv.polyphase_kernel` builds that kernel; its symbol blocks
(:func:`convsv.symbols`) are ``c_out x s^2 c_in``, and their singular values are the layer's.
"""

import matplotlib.pyplot as plt
import numpy as np

import convsv

rng = np.random.default_rng(1)
c_out, c_in, n = 8, 4, 16
k = rng.standard_normal((c_out, c_in, 3, 3))

# %%
# The equivalent stride-1 kernel and the blocks, one per frequency of the coarse grid.
pk = convsv.polyphase_kernel(k, n, stride=2)
blocks = convsv.symbols(k, n, stride=2)
print("kernel", k.shape, "-> polyphase kernel", pk.shape, "-> blocks", blocks.shape)

# %%
# The spectrum from the blocks, checked against the SVD of the dense operator (small
# enough here: ``(c_out (n/2)^2) x (c_in n^2)``).
s1 = convsv.singular_values(k, n)
s2 = convsv.singular_values(k, n, stride=2)
dense = np.linalg.svd(convsv.dense_operator(k, n, stride=2), compute_uv=False)
print(f"stride 2: {s2.size} values, max |convsv - dense SVD| = {np.abs(s2 - dense).max():.1e}")
print(f"norms: stride 1 {s1[0]:.3f}, stride 2 {s2[0]:.3f}")

# %%
# Subsampling keeps a quarter of the rows: the stride-2 spectrum has ``c_out (n/2)^2``
# values, and interlacing puts each one below its stride-1 counterpart.
fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.plot(s1, label=f"stride 1 ({s1.size} values)")
ax.plot(s2, label=f"stride 2 ({s2.size} values)")
ax.plot(np.arange(0, s2.size, 8), dense[::8], "k.", ms=3, label="dense SVD, stride 2")
ax.set_xlabel("index")
ax.set_ylabel("singular value")
ax.legend()
fig.tight_layout()
plt.show()
