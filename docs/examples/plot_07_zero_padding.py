"""
Zero padding: exact top value and certified brackets
====================================================

``torch.nn.Conv2d(c_in, c_out, 3, padding=1)`` pads with zeros: its operator is not
periodic and has no exact block diagonalisation. It is, however, a *submatrix* of the
periodic layer on the padded torus ``N = n + 2p``: keep the outputs that the zero-padded
layer computes and the inputs that are not padding. Thompson's interlacing theorem then
brackets every singular value by the periodic spectrum, which convsv computes exactly:
``sigma_{i + r + q}(periodic) <= sigma_i(zero-padded) <= sigma_i(periodic)`` with ``r``
rows and ``q`` columns removed, and any Rayleigh quotient ``||A x|| / ||x||`` is a lower
bound for the top.

convsv's API for these layers is ``singular_values(..., padding=1)``,
``singular_value_bounds(...)`` and ``operator_norm(..., full_output=True)``. Where this
build does not have them yet, the example computes the same quantities by hand (dense SVD
and interlacing) and says so.
"""

import matplotlib.pyplot as plt
import numpy as np

import convsv

rng = np.random.default_rng(7)
c, n, p = 8, 12, 1
k = rng.standard_normal((c, c, 3, 3))
N = n + 2 * p

# %%
# Exact values, bracket and top value, through the API when it is there.
if hasattr(convsv, "singular_value_bounds"):
    exact = np.asarray(convsv.singular_values(k, n, padding=p))
    lower, upper = (np.asarray(b) for b in convsv.singular_value_bounds(k, n, padding=p))
    top, info = convsv.operator_norm(k, n, padding=p, full_output=True)
    top_lower, top_upper, how = float(info.lower), float(info.upper), info.method
else:
    print("convsv.singular_value_bounds is not in this build: dense SVD and interlacing "
          "computed here instead.")
    # Output i reads padded input i + t, i.e. input i + t - p: on the N-torus the zero-padded
    # layer keeps outputs 0..n-1 and inputs p..p+n-1 of every channel and axis.
    periodic_op = convsv.dense_operator(k, N)
    grid = np.arange(N)
    rows = np.add.outer(np.arange(c) * N * N, np.add.outer(grid[:n] * N, grid[:n])).ravel()
    cols = np.add.outer(np.arange(c) * N * N,
                        np.add.outer(grid[p:p + n] * N, grid[p:p + n])).ravel()
    sub = periodic_op[np.ix_(rows, cols)]
    exact = np.linalg.svd(sub, compute_uv=False)
    periodic = convsv.singular_values(k, N)
    removed = (periodic_op.shape[0] - rows.size) + (periodic_op.shape[1] - cols.size)
    upper = periodic[: exact.size]
    lower = np.concatenate([periodic[removed:], np.zeros(removed)])[: exact.size]
    x = rng.standard_normal(sub.shape[1])
    for _ in range(30):  # a few power steps; the Rayleigh quotient is a proven lower bound
        x = sub.T @ (sub @ x)
        x /= np.linalg.norm(x)
    top, top_lower, top_upper, how = exact[0], np.linalg.norm(sub @ x), upper[0], "dense"

periodic_n = float(convsv.operator_norm(k, n))
print(f"zero-padded top value {float(top):.6f} ({how}), bracket [{top_lower:.6f}, "
      f"{top_upper:.6f}]; periodic layer on the n-torus: {periodic_n:.6f}")
print(f"every value bracketed: {bool(np.all((lower <= exact) & (exact <= upper)))}")

# %%
# The bracket is tight at the top and loosens further down, where the removed rows and
# columns shift the lower index; the periodic value on the ``n``-torus is *not* a bound.
fig, ax = plt.subplots(figsize=(7, 3.8))
idx = np.arange(exact.size)
ax.fill_between(idx, lower, upper, color="C0", alpha=0.25, label="certified bracket")
ax.plot(idx, exact, "k", lw=1.2, label="zero-padded layer (exact)")
ax.plot(np.arange(c * n * n), convsv.singular_values(k, n), "C3--", lw=1,
        label="periodic layer, n-torus")
ax.set_xlabel("index")
ax.set_ylabel("singular value")
ax.set_title(f"3x3, c={c}, n={n}, padding={p}")
ax.legend()
fig.tight_layout()
plt.show()
