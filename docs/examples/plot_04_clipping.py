"""
Clipping a layer's operator norm
================================

Sedghi et al. (2019, Sec. 3) clip the singular values of every symbol block, transform
back and crop the result to the kernel's ``3x3`` support. One such step
(:func:`convsv.clip_once`, the published ``Clip_OperatorNorm``) is *not* a projection: the
crop moves the spectrum again, so the norm is not at the bound afterwards, and repeating
the step converges slowly. :func:`convsv.clip` computes the projection itself -- exactly
among all periodic convolutions (``support="full"``) or, keeping the 3x3 support, the
nearest such kernel by ADMM (``support="kernel"``).
"""

import time

import matplotlib.pyplot as plt
import numpy as np

import convsv

rng = np.random.default_rng(3)
c, n, bound = 16, 16, 1.0
k = rng.standard_normal((c, c, 3, 3)) / 12
print(f"norm before: {convsv.operator_norm(k, n):.3f}, bound {bound}")

# %%
# Repeat the published one-step clip and record the norm after each step.
steps = []
kk = k
for _ in range(20):
    kk = convsv.clip_once(kk, n, bound)
    steps.append(float(convsv.operator_norm(kk, n)))
print(
    "clip_once, norm after steps 1, 2, 5, 20:", ", ".join(f"{steps[i]:.4f}" for i in (0, 1, 4, 19))
)

# %%
# The projection, keeping the kernel's support, with its diagnostics (:class:`convsv.ClipInfo`).
t0 = time.perf_counter()
kp, info = convsv.clip(k, n, bound, support="kernel", full_output=True)
t_kernel = time.perf_counter() - t0
print(
    f"clip(support='kernel'): norm {info.max_sv:.4f} (tol=1e-2 relative), "
    f"{info.iterations} ADMM iterations, converged={info.converged}, "
    f"relative distance {info.distance:.3f}, {t_kernel:.2f} s"
)
kf, info_f = convsv.clip(k, n, bound, support="full", full_output=True)
print(
    f"clip(support='full'): norm {info_f.max_sv:.4f}, kernel shape {tuple(kf.shape)}, "
    f"relative distance {info_f.distance:.3f}"
)
dist_once = np.linalg.norm(kk - k) / np.linalg.norm(k)
print(f"20 one-step clips: relative kernel distance {dist_once:.3f}")

# %%
# A small model: clip every convolution of a three-layer stack to norm 1 with the exact
# projection, so the product of the norms -- a Lipschitz bound for this *sequential*
# stack (not for a residual network) -- is at most 1. The full-support projection returns
# ``n x n`` kernels; ``support="kernel"`` keeps the 3x3 shape at the cost of ADMM iterations.
model = [rng.standard_normal(s) / 10 for s in [(8, 3, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3)]]
before = [float(convsv.operator_norm(w, n)) for w in model]
clipped = [convsv.clip(w, n, bound, support="full") for w in model]
after = [float(convsv.operator_norm(w, n)) for w in clipped]
print(
    "model norms before:",
    np.round(before, 3),
    "after:",
    np.round(after, 3),
    f"product {np.prod(after):.3f}",
)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot(range(1, 21), steps, "o-", ms=3, label="repeated clip_once")
axes[0].axhline(info.max_sv, color="C2", label="clip(support='kernel')")
axes[0].axhline(bound, color="gray", ls="--", lw=0.8)
axes[0].set_xlabel("one-step clips applied")
axes[0].set_ylabel("operator norm after")
axes[0].legend()
x = np.arange(len(model))
axes[1].bar(x - 0.2, before, 0.4, label="before")
axes[1].bar(x + 0.2, after, 0.4, label="after clip")
axes[1].axhline(bound, color="gray", ls="--", lw=0.8)
axes[1].set_xticks(x, [f"conv{i + 1}" for i in x])
axes[1].set_ylabel("operator norm")
axes[1].legend()
fig.tight_layout()
plt.show()
