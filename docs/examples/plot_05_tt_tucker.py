"""
TT / Tucker-2 compression: ranks, spectrum and time
===================================================

A TT / Tucker-2 kernel ``K = K1 x K2 x K3`` (Senderovich et al. 2022, eq. 4) is a 1x1
convolution, a small ``r2 x r1`` convolution and another 1x1 convolution. With orthonormal
outer cores the nonzero singular values of the layer are those of the small middle layer
(Theorem 1), so :func:`convsv.tt.singular_values` costs roughly ``(r/c)^2`` of the full
computation. Here: how the spectrum and the time change with the rank.
"""

import timeit

import matplotlib.pyplot as plt
import numpy as np

import convsv
import convsv.tt as tt

rng = np.random.default_rng(5)
c, n = 64, 16
# A kernel with decaying channel spectra, as trained layers have.
u, _ = np.linalg.qr(rng.standard_normal((c, c)))
v, _ = np.linalg.qr(rng.standard_normal((c, c)))
decay = np.exp(-np.arange(c) / 8)
core = rng.standard_normal((c, c, 3, 3)) * decay[:, None, None, None] * decay[None, :, None, None]
k = np.einsum("oa,abhw,cb->ochw", u, core, v)


def best_time(fn, repeat=3):
    """Best of ``repeat`` single runs (the least disturbed one)."""
    return min(timeit.repeat(fn, number=1, repeat=repeat))


full = convsv.singular_values(k, n)
t_full = best_time(lambda: convsv.singular_values(k, n))
print(f"full kernel: {full.size} values, norm {full[0]:.4f}, {t_full * 1e3:.0f} ms")

# %%
# Decompose at several ranks; compare the spectra and the time of the TT path.
ranks = [4, 8, 16, 32]
results = {}
for r in ranks:
    tk = tt.decompose(k, ranks=(r, r))
    sv = tt.singular_values(tk, n)
    t = best_time(lambda tk=tk: tt.singular_values(tk, n))
    err = np.linalg.norm(tk.to_full() - k) / np.linalg.norm(k)
    results[r] = (sv, t)
    print(
        f"r={r:2d}: {tk.compression_ratio:5.1f}x fewer parameters, kernel error {err:.1e}, "
        f"norm {sv[0]:.4f}, {t * 1e3:.0f} ms ({t_full / t:.1f}x faster)"
    )

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].semilogy(full, "k", lw=2, label="full kernel")
for r, (sv, _) in results.items():
    axes[0].semilogy(np.maximum(sv, 1e-6), label=f"TT rank {r}")
axes[0].set_ylim(1e-3, None)
axes[0].set_xlabel("index")
axes[0].set_ylabel("singular value")
axes[0].legend(fontsize=8)
axes[1].plot(ranks, [results[r][1] * 1e3 for r in ranks], "o-", label="tt.singular_values")
axes[1].axhline(t_full * 1e3, color="k", ls="--", label="singular_values (full)")
axes[1].set_xlabel("rank r")
axes[1].set_ylabel("time (ms, best of 3; shared CPU)")
axes[1].legend()
fig.tight_layout()
plt.show()
