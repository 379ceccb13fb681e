r"""PyTorch padding geometry: which periodic layer embeds a real convolutional layer.

Every layer convsv accepts -- ``torch.nn.Conv{1,2,3}d`` with any ``padding`` /
``padding_mode`` / ``stride`` / ``dilation`` / ``groups``, ``ConvTranspose{1,2,3}d`` with
``output_padding``, and convsv's own periodic (``padding="circular"``) and centred
zero-padded (``padding="zeros"``) layers -- is written in *conv form*: per spatial axis an
input of size ``n``, a padded signal ``xpad[j] = x[src(j)]`` (or 0), and outputs

.. math:: y[o, i] = \sum_{c, p} K[o, c, p]\, x_{pad}[c, i s + p \delta], \quad 0 \le i < out.

A transposed layer is the transpose of the conv form of the convolution whose gradient
it is (input size ``n = (n_T - 1) s - 2 p + \delta (k - 1) + output\_padding + 1``).

**Embedding.** Choose a torus size ``N`` per axis and put padded index ``j`` at torus
position ``j mod N``. If every two *read* indices ``j != j'`` with ``j = j' mod N`` carry the
same value (the same source ``x[a]``, or both zero), then ``z = E x`` with ``E[t, src(j)] = 1``
is well defined and the layer is

.. math:: A = R\, A_{per}(N)\, E,

with ``A_per(N)`` the periodic convolution on the torus (stride ``s`` if ``s | N`` and
``out <= N / s``, else stride 1 with rows ``s * arange(out)``) and ``R`` the selection of
the kept rows (distinct because ``out <= N/s``, resp. ``s (out - 1) < N``). ``E`` is 0/1
with at most one 1 per row, so ``E^T E = diag(column counts)``: ``E = W D`` with ``W``
orthonormal columns and ``D >= 1`` on the nonzero columns; columns of ``x`` the layer
never reads are zero columns of ``A`` and may be placed on any torus position no kept row
reads. Zero padding needs ``N >= n + max(lo, hi)`` in the worst case (a wrapped read
``j - N`` of the right pad must land left of ``x``: ``j < lo + N``; a left-pad read
``j + N`` must land right of it: ``N >= n + lo - j``); fewer suffice when the stride skips
reads, so the smallest valid ``N`` is found by checking the condition above directly
(a few integer operations per candidate). Among the per-axis candidates (stride ``s``
with ``s | N``, or stride 1) the combination with the fewest removed rows + columns wins,
since that count is the index shift of the interlacing lower bound
(:mod:`convsv.bounds`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ._array_api import device_of
from ._backends import torch_conv
from ._validation import (
    ConvSpec,
    _as_int,
    check_choice,
    conv_spec,
    normalize_tuple,
    prepare_kernel,
)

__all__ = [
    "PADDINGS",
    "PADDING_MODES",
    "PADDING_STRINGS",
    "Geometry",
    "conv_adjoint",
    "conv_apply",
    "layer_geometry",
]

#: String values of ``padding`` with convsv's own meaning (periodic / centred zeros).
PADDINGS = ("circular", "zeros")
#: String values of ``padding`` with PyTorch's meaning.
PADDING_STRINGS = ("same", "valid")
#: ``padding_mode`` values (PyTorch's).
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
#: ``Geometry.mode`` values.
MODES = ("periodic", "centred", *PADDING_MODES)


@dataclass(frozen=True, eq=False)
class Geometry:
    """A layer written as ``A = R A_per(N) E`` (see the module docstring).

    ``conv`` is the periodic convolution on the torus (``conv.n = N``); ``n`` / ``out`` are
    the conv-form input/output sizes; ``embed_src[j]`` ``(N_j,)`` is the input index each
    torus position holds (-1: zero), i.e. ``E_j[t, embed_src[j][t]] = 1`` (``embed`` builds
    the dense ``E_j`` ``(N_j, n_j)`` on demand); ``rows[j]`` the kept periodic outputs;
    ``pad_src[j]`` ``(L_j,)`` the input index of every padded position of the read range
    ``L_j = (out_j - 1) s_j + dilation_j (k_j - 1) + 1`` (-1: zero; what
    :func:`conv_apply` gathers); ``stride`` the layer's stride; ``lo`` the left padding.
    For ``transposed`` the public operator is ``A^T``.
    """

    conv: ConvSpec
    n: tuple[int, ...]
    out: tuple[int, ...]
    embed_src: tuple[np.ndarray, ...]
    rows: tuple[np.ndarray, ...]
    mode: str
    transposed: bool
    stride: tuple[int, ...]
    lo: tuple[int, ...]
    pad_src: tuple[np.ndarray, ...]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def embed(self) -> tuple[np.ndarray, ...]:
        """Dense ``E_j`` ``(N_j, n_j)``, 0/1, at most one 1 per row (built on demand)."""
        if "embed" not in self._cache:
            mats = []
            for src, n in zip(self.embed_src, self.n):
                e = np.zeros((src.size, n), dtype=np.int64)
                ok = src >= 0
                e[np.nonzero(ok)[0], src[ok]] = 1
                mats.append(e)
            self._cache["embed"] = tuple(mats)
        return self._cache["embed"]

    def _counts(self) -> list[np.ndarray]:
        """Column counts of every ``E_j`` (the diagonal of ``E_j^T E_j``)."""
        return [np.bincount(src[src >= 0], minlength=n) for src, n in zip(self.embed_src, self.n)]

    @property
    def d(self) -> int:
        return len(self.n)

    @property
    def c_out(self) -> int:
        """Conv-form output channels (kernel axis 0)."""
        return self.conv.c_out

    @property
    def c_in(self) -> int:
        """Conv-form input channels."""
        return self.conv.c_in

    @property
    def periodic_out(self) -> tuple[int, ...]:
        """Outputs of the periodic layer per axis (``N // s`` or ``N``)."""
        return self.conv.out

    @property
    def removed_rows(self) -> int:
        """Rows of ``A_per`` not in the layer (``R`` drops them)."""
        return self.c_out * (math.prod(self.periodic_out) - math.prod(self.out))

    @property
    def removed_cols(self) -> int:
        """Columns of ``A_per`` outside the range of ``W`` (``E = W D``), so that
        ``sigma_{i + removed_rows + removed_cols}(A_per) <= sigma_i(A)``."""
        used = math.prod(int(np.count_nonzero(c)) for c in self._counts())
        return self.c_in * (math.prod(self.conv.n) - used)

    @property
    def embed_norm(self) -> float:
        """``||E||_2 = prod_j sqrt(max column count of E_j)`` (``E^T E`` is diagonal)."""
        return math.prod(math.sqrt(float(max(1, int(c.max(initial=0))))) for c in self._counts())

    @property
    def exact_periodic(self) -> bool:
        """True iff every ``E_j`` is a permutation and ``R`` keeps every row."""
        for c, n, big, r, po in zip(
            self._counts(), self.n, self.conv.n, self.rows, self.periodic_out
        ):
            if n != big or r.size != po or not np.all(c == 1):
                return False
        return True  # n == N columns each used once: every torus position holds one input

    @property
    def conv_shape(self) -> tuple[int, int]:
        """(rows, cols) of the conv form ``A``."""
        return self.c_out * math.prod(self.out), self.c_in * math.prod(self.n)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the public operator (``A^T`` when transposed)."""
        r, c = self.conv_shape
        return (c, r) if self.transposed else (r, c)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one public input signal ``(channels, *spatial)``."""
        return (self.c_out, *self.out) if self.transposed else (self.c_in, *self.n)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of one public output signal ``(channels, *spatial)``."""
        return (self.c_in, *self.n) if self.transposed else (self.c_out, *self.out)

    @property
    def n_singular_values(self) -> int:
        return min(self.shape)


def _source(j: np.ndarray, n: int, lo: int, mode: str) -> np.ndarray:
    """Input index read at padded index ``j`` (-1: a zero)."""
    a = j - lo
    if mode in ("zeros", "centred"):
        return np.where((a >= 0) & (a < n), a, -1)
    if mode in ("periodic", "circular"):
        return a % n
    if mode == "replicate":
        return np.clip(a, 0, n - 1)
    if n == 1:  # reflect
        return np.zeros_like(a)
    per = 2 * (n - 1)
    a = a % per
    return np.where(a < n, a, per - a)


def _reads(k: int, s: int, dl: int, out: int) -> np.ndarray:
    return (np.arange(out)[:, None] * s + np.arange(k)[None, :] * dl).reshape(-1)


def _consistent(jm: np.ndarray, src: np.ndarray, big: int) -> bool:
    lo = np.full(big, np.iinfo(np.int64).max)
    hi = np.full(big, np.iinfo(np.int64).min)
    np.minimum.at(lo, jm, src)
    np.maximum.at(hi, jm, src)
    hit = lo <= hi
    return bool(np.all(lo[hit] == hi[hit]))


def _embedding(
    reads: np.ndarray, src: np.ndarray, big: int, n: int, lo: int, mode: str
) -> np.ndarray:
    """``embed_src`` ``(N,)``: read positions first, then unused inputs on unread positions."""
    emb = np.full(big, -1, dtype=np.int64)
    jm = reads % big
    ok = src >= 0
    emb[jm[ok]] = src[ok]
    hit = np.zeros(big, dtype=bool)
    hit[jm] = True
    used = np.zeros(n, dtype=bool)
    used[emb[emb >= 0]] = True
    # an unread torus position can carry an input the layer never reads (a zero column of
    # A): this keeps E a permutation where possible and shrinks removed_cols
    rest = []
    for t in np.nonzero(~hit)[0].tolist():
        a = int(_source(np.asarray([t]), n, lo, mode)[0])
        if a >= 0 and not used[a]:
            emb[t] = a
            used[a] = True
        else:
            rest.append(t)
    for t, a in zip(rest, np.nonzero(~used)[0].tolist()):
        emb[t] = a
    return emb


def _axis_candidates(
    k: int, n: int, s: int, dl: int, lo: int, out: int, mode: str
) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Smallest valid torus per periodic stride: ``[(N, stride, rows, E), ...]``."""
    reads = _reads(k, s, dl, out)
    src = _source(reads, n, lo, mode)
    span = int(reads.max()) + 1  # no wrap at all from here on
    start = max(1, np.unique(src).size)
    found: dict[int, int] = {}
    for big in range(start, span + s + 1):
        want = [
            st
            for st in ((s, 1) if s > 1 else (1,))
            if st not in found
            and (
                (st == s and big % s == 0 and out <= big // s) or (st == 1 and s * (out - 1) < big)
            )
        ]
        if want and _consistent(reads % big, src, big):
            for st in want:
                found[st] = big
        if len(found) == (2 if s > 1 else 1):
            break
    cands = []
    for st, big in sorted(found.items(), reverse=True):
        rows = np.arange(out) if st == s else s * np.arange(out)
        cands.append((big, st, rows, _embedding(reads, src, big, n, lo, mode)))
    return cands


def _pad_source(k: int, n: int, s: int, dl: int, lo: int, out: int, mode: str) -> np.ndarray:
    length = (out - 1) * s + dl * (k - 1) + 1
    return _source(np.arange(length), n, lo, mode)


def _check_int_tuple(value: Any, name: str, d: int, minimum: int) -> tuple[int, ...]:
    return normalize_tuple(value, name, d, minimum=minimum)


def _conv_form(
    spec_k: tuple[int, ...],
    n_pub: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    padding: Any,
    padding_mode: Any,
    transposed: bool,
    output_padding: Any,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str]:
    """Validate the PyTorch-style keywords; return conv-form ``(n, lo, out, mode)``."""
    d = len(spec_k)
    if isinstance(padding, str):
        check_choice(padding, "padding", PADDINGS + PADDING_STRINGS)
    if isinstance(padding, str) and padding in PADDINGS:
        if padding_mode is not None:
            msg = (
                f"padding_mode={padding_mode!r} applies to padding given as an int, a tuple, "
                f"'same' or 'valid' (PyTorch's meaning); padding={padding!r} is convsv's "
                f"{'periodic' if padding == 'circular' else 'centred zero-padded'} layer. "
                f"Pass padding_mode=None, or e.g. padding=1, padding_mode='circular'"
            )
            raise ValueError(msg)
        if _check_int_tuple(output_padding, "output_padding", d, 0) != (0,) * d:
            msg = (
                f"output_padding={output_padding!r} needs padding given as an int or tuple "
                f"(PyTorch's ConvTranspose); got padding={padding!r}"
            )
            raise ValueError(msg)
        mode = "periodic" if padding == "circular" else "centred"
        n = tuple(v * s for v, s in zip(n_pub, stride)) if transposed else n_pub
        out = tuple(-(-v // s) for v, s in zip(n, stride))
        lo = (
            (0,) * d
            if mode == "periodic"
            else tuple(dl * (k - 1) // 2 for k, dl in zip(spec_k, dilation))
        )
        return n, lo, out, mode
    mode = (
        "zeros"
        if padding_mode is None
        else check_choice(padding_mode, "padding_mode", PADDING_MODES)
    )
    op = _check_int_tuple(output_padding, "output_padding", d, 0)
    if transposed:
        if mode != "zeros":
            msg = (
                f"padding_mode={padding_mode!r}: transposed convolutions support only "
                f"'zeros' (as torch.nn.ConvTranspose{d}d)"
            )
            raise ValueError(msg)
        if isinstance(padding, str):
            msg = (
                f"padding={padding!r} is not accepted for transposed=True (torch's "
                f"ConvTranspose{d}d takes an int or tuple of ints)"
            )
            raise ValueError(msg)
        pads = _check_int_tuple(padding, "padding", d, 0)
        for o, s, dl in zip(op, stride, dilation):
            if o >= max(s, dl):
                msg = (
                    f"output_padding={output_padding!r} must be smaller than either stride "
                    f"or dilation on every axis (as torch), got stride={stride}, "
                    f"dilation={dilation}"
                )
                raise ValueError(msg)
        n = tuple(
            (v - 1) * s - 2 * p + dl * (k - 1) + o + 1
            for v, s, p, dl, k, o in zip(n_pub, stride, pads, dilation, spec_k, op)
        )
        if any(v < 1 for v in n):
            msg = (
                f"padding={padding!r} is too large: the transposed layer's output size "
                f"would be {n} for input size n={n_pub} (torch refuses this too)"
            )
            raise ValueError(msg)
        return n, pads, tuple(n_pub), mode
    if op != (0,) * d:
        msg = f"output_padding={output_padding!r} is only meaningful with transposed=True"
        raise ValueError(msg)
    if isinstance(padding, str):
        if padding == "valid":
            lo = hi = (0,) * d
        else:  # "same": torch splits the total dilation * (k - 1) as left = total // 2
            if any(s != 1 for s in stride):
                msg = (
                    f"padding='same' is not supported for strided convolutions (as torch), "
                    f"got stride={stride}"
                )
                raise ValueError(msg)
            tot = tuple(dl * (k - 1) for k, dl in zip(spec_k, dilation))
            lo = tuple(t // 2 for t in tot)
            hi = tuple(t - t // 2 for t in tot)
    else:
        lo = hi = _check_int_tuple(padding, "padding", d, 0)
    for n, a, b in zip(n_pub, lo, hi):
        pmax = max(a, b)
        if mode == "reflect" and pmax >= n:
            msg = (
                f"padding={padding!r} with padding_mode='reflect' needs padding < n on every "
                f"axis (as torch), got n={n_pub}"
            )
            raise ValueError(msg)
        if mode == "circular" and pmax > n:
            msg = (
                f"padding={padding!r} with padding_mode='circular' needs padding <= n on "
                f"every axis (as torch), got n={n_pub}"
            )
            raise ValueError(msg)
    out = tuple(
        (n + a + b - dl * (k - 1) - 1) // s + 1
        for n, a, b, dl, k, s in zip(n_pub, lo, hi, dilation, spec_k, stride)
    )
    if any(n + a + b - dl * (k - 1) < 1 for n, a, b, dl, k in zip(n_pub, lo, hi, dilation, spec_k)):
        msg = (
            f"the kernel (size {spec_k}, dilation {dilation}) is larger than the padded "
            f"input (n={n_pub}, padding={padding!r}); torch refuses this layer too"
        )
        raise ValueError(msg)
    return tuple(n_pub), lo, out, mode


def layer_geometry(
    kernel_oihw: Any,
    n: Any,
    stride: Any = 1,
    dilation: Any = 1,
    groups: Any = 1,
    padding: Any = "circular",
    padding_mode: Any = None,
    transposed: bool = False,
    output_padding: Any = 0,
) -> Geometry:
    """Validate a layer's keywords and embed it in a periodic layer (module docstring).

    ``n`` is the public input size (for ``transposed``, the ConvTranspose input size).
    ``kernel_oihw`` is the conv-form kernel: PyTorch's Conv weight, or ConvTranspose's
    ``(c_in, c_out/groups, *k)`` weight (the conv whose transpose the layer is).
    """
    if not isinstance(transposed, (bool, np.bool_)):
        msg = f"transposed must be True or False, got {transposed!r}"
        raise TypeError(msg)
    transposed = bool(transposed)
    base = conv_spec(kernel_oihw, n, stride, dilation, groups)
    if not isinstance(padding, str):
        if isinstance(padding, (tuple, list)):
            padding = tuple(_as_int(v, "padding") for v in padding)
        else:
            padding = _as_int(padding, "padding")
    n_c, lo, out, mode = _conv_form(
        base.k,
        base.n,
        base.stride,
        base.dilation,
        padding,
        padding_mode,
        transposed,
        output_padding,
    )
    per_axis = [
        _axis_candidates(k, nn, s, dl, a, o, mode)
        for k, nn, s, dl, a, o in zip(base.k, n_c, base.stride, base.dilation, lo, out)
    ]
    best = None
    for combo in itertools.product(*per_axis):
        big = tuple(c[0] for c in combo)
        pst = tuple(c[1] for c in combo)
        pout = tuple(b // st for b, st in zip(big, pst))
        used = math.prod(int(np.unique(c[3][c[3] >= 0]).size) for c in combo)
        removed = base.c_out * (math.prod(pout) - math.prod(out)) + base.c_in * (
            math.prod(big) - used
        )
        key = (removed, -math.prod(pst))
        if best is None or key < best[0]:
            best = (key, combo)
    combo = best[1]
    conv = ConvSpec(
        c_out=base.c_out,
        c_in=base.c_in,
        groups=base.groups,
        k=base.k,
        n=tuple(c[0] for c in combo),
        stride=tuple(c[1] for c in combo),
        dilation=base.dilation,
    )
    pads = tuple(
        _pad_source(k, nn, s, dl, a, o, mode)
        for k, nn, s, dl, a, o in zip(base.k, n_c, base.stride, base.dilation, lo, out)
    )
    return Geometry(
        conv=conv,
        n=n_c,
        out=out,
        embed_src=tuple(c[3] for c in combo),
        rows=tuple(c[2] for c in combo),
        mode=mode,
        transposed=transposed,
        stride=base.stride,
        lo=lo,
        pad_src=pads,
    )


# --------------------------------------------------------------------------------------
# matrix-free conv form (tap domain): what Krylov solvers call


def _runs(src: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``src`` as runs ``(j0, length, a0, step)``: ``src[j0 + i] = a0 + step * i``.

    ``a0 = -1`` marks a run of zeros; ``step`` is 1 (interior, circular wrap), -1
    (reflection) or 0 (replication). Padding has a handful of runs per axis, so the
    padded signal is a few slices and the adjoint a few slice additions: ``O(n)``.
    """
    runs = []
    j, size = 0, src.size
    while j < size:
        a0 = int(src[j])
        if a0 < 0:
            stop = j + 1
            while stop < size and src[stop] < 0:
                stop += 1
            runs.append((j, stop - j, -1, 0))
            j = stop
            continue
        step = 1
        if j + 1 < size and src[j + 1] >= 0 and int(src[j + 1]) - a0 in (-1, 0, 1):
            step = int(src[j + 1]) - a0
        stop = j + 1
        while stop < size and src[stop] >= 0 and int(src[stop]) == a0 + step * (stop - j):
            stop += 1
        runs.append((j, stop - j, a0, step))
        j = stop
    return runs


def _axis_runs(geom: Geometry) -> list[list[tuple[int, int, int, int]]]:
    if "runs" not in geom._cache:
        geom._cache["runs"] = [_runs(src) for src in geom.pad_src]
    return geom._cache["runs"]


def _take(v: Any, ax: int, start: int, stop: int) -> Any:
    idx = [slice(None)] * v.ndim
    idx[ax] = slice(start, stop)
    return v[tuple(idx)]


def _pad(geom: Geometry, x: Any, xp: ModuleType) -> Any:
    """``(B, c, *n)`` -> ``(B, c, *L)``: the padded read range, per axis, from slices."""
    dev = device_of(x)
    for j, runs in enumerate(_axis_runs(geom)):
        ax = 2 + j
        n = int(x.shape[ax])
        if len(runs) == 1 and runs[0] == (0, n, 0, 1):
            continue
        parts = []
        for _, length, a0, step in runs:
            if a0 < 0:
                shp = list(x.shape)
                shp[ax] = length
                parts.append(xp.zeros(tuple(shp), dtype=x.dtype, device=dev))
            elif step == 1:
                parts.append(_take(x, ax, a0, a0 + length))
            elif step == -1:
                parts.append(xp.flip(_take(x, ax, a0 - length + 1, a0 + 1), axis=ax))
            else:
                shp = list(x.shape)
                shp[ax] = length
                parts.append(xp.broadcast_to(_take(x, ax, a0, a0 + 1), tuple(shp)))
        x = parts[0] if len(parts) == 1 else xp.concat(parts, axis=ax)
    return x


def _unpad(geom: Geometry, g: Any, xp: ModuleType) -> Any:
    """Adjoint of :func:`_pad`: each run's slice is added back onto the inputs it copied."""
    dev = device_of(g)
    for j, runs in enumerate(_axis_runs(geom)):
        ax = 2 + j
        n = geom.n[j]
        if len(runs) == 1 and runs[0] == (0, n, 0, 1):
            continue
        shp = list(g.shape)
        shp[ax] = n
        out = xp.zeros(tuple(shp), dtype=g.dtype, device=dev)
        for j0, length, a0, step in runs:
            if a0 < 0:
                continue
            piece = _take(g, ax, j0, j0 + length)
            if step == 1:
                lo, hi = a0, a0 + length
            elif step == -1:
                piece, lo, hi = xp.flip(piece, axis=ax), a0 - length + 1, a0 + 1
            else:
                piece, lo, hi = xp.sum(piece, axis=ax, keepdims=True), a0, a0 + 1
            idx = [slice(None)] * out.ndim
            idx[ax] = slice(lo, hi)
            out[tuple(idx)] = out[tuple(idx)] + piece
        g = out
    return g


def _native_zero_padding(geom: Geometry) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(padding, output_padding)`` when the padding is torch's own symmetric zero padding.

    Then ``F.conv{d}d(x, padding=p)`` reads exactly the padded range that :func:`_pad`
    would build, and ``F.conv_transpose{d}d(y, padding=p, output_padding=op)`` is the exact
    adjoint on the input of size ``n``: no padded copy, no fold back (:func:`_unpad`).
    ``None`` for any other padding (reflect, replicate, circular, asymmetric "same").
    """
    if "native" not in geom._cache:
        pads, ops = [], []
        for src, n, o, s, dl, k in zip(
            geom.pad_src, geom.n, geom.out, geom.stride, geom.conv.dilation, geom.conv.k
        ):
            size = int(src.size)
            p = int(np.argmax(src >= 0)) if np.any(src >= 0) else -1
            want = np.arange(size) - p
            want[(want < 0) | (want >= n)] = -1
            op = n - ((o - 1) * s - 2 * p + dl * (k - 1) + 1)
            if (
                p < 0
                or not np.array_equal(src, want)
                or size > n + 2 * p
                or (n + 2 * p - dl * (k - 1) - 1) // s + 1 != o
                or not 0 <= op < max(s, dl)
            ):
                geom._cache["native"] = None
                break
            pads.append(p)
            ops.append(op)
        else:
            geom._cache["native"] = (tuple(pads), tuple(ops))
    return geom._cache["native"]


def _tap_slices(geom: Geometry, tap: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(p * dl, p * dl + (o - 1) * s + 1, s)
        for p, dl, o, s in zip(tap, geom.conv.dilation, geom.out, geom.stride)
    )


def _flatten_batch(v: Any, lead: int, d: int, xp: ModuleType) -> tuple[Any, tuple[int, ...]]:
    batch = tuple(int(b) for b in v.shape[: -d - 1])
    return xp.reshape(v, (math.prod(batch), lead, *v.shape[-d:])), batch


#: Byte budget for one block of gathered taps (im2col); below it all taps go in one GEMM.
TAP_BLOCK_BYTES = 2**27


def _tap_blocks(geom: Geometry, rows: int, itembytes: int) -> list[list[tuple[int, ...]]]:
    """Taps in blocks whose gathered slices ``(rows, npos)`` each fit TAP_BLOCK_BYTES.

    One GEMM over a block of ``T`` taps (``(c_out, c_in T) @ (c_in T, npos)``) runs near
    BLAS peak; a GEMM per tap on strided slices measured 2-4x slower (c=256, n=32).
    """
    taps = list(itertools.product(*(range(k) for k in geom.conv.k)))
    per = max(1, rows * math.prod(geom.out) * itembytes)
    size = max(1, min(len(taps), TAP_BLOCK_BYTES // per))
    return [taps[i : i + size] for i in range(0, len(taps), size)]


def _kernel_block(kg: Any, block: list[tuple[int, ...]], geom: Geometry, xp: ModuleType) -> Any:
    """``(G, co_g, ci_g * T_block)`` with the tap index fastest (matches the gather)."""
    g, co_g, ci_g = (int(v) for v in kg.shape[:3])
    flat = xp.reshape(kg, (g, co_g, ci_g, math.prod(geom.conv.k)))
    ids = [int(np.ravel_multi_index(t, geom.conv.k)) for t in block]
    if ids == list(range(ids[0], ids[0] + len(ids))):
        part = flat[..., ids[0] : ids[0] + len(ids)]
    else:  # pragma: no cover - blocks are contiguous runs of the C-order tap list
        part = xp.stack([flat[..., i] for i in ids], axis=-1)
    return xp.reshape(part, (g, co_g, ci_g * len(ids)))


def conv_apply(kernel_oihw: Any, geom: Geometry, x: Any, xp: ModuleType) -> Any:
    """The conv form ``A x``: ``(..., c_in, *n)`` -> ``(..., c_out, *out)`` in the tap domain.

    Pads once (concatenation for zero padding, ``P_j`` otherwise), gathers the strided
    slice of every kernel tap (im2col, in blocks of bounded memory) and multiplies by the
    kernel in one batched GEMM per block (per group): ``O(input)`` memory, no FFT, no
    dense matrix. ``kernel_oihw`` and ``x`` must share dtype and device.
    """
    d, g = geom.d, geom.conv.groups
    co, ci = geom.c_out, geom.c_in
    xb, batch = _flatten_batch(x, ci, d, xp)
    b = int(xb.shape[0])
    native = _native_zero_padding(geom)
    if native is not None:
        fast = torch_conv(
            kernel_oihw, xb, geom.stride, geom.conv.dilation, g, adjoint=False, padding=native[0]
        )
        if fast is not None:
            return xp.reshape(fast, (*batch, co, *geom.out))
    xpad = _pad(geom, xb, xp)
    fast = torch_conv(kernel_oihw, xpad, geom.stride, geom.conv.dilation, g, adjoint=False)
    if fast is not None:
        return xp.reshape(fast, (*batch, co, *geom.out))
    npos = math.prod(geom.out)
    kg = xp.reshape(kernel_oihw, (g, co // g, ci // g, *geom.conv.k))
    y = None
    for block in _tap_blocks(geom, b * ci, _itembytes(xb, xp)):
        cols = xp.stack(
            [xpad[(slice(None), slice(None), *_tap_slices(geom, t))] for t in block], axis=2
        )  # (B, c_in, T, *out)
        cols = xp.reshape(cols, (b, g, ci // g * len(block), npos))
        term = _kernel_block(kg, block, geom, xp) @ cols  # (B, G, co_g, npos)
        y = term if y is None else y + term
    return xp.reshape(y, (*batch, co, *geom.out))


def conv_adjoint(kernel_oihw: Any, geom: Geometry, y: Any, xp: ModuleType) -> Any:
    """The exact adjoint ``A^H y``: ``(..., c_out, *out)`` -> ``(..., c_in, *n)``.

    One GEMM per tap block gives every tap's ``K_p^H y``; each is added into its strided
    slice of the padded range, then ``P^T`` folds the padding back onto the input.
    """
    d, g = geom.d, geom.conv.groups
    co, ci = geom.c_out, geom.c_in
    yb, batch = _flatten_batch(y, co, d, xp)
    b = int(yb.shape[0])
    native = _native_zero_padding(geom)
    if native is not None:
        fast = torch_conv(
            kernel_oihw,
            yb,
            geom.stride,
            geom.conv.dilation,
            g,
            adjoint=True,
            padding=native[0],
            output_padding=native[1],
        )
        if fast is not None:
            return xp.reshape(fast, (*batch, ci, *geom.n))
    fast = torch_conv(kernel_oihw, yb, geom.stride, geom.conv.dilation, g, adjoint=True)
    if fast is not None:
        return xp.reshape(_unpad(geom, fast, xp), (*batch, ci, *geom.n))
    npos = math.prod(geom.out)
    t = xp.reshape(yb, (b, g, co // g, npos))
    kg = xp.reshape(kernel_oihw, (g, co // g, ci // g, *geom.conv.k))
    if xp.isdtype(kg.dtype, "complex floating"):
        kg = xp.conj(kg)
    lengths = tuple(int(p.size) for p in geom.pad_src)
    gpad = xp.zeros((b, ci, *lengths), dtype=yb.dtype, device=device_of(yb))
    for block in _tap_blocks(geom, b * ci, _itembytes(yb, xp)):
        kh = xp.matrix_transpose(_kernel_block(kg, block, geom, xp))  # (G, ci_g T, co_g)
        cols = xp.reshape(kh @ t, (b, ci, len(block), *geom.out))
        for i, tap in enumerate(block):
            idx = (slice(None), slice(None), *_tap_slices(geom, tap))
            gpad[idx] = gpad[idx] + cols[:, :, i, ...]
    x = _unpad(geom, gpad, xp)
    return xp.reshape(x, (*batch, ci, *geom.n))


def _itembytes(v: Any, xp: ModuleType) -> int:
    kind = "complex floating" if xp.isdtype(v.dtype, "complex floating") else "real floating"
    bits = xp.finfo(v.dtype).bits
    return bits // 8 * (2 if kind == "complex floating" else 1)


# --------------------------------------------------------------------------------------
# the public operator (A, or A^T for transposed layers) and keyword parsing


def layer_apply(kernel_oihw: Any, geom: Geometry, x: Any, xp: ModuleType) -> Any:
    """The public layer on ``x`` (``A x``, or ``A^T x`` for a transposed layer)."""
    if geom.transposed:  # A^T = conj(A(conj K))^H: no conjugation of the kernel itself
        kc = (
            xp.conj(kernel_oihw)
            if xp.isdtype(kernel_oihw.dtype, "complex floating")
            else kernel_oihw
        )
        return conv_adjoint(kc, geom, x, xp)
    return conv_apply(kernel_oihw, geom, x, xp)


def layer_adjoint(kernel_oihw: Any, geom: Geometry, y: Any, xp: ModuleType) -> Any:
    """The public layer's adjoint on ``y`` (``A^H y``, or ``conj(A) y`` when transposed)."""
    if geom.transposed:
        kc = (
            xp.conj(kernel_oihw)
            if xp.isdtype(kernel_oihw.dtype, "complex floating")
            else kernel_oihw
        )
        return conv_apply(kc, geom, y, xp)
    return conv_adjoint(kernel_oihw, geom, y, xp)


def _is_zero(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_zero(v) for v in value)
    try:
        return not isinstance(value, bool) and int(value) == 0 and value == 0
    except (TypeError, ValueError):
        return False


def is_legacy(padding: Any, padding_mode: Any, transposed: Any, output_padding: Any) -> bool:
    """Whether the call is convsv's classic periodic/centred layer (the pre-geometry path)."""
    return (
        isinstance(padding, str)
        and padding in PADDINGS
        and padding_mode is None
        and transposed is False
        and _is_zero(output_padding)
    )


def infer_input_size(
    kernel_oihw: Any,
    out: tuple[int, ...],
    stride: Any,
    dilation: Any,
    groups: Any,
    padding: Any,
    padding_mode: Any,
    transposed: bool,
    output_padding: Any,
) -> tuple[int, ...]:
    """The public input size ``n`` whose public output size is ``out`` (for adjoints).

    convsv's own ``padding="circular"``/``"zeros"`` use ``n = out * stride`` (as
    :func:`convsv.apply_adjoint` always did); otherwise the unique ``n`` per axis, or a
    ``ValueError`` asking for ``n=`` when strides make it ambiguous.
    """
    d = len(out)
    s = normalize_tuple(stride, "stride", d)
    if isinstance(padding, str) and padding in PADDINGS:
        if transposed:  # public output = conv-form input n_T * s
            bad = [o for o, si in zip(out, s) if o % si]
            if bad:
                msg = (
                    f"y has spatial size {out}, not a multiple of stride={s}; a transposed "
                    f"padding={padding!r} layer outputs n * stride"
                )
                raise ValueError(msg)
            return tuple(o // si for o, si in zip(out, s))
        return tuple(o * si for o, si in zip(out, s))
    dl = normalize_tuple(dilation, "dilation", d)
    k = tuple(int(v) for v in kernel_oihw.shape[2:])
    pads = (
        padding if isinstance(padding, str) else normalize_tuple(padding, "padding", d, minimum=0)
    )
    ops = normalize_tuple(output_padding, "output_padding", d, minimum=0)
    found = []
    for j in range(d):
        pj = pads if isinstance(pads, str) else (pads[j],)
        hits = []
        for cand in range(
            1,
            out[j] * s[j]
            + 2 * (pads[j] if not isinstance(pads, str) else 0)
            + dl[j] * k[j]
            + s[j]
            + 2,
        ):
            try:
                n_c, _, o_c, _ = _conv_form(
                    (k[j],), (cand,), (s[j],), (dl[j],), pj, padding_mode, transposed, (ops[j],)
                )
            except ValueError:
                continue
            if (n_c[0] if transposed else o_c[0]) == out[j]:
                hits.append(cand)
        if len(hits) != 1:
            what = "no" if not hits else f"several ({hits})"
            msg = (
                f"{what} input sizes give output size {out[j]} on axis {j} for stride={s}, "
                f"padding={padding!r}; pass n=... (the layer's input size) explicitly"
            )
            raise ValueError(msg)
        found.append(hits[0])
    return tuple(found)


@dataclass(frozen=True)
class LayerKeywords:
    """The keywords that say which layer a kernel is, as every public function takes them.

    Bundled once by the public functions (whose signatures keep them explicit, PyTorch's
    names and defaults) and handed on as one value to :func:`prepare_layer` and the
    private paths behind it.
    """

    stride: Any = 1
    dilation: Any = 1
    groups: Any = 1
    layout: str = "oihw"
    padding: Any = "circular"
    padding_mode: Any = None
    transposed: Any = False
    output_padding: Any = 0

    def geometry(self, kernel_oihw: Any, n: Any) -> Geometry:
        """:func:`layer_geometry` of an oihw kernel on an input of size ``n``."""
        return layer_geometry(
            kernel_oihw,
            n,
            self.stride,
            self.dilation,
            self.groups,
            self.padding,
            self.padding_mode,
            self.transposed,
            self.output_padding,
        )


def prepare_layer(
    kernel: Any, n: Any, keywords: LayerKeywords, xp: Any
) -> tuple[Any, Geometry, ModuleType]:
    """Public entry: resolve the namespace, validate, return ``(kernel_oihw, geom, xp)``."""
    k, xp = prepare_kernel(kernel, layout=keywords.layout, xp=xp)
    return k, keywords.geometry(k, n), xp
