"""Hypothesis strategies shared by every backend's agreement tests, and the tolerance rule.

A case is a valid (spec, input array) pair drawn over ranks 1-3, both layouts, every dtype the
mode takes, ceil mode, dilation, asymmetric explicit pads and auto_pad, global pooling, and
inputs that are full of ties or carry NaN and +-inf.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import assume, settings
from hypothesis import strategies as st

from poolserve import reference
from poolserve.spec import DTYPES_BY_MODE, PoolSpec, SpecError

# `make test-asan` runs the kernel tests on a build ~5x slower: it scales example counts down.
SCALE = float(os.environ.get("POOLSERVE_EXAMPLE_SCALE", "1"))


def examples(n: int):
    return settings(max_examples=max(10, int(n * SCALE)))


@st.composite
def specs(draw, modes=("max", "avg", "lp"), dtypes=None, allow_global=True, allow_indices=True):
    """A PoolSpec and an input shape it accepts, plus a dtype the mode takes."""
    mode = draw(st.sampled_from(modes))
    dtype = draw(st.sampled_from([d for d in DTYPES_BY_MODE[mode] if dtypes is None or d in dtypes]))
    layout = draw(st.sampled_from(["channels_first", "channels_last"]))
    rank = draw(st.integers(1, 3))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    extra = {}
    if mode == "avg":
        extra["count_include_pad"] = draw(st.booleans())
    if mode == "lp":
        extra["p"] = draw(st.sampled_from([1.0, 2.0, 3.0, 0.5, 1.5]))
    if mode == "max" and allow_indices:
        extra["return_indices"] = draw(st.booleans())
    if allow_global and draw(st.integers(0, 9)) == 0:
        spatial = draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank))
        spec = PoolSpec(mode=mode, layout=layout, global_pool=True, **extra)
    else:
        small = rank == 3  # keep 3-D inputs small: the reference is a Python loop per window
        kernel = draw(st.lists(st.integers(1, 2 if small else 4), min_size=rank, max_size=rank))
        strides = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
        dil = draw(st.lists(st.integers(1, 2 if small else 3), min_size=rank, max_size=rank))
        auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
        pads, ceil = (), False
        if auto_pad == "NOTSET":
            pads = tuple(draw(st.integers(0, kk - 1)) for kk in kernel + kernel)  # asymmetric
            ceil = draw(st.booleans())
        extent = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
        spatial = [draw(st.integers(max(1, e - 2), e + (4 if small else 9))) for e in extent]
        try:
            spec = PoolSpec(mode=mode, kernel_shape=kernel, strides=strides, dilations=dil, pads=pads,
                            auto_pad=auto_pad, ceil_mode=ceil, layout=layout, **extra)
        except SpecError:
            assume(False)
    shape = (n, c, *spatial) if layout == "channels_first" else (n, *spatial, c)
    try:
        spec.resolve(shape, dtype)
    except SpecError:
        assume(False)  # e.g. a kernel larger than the padded input, or a window all padding
    return spec, shape, dtype


@st.composite
def arrays(draw, shape, dtype, special=True):
    """Inputs with many ties (small integers), or spread values; floats sometimes carry NaN/+-inf."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = int(np.prod(shape))
    kind = draw(st.sampled_from(["ties", "spread", "special"] if special else ["ties", "spread"]))
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = (info.min, info.max) if kind != "ties" else (max(info.min, -2), 3)
        return rng.integers(lo, hi, size=size, endpoint=True).astype(dtype).reshape(shape)
    if kind == "ties":
        x = rng.integers(-3, 4, size=size).astype(np.float64)
    else:
        x = rng.uniform(-100, 100, size=size)
    if kind == "special":
        mask = rng.random(size) < draw(st.sampled_from([0.1, 0.5]))  # sparse, or windows with several
        x[mask] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0], size=int(mask.sum()))
    return x.astype(dtype).reshape(shape)


def window_size(spec: PoolSpec, shape) -> int:
    g = spec.resolve(shape)
    return int(np.prod(g.kernel))


def assert_close(actual, expected, dtype, taps: int, scale: float = 100.0):
    """Agreement where summation order differs (avg, lp, backward sums).

    The bound: rounding of each of `taps` additions in the accumulator type (float32 for
    float16 and float32, float64 for float64) relative to the largest magnitude, plus one
    rounding of the result to the output dtype.  Non-finite values must match exactly.
    """
    acc_eps = np.finfo(np.float64 if dtype == "float64" else np.float32).eps
    out_eps = np.finfo(dtype).eps
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=2 * out_eps + (8 + taps) * acc_eps, atol=4 * taps * acc_eps * scale + 2 * out_eps)


def assert_matches_reference(spec: PoolSpec, x, y, ind=None):
    """A forward result against the numpy reference: exact for max values and indices (NaN equals
    NaN), within assert_close's bound for avg and lp."""
    yr, ir = reference.forward(spec, x)
    assert y.shape == yr.shape and y.dtype.name == yr.dtype.name
    if spec.mode == "max":
        np.testing.assert_array_equal(y, yr)
        if spec.return_indices:
            np.testing.assert_array_equal(ind, ir)
        else:
            assert ind is None
    else:
        assert_close(y, yr, x.dtype.name, window_size(spec, x.shape))
