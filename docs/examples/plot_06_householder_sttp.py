"""
Training with a prescribed spectrum: Householder (SVDP) and STTP layers
=======================================================================

Obukhov et al. (2021) parameterise a weight as ``W = U diag(sigma) V^T`` with ``U`` and
``V`` built from Householder reflections (:func:`convsv.stiefel.frame_from_householder`,
compact WY form), so the singular values of ``W`` are exactly ``sigma`` at every step of
training. :func:`convsv.sttp.svdp_matrix` is the plain form, :func:`convsv.sttp.sttp_matrix`
the spectral tensor train (fewer parameters). With ``spectrum="lipschitz"``
(``sigma = S / ||S||_inf``) the *reshaped* weight has norm exactly 1.

For a convolution, the reshaped weight is not the layer (see the first example):
:func:`convsv.operator_norm` measures what the layer really does. A tiny CPU training run:
a 3x3 convolution, 8 -> 16 channels, fitted to a random teacher layer.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import convsv
from convsv import sttp

# Tiny tensors: one thread avoids oversubscribing a busy CPU (100x faster on a shared VM).
torch.set_num_threads(1)
torch.manual_seed(0)
c_in, c_out, n, rank = 8, 16, 8, 8
d_in = c_in * 9


def conv(w, x):
    # a periodic layer, as convsv analyses it
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w.reshape(c_out, c_in, 3, 3))


teacher = torch.randn(c_out, d_in, dtype=torch.float64)
teacher /= torch.linalg.matrix_norm(teacher, ord=2)

# %%
# The two parameterisations and their parameter counts.
svdp = {
    "hu": torch.randn(c_out, rank, dtype=torch.float64) * 0.5,
    "hv": torch.randn(d_in, rank, dtype=torch.float64) * 0.5,
    "s": torch.ones(rank, dtype=torch.float64),
}
spec = sttp.sttp_spec(c_out, d_in, rank, spectrum="lipschitz")
tt_params = {
    "u": [torch.randn(a, b, dtype=torch.float64) * 0.5 for a, b, _ in spec.u_cores],
    "v": [torch.randn(a, b, dtype=torch.float64) * 0.5 for a, b, _ in spec.v_cores],
    "s": torch.ones(rank, dtype=torch.float64),
}
print(
    f"SVDP: {sttp.svdp_dof(c_out, d_in, rank, spectrum='lipschitz')} free parameters, "
    f"STTP (modes {spec.modes_out} x {spec.modes_in}): {spec.n_params}, dense: {c_out * d_in}"
)

weights = {
    "SVDP": lambda p: sttp.svdp_matrix(p["hu"], p["hv"], p["s"], spectrum="lipschitz"),
    "STTP": lambda p: sttp.sttp_matrix(spec, p["u"], p["v"], p["s"]),
}
params = {"SVDP": svdp, "STTP": tt_params}

# %%
# Adam on the mean squared error to the teacher's outputs; every 10 steps record the
# reshaped weight's norm and the layer's operator norm on the ``8 x 8`` torus.
history = {}
for name, p in params.items():
    leaves = [t for v in p.values() for t in (v if isinstance(v, list) else [v])]
    for t in leaves:
        t.requires_grad_(True)
    opt = torch.optim.Adam(leaves, lr=0.05)
    losses, reshaped, layer = [], [], []
    for step in range(120):
        x = torch.randn(32, c_in, n, n, dtype=torch.float64)
        w = weights[name](p)
        loss = F.mse_loss(conv(w, x), conv(teacher, x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            w = w.detach()
            reshaped.append(torch.linalg.matrix_norm(w, ord=2).item())
            layer.append(float(convsv.operator_norm(w.reshape(c_out, c_in, 3, 3), n)))
    history[name] = (losses, reshaped, layer)
    print(
        f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.4f}; reshaped norm in "
        f"[{min(reshaped):.6f}, {max(reshaped):.6f}]; layer norm {layer[-1]:.3f}"
    )

teacher_layer = float(convsv.operator_norm(teacher.reshape(c_out, c_in, 3, 3), n))
print(f"teacher: reshaped norm 1, layer norm {teacher_layer:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name, (losses, reshaped, layer) in history.items():
    axes[0].semilogy(losses, label=name)
    steps = np.arange(0, 120, 10)
    axes[1].plot(steps, reshaped, "--", label=f"{name}: reshaped weight")
    axes[1].plot(steps, layer, "o-", ms=3, label=f"{name}: layer (convsv)")
axes[0].set_xlabel("step")
axes[0].set_ylabel("training loss")
axes[0].legend()
axes[1].set_xlabel("step")
axes[1].set_ylabel("largest singular value")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()
