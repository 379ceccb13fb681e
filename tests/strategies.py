"""Hypothesis strategies for small convolutional layers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st


@dataclass(frozen=True)
class Layer:
    kernel: np.ndarray  # oihw, float64 or complex128 values (cast per test)
    n: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    dtype: str  # "float32" | "float64" | "complex64" | "complex128"

    @property
    def d(self) -> int:
        return len(self.n)

    @property
    def rows(self) -> int:
        return self.kernel.shape[0] * math.prod(-(-n // s) for n, s in zip(self.n, self.stride))

    @property
    def cols(self) -> int:
        return self.kernel.shape[1] * self.groups * math.prod(self.n)

    def cast(self) -> np.ndarray:
        return self.kernel.astype(self.dtype)


@st.composite
def layers(
    draw: st.DrawFn,
    *,
    divisible: bool = True,
    complex_ok: bool = True,
    max_entries: int = 60_000,
    dims: tuple[int, ...] = (1, 2, 3),
) -> Layer:
    """Random layer: 1-3 spatial dims, k up to 6 (often > n), strides, dilations, groups."""
    d = draw(st.sampled_from(dims))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_out = groups * draw(st.integers(1, 3 if d == 3 else 4))
    c_in_g = draw(st.integers(1, 2 if d == 3 else 3))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(d))
    dilation = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(d))
    k = tuple(draw(st.integers(1, 3 if d == 3 else 6)) for _ in range(d))
    if divisible:
        n = tuple(s * draw(st.integers(1, 2 if d == 3 else 4)) for s in stride)
    else:
        n = tuple(draw(st.integers(1, 4 if d == 3 else 9)) for _ in range(d))
    dtypes = ["float32", "float64"] + (["complex64", "complex128"] if complex_ok else [])
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = (c_out, c_in_g, *k)
    kernel = rng.standard_normal(shape)
    if dtype.startswith("complex"):
        kernel = kernel + 1j * rng.standard_normal(shape)
    layer = Layer(kernel, n, stride, dilation, groups, dtype)
    assume(layer.rows * layer.cols <= max_entries)
    return layer
