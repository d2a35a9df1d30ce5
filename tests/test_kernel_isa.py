"""The kernels' instruction-set forms give the same bits.

The library picks its hand-written paths when it loads: AVX-512 where the CPU has it, else AVX2,
else plain C; ``POOLSERVE_KERNEL_ISA`` caps that choice (``x86-64-v3``: no AVX-512, ``x86-64``:
plain C only).  One process per level runs the same calls on the same inputs, and the results
must be bitwise equal: max by its rule (first NaN, first maximum in scan order, -0 vs +0), and
the averages because each fast path keeps one summation order in all its forms.  The agreement
with the generic path and the reference is test_kernel_fastpaths.py's; this file pins the forms
that one machine would otherwise never run against each other.  (``make test`` also reruns the
kernel tests under ``x86-64-v3`` on an AVX-512 machine.)
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from poolserve.backends import _kernels
from poolserve.backends.c import CBackend
from poolserve.spec import PoolSpec

pytestmark = pytest.mark.kernels

ORDER = list(_kernels.ISA_LEVELS)
LEVELS = ORDER[: ORDER.index(_kernels.isa()) + 1] if _kernels.isa() in ORDER else []

# (name, spec, input shape in its layout, dtype): each aimed at a path with hand-written forms
CASES = [
    ("global-49", PoolSpec("max", global_pool=True, return_indices=True), (2, 37, 7, 7), "float32"),
    ("global-49-max", PoolSpec("max", global_pool=True), (2, 37, 7, 7), "float32"),
    ("global-49-avg", PoolSpec("avg", global_pool=True), (2, 37, 7, 7), "float32"),
    ("global-9-avg", PoolSpec("avg", global_pool=True), (3, 11, 3, 3), "float32"),
    ("global-64-max", PoolSpec("max", global_pool=True), (1, 19, 64), "float32"),
    ("global-17-max", PoolSpec("max", global_pool=True), (1, 19, 17), "float32"),
    # the stride-2 rows (cf_rows): 3x3/s2/p1 folds the left-padded column into the run
    ("rows-3x3-pad1-max", PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (2, 5, 21, 37), "float32"),
    ("rows-3x3-pad1-idx", PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), return_indices=True),
     (2, 5, 21, 37), "float32"),
    ("rows-2x2-idx", PoolSpec("max", (2, 2), return_indices=True), (1, 6, 12, 46), "float32"),
    ("rows-3x3-pad1-avg-spread", PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (2, 5, 21, 37),
     "float32"),
    ("rows-2x2-avg-spread", PoolSpec("avg", (2, 2)), (1, 6, 12, 46), "float32"),
    # float16 rows: converted to float32 as loaded, rounded back as stored
    ("rows-3x3-pad1-max-f16", PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (2, 5, 21, 37),
     "float16"),
    ("rows-3x3-pad1-idx-f16", PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), return_indices=True),
     (2, 5, 21, 37), "float16"),
    ("rows-2x2-idx-f16", PoolSpec("max", (2, 2), return_indices=True), (1, 6, 12, 46), "float16"),
    ("rows-3x3-pad1-avg-f16-spread", PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (2, 5, 21, 37),
     "float16"),
    ("rows-2x2-avg-f16-spread", PoolSpec("avg", (2, 2)), (1, 6, 12, 46), "float16"),
    # other windows (cf_win): stride 1, interior blocks of 32 and 64 columns and a shorter one
    ("win-3x3-s1-idx", PoolSpec("max", (3, 3), strides=(1, 1), pads=(1, 1, 1, 1), return_indices=True),
     (1, 7, 9, 83), "float32"),
    ("win-3x3-s1-max", PoolSpec("max", (3, 3), strides=(1, 1), pads=(1, 1, 1, 1)), (1, 7, 9, 83), "float32"),
    ("win-3x3-s1-idx-f16", PoolSpec("max", (3, 3), strides=(1, 1), pads=(1, 1, 1, 1), return_indices=True),
     (1, 7, 9, 83), "float16"),
    ("win-3x3-s1-max-f16-short", PoolSpec("max", (3, 3), strides=(1, 1), pads=(1, 1, 1, 1)), (1, 7, 9, 21),
     "float16"),
    ("win-5x5-s1-avg-spread", PoolSpec("avg", (5, 5), strides=(1, 1), pads=(2, 2, 2, 2)), (1, 7, 9, 83), "float32"),
    # stride-1 average sums row by row in every form (AVX2 intrinsics, plain C), one order
    ("win-3x3-s1-avg-include-f16-spread", PoolSpec("avg", (3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                                                   count_include_pad=True), (1, 7, 9, 83), "float16"),
    # channels-last runs of positions (cl_run): 64 channels, and 40 (a shorter second block)
    ("cl-3x3-idx", PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), layout="channels_last",
                            return_indices=True), (1, 15, 17, 64), "float32"),
    ("cl-2x2-max", PoolSpec("max", (2, 2), layout="channels_last"), (2, 10, 14, 40), "float32"),
    ("cl-3x3-avg-spread", PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), layout="channels_last"),
     (1, 15, 17, 40), "float32"),
    # sums whose rounding depends on the order of the terms: a form that adds in another order
    # gives other bits (the tie-laden inputs sum exactly in any order)
    ("global-64-avg-spread", PoolSpec("avg", global_pool=True), (1, 19, 64), "float32"),
    ("global-40-avg-spread", PoolSpec("avg", global_pool=True), (2, 9, 5, 8), "float32"),
]

SCRIPT = """
import sys, pickle
import numpy as np
from poolserve.backends.c import CBackend
cases, xs = pickle.load(open(sys.argv[1], "rb"))
be = CBackend(threads=2, always_split=True)
out = {}
for (name, spec, shape, dtype), x in zip(cases, xs):
    y, ind = be.forward(spec, x)
    out[name] = (be.isa(), be.kernel_path(spec, shape, dtype), y, ind)
