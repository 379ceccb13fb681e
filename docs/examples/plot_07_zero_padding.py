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

convsv's API for these layers: ``singular_values(..., padding=1)`` (exact, dense, for
small layers), ``singular_value_bounds(...)`` (the interlacing brackets, no dense matrix)
and ``operator_norm(..., full_output=True)`` (the top value by matrix-free
Golub-Kahan-Lanczos, with a proven bracket: a Ritz lower bound and the periodic upper bound).
"""

import matplotlib.pyplot as plt
import numpy as np

import convsv

rng = np.random.default_rng(7)
c, n, p = 8, 10, 1
k = rng.standard_normal((c, c, 3, 3))

# %%
# Exact values (the dense path: small layer), brackets and the certified top value.
exact = np.asarray(convsv.singular_values(k, n, padding=p))
lower, upper = (np.asarray(b) for b in convsv.singular_value_bounds(k, n, padding=p))
top, info = convsv.operator_norm(k, n, padding=p, full_output=True)
top_lower, top_upper, how = float(info.lower), float(info.upper), info.method

periodic_n = float(convsv.operator_norm(k, n))
print(
    f"zero-padded top value {float(top):.6f} ({how}), bracket [{top_lower:.6f}, "
    f"{top_upper:.6f}]; periodic layer on the n-torus: {periodic_n:.6f}"
)
print(f"every value bracketed: {bool(np.all((lower <= exact) & (exact <= upper)))}")

# %%
# Interlacing alone is loose at the top (left: it shifts the lower index by ``r + q``);
# the Rayleigh quotient closes the top value's bracket (right). The periodic value on the
# ``n``-torus is close, but it is not a bound for the zero-padded layer.
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2, 1]})
idx = np.arange(exact.size)
periodic_sv = convsv.singular_values(k, n)
for ax, stop in zip(axes, [exact.size, 12]):
    ax.fill_between(
        idx[:stop], lower[:stop], upper[:stop], color="C0", alpha=0.25, label="interlacing bracket"
    )
    ax.plot(
        idx[:stop],
        exact[:stop],
        "k.-" if stop < 50 else "k-",
        lw=1.2,
        label="zero-padded layer (exact)",
    )
    ax.plot(idx[:stop], periodic_sv[:stop], "C3--", lw=1, label="periodic layer, n-torus")
    ax.set_xlabel("index")
axes[1].errorbar(
    [0],
    [(top_lower + top_upper) / 2],
    yerr=[[(top_upper - top_lower) / 2]] * 2,
    fmt="none",
    ecolor="C2",
    elinewidth=3,
    capsize=6,
    label="top-value bracket",
)
axes[1].set_ylim(exact[11] - 0.5, top_upper + 0.3)
axes[0].set_ylabel("singular value")
axes[0].set_title(f"3x3, c={c}, n={n}, padding={p}")
axes[1].set_title("the top 12")
axes[0].legend()
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()