pickle.dump(out, open(sys.argv[2], "wb"))
"""


def inputs(name, shape, dtype, seed):
    """Values with ties, signed zeros, infinities and, in a third of the planes, NaN; or, for
    the "-spread" cases, finite values over twelve decades (float16: eight, its range), so that
    the sums round"""
    rng = np.random.default_rng(seed)
    if name.endswith("-spread"):
        half = 6 if dtype == "float32" else 4
        return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-half, half, shape)).astype(dtype)
    x = rng.integers(-4, 5, size=shape).astype(dtype) / 2  # ties aplenty
    specials = np.array([0.0, -0.0, np.inf, -np.inf], dtype)
    spots = rng.random(shape) < 0.05
    x[spots] = rng.choice(specials, size=int(spots.sum()))
    flat = x.reshape(-1, int(np.prod(shape[2:])))
    for q in range(0, flat.shape[0], 3):
        flat[q, rng.integers(flat.shape[1])] = np.nan
    flat[1::7] = -0.0  # planes of zeros: vmaxps cannot tell -0 from +0
    flat[2::7] = -np.inf
    return x


def run_level(level, tmp_path):
    import pickle

    src, dst = tmp_path / "in.pkl", tmp_path / f"out-{level}.pkl"
    xs = [inputs(name, shape, dtype, i) for i, (name, _, shape, dtype) in enumerate(CASES)]
    with open(src, "wb") as f:
        pickle.dump((CASES, xs), f)
    env = dict(os.environ, POOLSERVE_KERNEL_ISA=level)
    subprocess.run([sys.executable, "-c", SCRIPT, str(src), str(dst)], env=env, check=True, timeout=300)
    with open(dst, "rb") as f:
        return pickle.load(f)


def bits(a):
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


@pytest.mark.skipif(len(LEVELS) < 2, reason="plain C is the only form on this CPU")
def test_isa_forms_agree(tmp_path):
    results = {level: run_level(level, tmp_path) for level in LEVELS}
    for level in LEVELS:  # each process ran at the level it was given
        assert {isa for isa, *_ in results[level].values()} == {level}
    top = LEVELS[-1]
    for name, spec, shape, dtype in CASES:
        _, path, y, ind = results[top][name]
        for level in LEVELS[:-1]:
            _, path_l, y_l, ind_l = results[level][name]
            assert path_l == path, name
            # bits, but a NaN is any NaN: where two NaN meet in a sum (inf - inf and a NaN of x)
            # the payload kept depends on the operands' order, which no rule here fixes
            np.testing.assert_array_equal(np.isnan(y_l), np.isnan(y), err_msg=f"{name}: {level} vs {top}")
            keep = ~np.isnan(y)
            np.testing.assert_array_equal(bits(y_l[keep]), bits(y[keep]), err_msg=f"{name}: {level} vs {top}")
            if ind is None:
                assert ind_l is None
            else:
                np.testing.assert_array_equal(ind_l, ind, err_msg=f"{name}: {level} vs {top}")


def test_isa_cap_is_reported():
    """An unset cap leaves the CPU's level; the library reports the level its paths run at."""
    assert CBackend.isa() in {"x86-64-v4", "x86-64-v3", "x86-64", "neon", "generic"}
    if os.environ.get("POOLSERVE_KERNEL_ISA") in ORDER and _kernels.isa() in ORDER:
        assert ORDER.index(_kernels.isa()) <= ORDER.index(os.environ["POOLSERVE_KERNEL_ISA"])
