"""Every fast path of the C kernels agrees with the generic path (POOL_FLAG_GENERIC_ONLY) and
with the numpy reference.

Each strategy builds cases meant for one fast path and asserts (with ``kernel_path``) that the
case reaches it, so a change in the dispatch cannot quietly leave a path untested.  Max values and
indices must be bitwise those of the generic path (NaN first, ties to the first in scan order,
-0 vs +0); average pooling must give equal values where the fast path keeps the summation order
(the payload of a NaN made by inf - inf may differ), else agree within the summation-order
tolerance of tests/strategies.py.  The fast backends set always_split, so that hypothesis-sized
inputs (far below the kernels' 6 MiB one-thread threshold) still go through the parallel split.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from poolserve import reference
from poolserve.backends import _kernels
from poolserve.backends.c import CBackend
from poolserve.spec import DTYPES_BY_MODE, FLOAT_DTYPES, PoolSpec, SpecError

from strategies import arrays, assert_close, examples, specs, window_size

pytestmark = pytest.mark.kernels

THREADS = st.sampled_from([1, 2, 3])


def bits(a: np.ndarray) -> np.ndarray:
    """The array's raw bits, so that -0.0 != 0.0 and NaN payloads count."""
    if a.dtype.kind == "f":
        return a.view(f"u{a.dtype.itemsize}")
    return a


def assert_same_bits(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(bits(actual), bits(expected))


def dims(spec: PoolSpec, n, c, spatial):
    return (n, c, *spatial) if spec.layout == "channels_first" else (n, *spatial, c)


# ---- cases aimed at one path each ------------------------------------------------------------

@st.composite
def cf_rows_cases(draw, modes=("max", "avg"), dtypes=None):
    """Channels-first, last axis kernel 2 or 3 with stride 2: the cf_rows path.  The other axes
    take any kernel, stride, dilation and pads; widths cross the 256-column block now and then."""
    mode = draw(st.sampled_from(modes))
    dtype = draw(st.sampled_from([d for d in DTYPES_BY_MODE[mode] if dtypes is None or d in dtypes]))
    rank = draw(st.integers(1, 3))
    K = draw(st.sampled_from([2, 3]))
    kernel = [draw(st.integers(1, 3)) for _ in range(rank - 1)] + [K]
    strides = [draw(st.integers(1, 3)) for _ in range(rank - 1)] + [2]
    dil = [draw(st.integers(1, 2)) for _ in range(rank - 1)] + [1]
    pads = tuple(draw(st.integers(0, k - 1)) for k in kernel + kernel)
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
    spatial = [draw(st.integers(max(1, e - 2), e + 5)) for e in extent[:-1]]
    spatial.append(draw(st.one_of(st.integers(1, 24), st.integers(250, 530))) if rank < 3
                   else draw(st.integers(1, 20)))
    extra = {}
    if mode == "max":
        extra["return_indices"] = draw(st.booleans())
    else:
        extra["count_include_pad"] = draw(st.booleans())
    try:
        spec = PoolSpec(mode, kernel, strides=strides, dilations=dil, pads=pads,
                        ceil_mode=draw(st.booleans()), **extra)
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *spatial)
        spec.resolve(shape, dtype)
    except SpecError:
        assume(False)
    return spec, shape, dtype


@st.composite
def global_cf_cases(draw, modes=("max", "avg"), dtypes=None):
    """Channels-first global pooling: the global_cf path; plane sizes around the 16-lane body."""
    mode = draw(st.sampled_from(modes))
    dtype = draw(st.sampled_from([d for d in DTYPES_BY_MODE[mode] if dtypes is None or d in dtypes]))
    rank = draw(st.integers(1, 3))
    spatial = [draw(st.integers(1, 5)) for _ in range(rank - 1)]
    spatial.append(draw(st.one_of(st.integers(1, 20), st.integers(30, 70))))
    spec = PoolSpec(mode, global_pool=True, return_indices=mode == "max" and draw(st.booleans()))
    return spec, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *spatial), dtype


EXPECTED_FORWARD = {"cf_rows": ("cf_rows_k2", "cf_rows_k3"), "cl": ("cl",), "global_cf": ("global_cf",),
                    "cf_win": ("cf_win",)}


def check_fast_forward(case, x, threads, path):
    spec, shape, dtype = case
    fast, generic = CBackend(threads=threads, always_split=True), CBackend(threads=threads, generic_only=True)
    g = spec.resolve(shape)
    if g.kernel == g.in_spatial and not any(g.pads) and spec.layout == "channels_first":
        path = "global_cf"  # a window that is the whole plane takes the global path
    assert fast.kernel_path(spec, shape, dtype) in EXPECTED_FORWARD[path]
    assert generic.kernel_path(spec, shape, dtype) == "generic"
    y, ind = fast.forward(spec, x)
    yg, indg = generic.forward(spec, x)
    if spec.mode == "max":
        assert_same_bits(y, yg)  # the fast paths keep the generic scan order and copy the winner
    elif path == "global_cf" or (path == "cf_win" and g.strides[-1] == 1):
        # other orders of the additions: global planes in lanes, stride-1 windows row by row
        # (cf_win's separable average)
        assert_close(y, yg, dtype, window_size(spec, shape))
    else:
        # the same sums in the same order: equal values (NaN payloads from inf - inf may differ)
        np.testing.assert_array_equal(y, yg)
    if spec.return_indices:
        np.testing.assert_array_equal(ind, indg)
    else:
        assert ind is None and indg is None
    yr, ir = reference.forward(spec, x)
    if spec.mode == "max":
        np.testing.assert_array_equal(y, yr)
        if spec.return_indices:
            np.testing.assert_array_equal(ind, ir)
    else:
        assert_close(y, yr, dtype, window_size(spec, shape))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("size", [65, 256, 1000, 1030, 2500])
@pytest.mark.parametrize("where", ["first", "last", "middle"])
@pytest.mark.parametrize("special", ["max", "nan", "zeros", "ties", "neginf"])
def test_global_max_large_planes(dtype, size, where, special):
    """Global max of planes of more than 64 elements: with AVX-512 or AVX2 one pass keeping each
    lane's first maximum and its index, the least index among the lanes holding the maximum, a
    NaN found by a second scan (global_argmax_avx512, _avx2); without them, float16 in segments
    of 1024 converted to float32 (global_half_argmax).  The special value sits first, last (the
    tail of 64-element steps, or of a segment) or mid-plane; with zeros, -0 and +0 tie and the
    first one's bits must come back; with ties, the maximum also sits in every other lane; with
    neginf the plane is -inf but for the special -inf or, mid-plane, one -1 (lanes that never
    beat their -inf start must still answer their first element)."""
    rng = np.random.default_rng(size)
    x = rng.uniform(-5, 5, size=(2, 3, size)).astype(dtype)
    if special == "ties":
        x[..., size // 3::7] = 7.0
    at = {"first": 0, "last": size - 1, "middle": size // 2 + 3}[where]
    if special == "zeros":
        x[:] = rng.choice([-0.0, 0.0, -1.0], size=x.shape)
    if special == "neginf":
        x[:] = -np.inf
    x[..., at] = {"max": 7.0, "nan": np.nan, "zeros": -0.0, "ties": 7.0,
                  "neginf": -1.0 if where == "middle" else -np.inf}[special]
    spec = PoolSpec("max", global_pool=True, return_indices=True)
    fast, generic = CBackend(threads=2), CBackend(threads=1, generic_only=True)
    assert fast.kernel_path(spec, x.shape, dtype) == "global_cf"
    y, ind = fast.forward(spec, x)
    yg, ig = generic.forward(spec, x)
    assert_same_bits(y, yg)
    np.testing.assert_array_equal(ind, ig)
    yr, ir = reference.forward(spec, x)
    np.testing.assert_array_equal(ind, ir)


@examples(500)
@given(data=st.data(), case=cf_rows_cases(), threads=THREADS)
def test_cf_rows_forward(data, case, threads):
    check_fast_forward(case, data.draw(arrays(case[1], case[2])), threads, "cf_rows")


@st.composite
def cf_win_cases(draw, modes=("max", "avg")):
    """Channels-first windows that cf_rows does not take: along the last axis stride 1, 3 or 4,
    or kernel 1, 4 or 5, or dilation 2; the other axes anything.  Widths cross the 16-column
    vector and the 64-column block now and then, so the masked last vectors are met."""
    mode = draw(st.sampled_from(modes))
    dtype = draw(st.sampled_from(DTYPES_BY_MODE[mode]))
    rank = draw(st.integers(1, 3))
    k2, s2, d2 = draw(st.sampled_from([(k, s, d) for k in (1, 2, 3, 4, 5) for s in (1, 2, 3, 4) for d in (1, 2)
                                       if not (k in (2, 3) and s == 2 and d == 1)]))
    kernel = [draw(st.integers(1, 3)) for _ in range(rank - 1)] + [k2]
    strides = [draw(st.integers(1, 3)) for _ in range(rank - 1)] + [s2]
    dil = [draw(st.integers(1, 2)) for _ in range(rank - 1)] + [d2]
    pads = tuple(draw(st.integers(0, k - 1)) for k in kernel + kernel)
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
    spatial = [draw(st.integers(max(1, e - 2), e + 4)) for e in extent[:-1]]
    spatial.append(draw(st.one_of(st.integers(1, 24), st.integers(60, 150))) if rank < 3
                   else draw(st.integers(1, 40)))
    extra = {"return_indices": draw(st.booleans())} if mode == "max" else {"count_include_pad": draw(st.booleans())}
    try:
        spec = PoolSpec(mode, kernel, strides=strides, dilations=dil, pads=pads, ceil_mode=draw(st.booleans()), **extra)
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *spatial)
        spec.resolve(shape, dtype)
    except SpecError:
        assume(False)
    assume(not covers_plane(spec, shape))  # global_cf's
    return spec, shape, dtype


@examples(500)
@given(data=st.data(), case=cf_win_cases(), threads=THREADS)
def test_cf_win_forward(data, case, threads):
    """Any other channels-first window (cf_win): bitwise the generic path, NaN, +-inf, -0 and
    ties included, with and without indices."""
    check_fast_forward(case, data.draw(arrays(case[1], case[2])), threads, "cf_win")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mode,indices", [("max", False), ("max", True), ("avg", False)])
def test_cf_win_wide_rows_of_taps(dtype, mode, indices):
    """Windows wider than the AVX-512 blocks' clipped-tap masks hold (over 32 taps a row): those
    blocks take only the columns whose window lies inside the row, the others the column loop.
    Row widths put a partial last block inside [lo, hi)."""
    rng = np.random.default_rng(7)
    for k, width, pad in [(33, 100, 0), (40, 150, 5), (40, 150, 0), (35, 99, 17)]:
        extra = {"return_indices": indices} if mode == "max" else {"count_include_pad": True}
        spec = PoolSpec(mode, (1, k), strides=(1, 1), pads=(0, pad, 0, pad), **extra)
        x = rng.standard_normal((1, 3, 2, width)).astype(dtype)
        x[0, 1, 1, rng.integers(0, width)] = np.nan
        check_fast_forward((spec, x.shape, dtype), x, 1, "cf_win")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("height", [8, 16, 5])
def test_cf_win_rows_that_share_a_slot(dtype, height):
    """Stride-1 max copies each input row into a -inf padded row, or keeps its maxima, and the
    average its sums, in one of 8 slots by row number: 3-D windows whose rows lie 8 (or 16) row
    numbers apart (planes of 8 or 16 rows) land in one slot, which the path must see and leave to
    the other loop."""
    rng = np.random.default_rng(11)
    for kernel, pads in [((2, 2, 3), (0, 0, 1, 0, 0, 1)), ((3, 1, 3), (1, 0, 2, 1, 0, 0))]:
        for mode in ("max", "avg"):
            spec = PoolSpec(mode, kernel, strides=(1, 1, 1), pads=pads)
            x = rng.standard_normal((1, 2, 4, height, 37)).astype(dtype)
            check_fast_forward((spec, x.shape, dtype), x, 1, "cf_win")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cf_win_padded_rows_minus_inf_indices(dtype):
    """With indices on -inf padded rows, a column whose window holds only -inf keeps its first
    real tap's index, never the padding's: planes of -inf, and -inf at the row edges only."""
    rng = np.random.default_rng(5)
    spec = PoolSpec("max", (3, 3), strides=(1, 1), pads=(1, 2, 1, 2), return_indices=True)
    x = rng.standard_normal((1, 3, 6, 45)).astype(dtype)
    x[0, 0] = -np.inf
    x[0, 1, :, :3] = -np.inf
    x[0, 2, :, -3:] = -np.inf
    check_fast_forward((spec, x.shape, dtype), x, 1, "cf_win")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("width", [9, 10, 16, 17, 37, 56])
@pytest.mark.parametrize("indices", [False, True])
def test_cf_win_separable_max(dtype, width, indices):
    """Stride-1 max on AVX2 folds each input row's maxima (and their columns) along the last axis
    first, then the window's rows: still the first maximum in scan order, so -0 against +0 keeps
    the row-major winner and its index (signed zeros in every window), rows holding a NaN send
    their windows back to the blocks (a NaN in the edge columns too: 3x3/s1/p1 rows note their
    NaN from the vectors), windows of -inf keep their first real tap's index.  Widths around 8
    interior columns (9: 7, the separable form needs 8) and around 3x3/s1/p1's whole-row vectors
    (16, 17: none or one between the first and the last), 2-D and 3-D windows, dilation,
    asymmetric pads, 1 and 2 threads."""
    rng = np.random.default_rng(width)
    specs = [
        PoolSpec("max", (3, 3), strides=(1, 1), pads=(1, 1, 1, 1), return_indices=indices),
        PoolSpec("max", (2, 3), strides=(1, 1), pads=(0, 2, 1, 0), dilations=(2, 2), return_indices=indices),
        PoolSpec("max", (2, 2, 3), strides=(1, 1, 1), pads=(0, 1, 1, 0, 0, 1), return_indices=indices),
        # windows 7 and 9 rows high: the 2-D form's ring of 8 rows holds the first, not the second
        PoolSpec("max", (4, 3), strides=(1, 1), pads=(2, 1, 1, 1), dilations=(2, 1), return_indices=indices),
        PoolSpec("max", (5, 3), strides=(1, 1), pads=(3, 1, 2, 1), dilations=(2, 1), return_indices=indices),
    ]
    for spec in specs:
        shape = (2, 3, 3, 7, width) if len(spec.kernel_shape) == 3 else (2, 3, 11, width)
        zeros = rng.choice(np.array([-0.0, 0.0, -1.0], dtype), size=shape)
        mixed = rng.standard_normal(shape).astype(dtype)
        mixed[0, 0, ..., 2, 3] = np.nan  # one row with a NaN
        mixed[1, 1, ..., 5, 0] = np.nan  # and in the first and last columns
        mixed[1, 1, ..., 6, -1] = np.nan
        mixed[0, 1] = -np.inf
        mixed[1, 0, ..., :3] = -np.inf  # -inf where the padding clips the windows
        mixed[1, 2, ..., -3:] = -np.inf
        for x in (zeros, mixed):
            for threads in (1, 2):
                check_fast_forward((spec, x.shape, dtype), x, threads, "cf_win")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("width", [9, 10, 16, 17, 37, 56])
@pytest.mark.parametrize("include_pad", [False, True])
def test_cf_win_separable_avg(dtype, width, include_pad):
    """Stride-1 average sums each input row's taps along the last axis first, then adds the
    window's rows and divides by each column's divisor: the rows' factor times the column's taps,
    count_include_pad's (padding counted, not the part past it) or not, so the clipped columns at
    both edges and the planes' edge rows each have theirs.  Another order of the additions than
    the generic path's, so within the summation-order tolerance of it and of the reference
    (check_fast_forward), NaN and +-inf rows included.  Widths around the 8 interior columns the
    separable form needs (9: 7) and 3x3/s1/p1's whole-row vectors (16, 17), 2-D and 3-D windows,
    dilation, asymmetric pads, 1 and 2 threads."""
    rng = np.random.default_rng(width)
    specs = [
        PoolSpec("avg", (3, 3), strides=(1, 1), pads=(1, 1, 1, 1), count_include_pad=include_pad),
        PoolSpec("avg", (2, 3), strides=(1, 1), pads=(0, 2, 1, 0), dilations=(2, 2), count_include_pad=include_pad),
        PoolSpec("avg", (2, 2, 3), strides=(1, 1, 1), pads=(0, 1, 1, 0, 0, 1), count_include_pad=include_pad),
        PoolSpec("avg", (1, 4), strides=(1, 1), pads=(0, 3, 0, 2), count_include_pad=include_pad),
        PoolSpec("avg", (4, 3), strides=(1, 1), pads=(2, 1, 1, 1), dilations=(2, 1), count_include_pad=include_pad),
    ]
    for spec in specs:
        shape = (2, 3, 3, 7, width) if len(spec.kernel_shape) == 3 else (2, 3, 7, width)
        spread = rng.uniform(-100, 100, size=shape).astype(dtype)
        special = spread.copy()
        special[0, 0, ..., 2, 3] = np.nan
        special[0, 1, ..., 1, :2] = np.inf  # in clipped columns' windows
        special[1, 2, ..., 4, -1] = -np.inf
        for x in (spread, special):
            for threads in (1, 2):
                check_fast_forward((spec, x.shape, dtype), x, threads, "cf_win")


@examples(400)
@given(data=st.data(), case=global_cf_cases(), threads=THREADS)
def test_global_cf_forward(data, case, threads):
    check_fast_forward(case, data.draw(arrays(case[1], case[2])), threads, "global_cf")


@st.composite
def small_global_cases(draw):
    """Global pooling on planes of 1 to 70 elements, float32 above all: planes of at most 64 take
    the AVX-512 form where the CPU has it (one to four masked loads a plane); 65 to 70 do not."""
    mode = draw(st.sampled_from(["max", "avg"]))
    dtype = draw(st.sampled_from(["float32", "float32", "float64", "float16"]))
    size = draw(st.one_of(st.sampled_from([1, 15, 16, 17, 31, 32, 33, 48, 49, 63, 64, 65]), st.integers(1, 70)))
    spatial = draw(st.sampled_from([(size,), (1, size)] + ([(7, 7)] if size == 49 else [])))
    spec = PoolSpec(mode, global_pool=True, return_indices=mode == "max" and draw(st.booleans()))
    return spec, (draw(st.integers(1, 3)), draw(st.integers(1, 40)), *spatial), dtype


@examples(400)
@given(data=st.data(), case=small_global_cases(), threads=THREADS)
def test_global_cf_small_planes(data, case, threads):
    """Values and indices bitwise the generic path's (first NaN, first maximum, -0 vs +0), with the
    NaN, tie and infinity mixes of `arrays` and the NaN-free ones of `clean_arrays`."""
    x = data.draw(st.one_of(arrays(case[1], case[2]), clean_arrays(case[1], case[2])))
    check_fast_forward(case, x, threads, "global_cf")


@pytest.mark.parametrize("size", [1, 16, 17, 49, 63, 64])
def test_global_cf_small_planes_extremes(size):
    """Planes of -inf only (the lanes past the plane are filled with -inf and must never be the
    answer), a NaN in the last element only, and +0/-0 ties."""
    spec = PoolSpec("max", global_pool=True, return_indices=True)
    generic, fast = CBackend(threads=1, generic_only=True), CBackend(threads=2)
    for fill in ("neg_inf", "last_nan", "zeros"):
        x = np.full((2, 3, size), -np.inf, np.float32)
        if fill == "last_nan":
            x[..., -1] = np.nan
        elif fill == "zeros":
            x[:] = -0.0
            x[..., -1] = 0.0
        assert fast.kernel_path(spec, x.shape, "float32") == "global_cf"
        y, ind = fast.forward(spec, x)
        yg, ig = generic.forward(spec, x)
        assert_same_bits(y, yg)
        np.testing.assert_array_equal(ind, ig)


@pytest.mark.parametrize("indices", [False, True])
def test_global_cf_small_planes_nan_anywhere(indices):
    """Planes of 1 to 64 elements with one NaN, put at every element in turn: the small-plane forms
    test two vectors per compare for NaN (first with last, ...), so each vector must be in a pair.
    Eight planes or more a call, so the eight-plane form (without indices) runs too."""
    spec = PoolSpec("max", global_pool=True, return_indices=indices)
    generic, fast = CBackend(threads=1, generic_only=True), CBackend(threads=1)
    rng = np.random.default_rng(7)
    for size in range(1, 65):
        planes = 8 * size
        x = rng.uniform(-10, 10, size=(1, planes, size)).astype(np.float32)
        x[0, np.arange(planes), np.arange(planes) % size] = np.nan
        assert fast.kernel_path(spec, x.shape, "float32") == "global_cf"
        (y, ind), (yg, _) = fast.forward(spec, x), generic.forward(spec, x)
        assert np.isnan(y).all(), size  # the plane's NaN is its maximum
        assert_same_bits(y, yg)
        if indices:  # the NaN's own offset in the image
            np.testing.assert_array_equal(ind.ravel(), np.arange(planes) * size + np.arange(planes) % size)


@st.composite
def cf_rows_mid_width_cases(draw):
    """2x2/s2, 2x2x2/s2 and 3x3/s2 (pads 0 or 1) on rows of 16 to 70 outputs: blocks of 16
    outputs with the last one overlapping the one before (VB_CHUNKS), the edge columns listed once
    per call, rows of 2, 3 and 4 input rows."""
    mode = draw(st.sampled_from(["max", "avg"]))
    dtype = draw(st.sampled_from(["float32", "float32", "float64", "float16", "int8", "uint8"] if mode == "max"
                                 else ["float32", "float64", "float16"]))
    kind = draw(st.sampled_from(["2x2", "2x2x2", "3x3"]))
    width = draw(st.integers(32, 141))
    if kind == "2x2":
        spec, spatial = PoolSpec(mode, (2, 2)), (draw(st.integers(2, 7)), width)
    elif kind == "2x2x2":
        spec, spatial = PoolSpec(mode, (2, 2, 2)), (draw(st.integers(2, 4)), draw(st.integers(2, 5)), width)
    else:
        p = draw(st.integers(0, 1))
        spec = PoolSpec(mode, (3, 3), strides=(2, 2), pads=(p, p, p, p), ceil_mode=draw(st.booleans()))
        spatial = (draw(st.integers(3, 9)), width)
    if mode == "max":
        spec = spec.replace(return_indices=draw(st.booleans()))
    elif draw(st.booleans()):
        spec = spec.replace(count_include_pad=True)
    return spec, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *spatial), dtype


@examples(300)
@given(data=st.data(), case=cf_rows_mid_width_cases(), threads=THREADS)
def test_cf_rows_mid_widths(data, case, threads):
    x = data.draw(st.one_of(arrays(case[1], case[2]), clean_arrays(case[1], case[2])))
    check_fast_forward(case, x, threads, "cf_rows")


@pytest.mark.parametrize("spec,shape,path", [
    (PoolSpec("max", (2, 2)), (1, 2, 4, 70), "cf_rows"),  # rows of 35 outputs: two full vectors and a tail
    (PoolSpec("max", (2, 2, 2)), (1, 2, 2, 4, 66), "cf_rows"),
    (PoolSpec("max", (3, 3), strides=(2, 2)), (1, 2, 5, 69), "cf_rows"),
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (1, 2, 5, 66), "cf_rows"),
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (1, 2, 9, 37), "cf_rows"),  # runs of 3 rows
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), layout="channels_last"), (1, 5, 6, 19), "cl"),
], ids=["2x2", "2x2x2", "3x3", "3x3-pad1", "3x3-pad1-runs", "3x3-channels-last"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_max_one_nan_at_every_position(spec, shape, path, dtype):
    """Max without indices skips the NaN scan where the fold notes NaN itself (skip_nan_scan and
    cl_range in pool_fast.inc), and a block or item that met one is redone under the full rule.
    So a lone NaN must be seen wherever it sits: every position in turn, each tap of each window,
    the last one of a vector step and of the masked tail included.  float16 goes through the same
    AVX-512 rows, converted as they are loaded."""
    rng = np.random.default_rng(7)
    fast, generic = CBackend(threads=1), CBackend(threads=1, generic_only=True)
    assert fast.kernel_path(spec, shape, dtype) in EXPECTED_FORWARD[path]
    base = rng.uniform(-10, 10, size=shape).astype(dtype)
    for flat in range(base.size // 2, base.size):  # the second half: one channel (cf) or half the positions (cl)
        x = base.copy()
        x.flat[flat] = np.nan
        y, _ = fast.forward(spec, x)
        yg, _ = generic.forward(spec, x)
        assert_same_bits(y, yg)
        assert np.isnan(y).any()


@pytest.mark.parametrize("spec,shape", [
    (PoolSpec("avg", (2, 2, 2), pads=(1, 0, 0, 1, 0, 0), count_include_pad=True), (1, 2, 3, 9, 40)),
    (PoolSpec("avg", (2, 2, 2), pads=(1, 0, 1, 1, 0, 0), count_include_pad=False), (1, 2, 3, 9, 40)),
    (PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), count_include_pad=True), (2, 2, 21, 67)),
    (PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 0, 1), ceil_mode=True), (1, 3, 20, 66)),
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (2, 2, 21, 67)),
    (PoolSpec("max", (2, 2), pads=(0, 1, 0, 0)), (1, 3, 20, 35)),
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), return_indices=True), (2, 2, 21, 67)),
    (PoolSpec("max", (2, 2), pads=(0, 1, 0, 0), return_indices=True), (1, 3, 20, 35)),
    (PoolSpec("max", (2, 2, 2), pads=(1, 0, 0, 0, 0, 1), return_indices=True), (1, 2, 3, 9, 40)),
], ids=["avg-2x2x2-depth-pad-include", "avg-2x2x2-pads", "avg-3x3-pad1-include", "avg-3x3-ceil",
        "max-3x3-pad1", "max-2x2-left-pad", "argmax-3x3-pad1", "argmax-2x2-left-pad", "argmax-2x2x2-pads"])
@pytest.mark.parametrize("nan", [False, True, "left-inf"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_row_runs(spec, shape, nan, dtype):
    """Float32 and float16 max (with and without indices) and average fold a run of output rows
    per call and then do the runs' edge columns (cf_rows_range in pool_fast.inc); a run ends where
    a window leaves the plane along the row axis, at a thread's last row, or at a NaN (max: redone
    row by row).  Padding along each axis, both divisors, and splits over 1 to 3 threads that cut
    runs short.  float16 is converted to float32 in registers and folded there, as the generic
    path folds it in float32: the same bits.  "left-inf": the first two columns -inf, so that a
    window the left padding clips holds -inf only, and its argmax is its first real tap's (never
    the padding's, where the run folds window 0 from a padded -inf)."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-10, 10, size=shape).astype(dtype)
    if nan == "left-inf":
        x[..., :2] = -np.inf
    elif nan:
        x.flat[rng.integers(0, x.size, 3)] = np.nan
    yg, ig = CBackend(threads=1, generic_only=True).forward(spec, x)
    yr, ir = reference.forward(spec, x)
    for threads in (1, 2, 3):
        fast = CBackend(threads=threads, always_split=True)
        assert fast.kernel_path(spec, shape, dtype) in EXPECTED_FORWARD["cf_rows"]
        y, ind = fast.forward(spec, x)
        if spec.mode == "max":
            assert_same_bits(y, yg)
            np.testing.assert_array_equal(y, yr)
            if spec.return_indices:
                np.testing.assert_array_equal(ind, ig)
                np.testing.assert_array_equal(ind, ir)
        else:
            np.testing.assert_array_equal(y, yg)  # the same sums in the same order
            assert_close(y, yr, dtype, window_size(spec, shape))


@st.composite
def clean_arrays(draw, shape, dtype):
    """No NaN anywhere, so every plane takes the NaN-free fused loops (float16: rows converted to
    float32 first); ties, -0/+0 and +-inf mixed in."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = int(np.prod(shape))
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-3 if np.dtype(dtype).kind == "i" else 0, 4, size=size).astype(dtype).reshape(shape)
    kind = draw(st.sampled_from(["ties", "spread", "special", "zeros"]))
    if kind == "zeros":  # the maximum is often a 0 of either sign: the order of ties shows in the bits
        return rng.choice([-1.0, -0.0, 0.0], size=size).astype(dtype).reshape(shape)
    x = rng.integers(-3, 4, size=size).astype(np.float64) if kind != "spread" else rng.uniform(-100, 100, size)
    if kind == "special":
        mask = rng.random(size) < 0.3
        x[mask] = rng.choice([np.inf, -np.inf, 0.0, -0.0, 65504.0, -65504.0], size=int(mask.sum()))
    return x.astype(dtype).reshape(shape)


@examples(400)
@given(data=st.data(), case=cf_rows_cases(modes=("max",), dtypes=("float16",)), threads=THREADS)
def test_cf_rows_float16_max_nan_free(data, case, threads):
    """float16 max on NaN-free planes: the rows are converted to float32 (F16C where the CPU has
    it) and folded there; values and indices bitwise those of the generic path."""
    check_fast_forward(case, data.draw(clean_arrays(case[1], case[2])), threads, "cf_rows")


@examples(300)
@given(data=st.data(), case=cf_rows_cases(modes=("max",)), threads=THREADS)
def test_cf_rows_max_nan_free(data, case, threads):
    """Every dtype on NaN-free planes: the fused loops, and for 3x3/s2 without indices on rows of
    at most 256 outputs the separable form (horizontal 3-max rows kept and reused, then the
    vertical 3-max); bitwise the generic path."""
    check_fast_forward(case, data.draw(clean_arrays(case[1], case[2])), threads, "cf_rows")


@pytest.mark.parametrize("spec,shape", [
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (2, 3, 17, 113)),
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (1, 2, 16, 9)),
    (PoolSpec("max", (3, 3), strides=(2, 2)), (1, 2, 15, 513)),
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(0, 1, 0, 1), ceil_mode=True), (3, 1, 12, 14)),
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), return_indices=True), (1, 3, 17, 523)),
    (PoolSpec("max", (2, 2), return_indices=True), (2, 2, 6, 515)),
    (PoolSpec("max", (2, 2), return_indices=False), (1, 1, 5, 9)),
    (PoolSpec("max", (2, 2, 2), return_indices=True), (1, 2, 5, 7, 259)),
    (PoolSpec("max", (3, 3), strides=(2, 2), ceil_mode=True, return_indices=True), (1, 2, 9, 258)),
])
@pytest.mark.parametrize("nan", [False, True, "zeros"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_cf_rows_max_edges(spec, shape, nan, dtype):
    """Odd widths, widths across the 256-column block, 2/3/4-row windows, clipped edge columns,
    several planes in a row (separable 3x3 rows must not be reused across planes); with a NaN the
    plane leaves the fused loops and the full rule applies."""
    rng = np.random.default_rng(11)
    x = rng.integers(-4, 5, size=shape).astype(dtype)
    flat = x.reshape(-1)
    flat[rng.integers(0, x.size, 40)] = -0.0
    flat[rng.integers(0, x.size, 20)] = np.inf
    flat[rng.integers(0, x.size, 20)] = -np.inf
    if nan == "zeros":
        x = rng.choice([-1.0, -0.0, 0.0], size=shape).astype(dtype)
    elif nan:
        flat[rng.integers(0, x.size, 5)] = np.nan
    generic = CBackend(threads=1, generic_only=True)
    yg, ig = generic.forward(spec, x)
    for threads in (1, 2):
        fast = CBackend(threads=threads, always_split=True)
        assert fast.kernel_path(spec, shape, dtype) in ("cf_rows_k2", "cf_rows_k3")
        y, ind = fast.forward(spec, x)
        assert_same_bits(y, yg)
        if spec.return_indices:
            np.testing.assert_array_equal(ind, ig)


@pytest.mark.parametrize("spec,shape", [
    (PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (1, 3, 17, 523)),
    (PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), count_include_pad=True), (2, 2, 16, 9)),
    (PoolSpec("avg", (2, 2)), (2, 2, 6, 515)),
    (PoolSpec("avg", (2, 2, 2)), (1, 2, 5, 7, 259)),
    (PoolSpec("avg", (3, 3), strides=(2, 2), ceil_mode=True), (1, 2, 9, 258)),
])
def test_cf_rows_float16_avg(spec, shape):
    """float16 avg: rows converted to float32, summed in scan order, rounded once -- the generic
    path's values (NaN payloads aside), with inf, -0 and NaN in the input."""
    rng = np.random.default_rng(13)
    x = rng.uniform(-100, 100, size=shape).astype(np.float16)
    flat = x.reshape(-1)
    for v, k in ((-0.0, 40), (np.inf, 10), (-np.inf, 10), (np.nan, 5), (65504.0, 20)):
        flat[rng.integers(0, x.size, k)] = v
    yg, _ = CBackend(threads=1, generic_only=True).forward(spec, x)
    for threads in (1, 2):
        fast = CBackend(threads=threads, always_split=True)
        assert fast.kernel_path(spec, shape, "float16") in ("cf_rows_k2", "cf_rows_k3")
        np.testing.assert_array_equal(fast.forward(spec, x)[0], yg)


@st.composite
def cl_cases(draw, modes=("max", "avg"), dtypes=None):
    """Channels-last, any window (global included): the cl path.  Channel counts cross the
    256-channel block now and then."""
    spec, shape, dtype = draw(specs(modes=modes, dtypes=dtypes))
    spatial = shape[2:] if spec.layout == "channels_first" else shape[1:-1]
    c = draw(st.one_of(st.integers(1, 3), st.sampled_from([16, 17, 64, 255, 256, 257, 300])))
    spec = spec.replace(layout="channels_last")
    shape = (shape[0], *spatial, c)
    try:
        spec.resolve(shape, dtype)
    except SpecError:
        assume(False)
    return spec, shape, dtype


@pytest.mark.parametrize("spec,shape", [
    (PoolSpec("max", (2, 2), layout="channels_last"), (2, 9, 14, 64)),
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), layout="channels_last"), (1, 13, 15, 64)),
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), layout="channels_last", return_indices=True),
     (1, 13, 15, 64)),
    (PoolSpec("max", (2, 2), layout="channels_last", return_indices=True), (2, 9, 14, 70)),
    (PoolSpec("max", (2, 3), strides=(1, 2), dilations=(2, 2), layout="channels_last"), (1, 9, 17, 33)),
    (PoolSpec("avg", (2, 2), layout="channels_last"), (2, 9, 14, 64)),
    (PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), layout="channels_last", count_include_pad=True),
     (1, 13, 15, 64)),
    (PoolSpec("avg", (3, 3), strides=(2, 2), pads=(0, 1, 1, 0), layout="channels_last"), (1, 13, 15, 70)),
    (PoolSpec("max", (2, 2, 2), layout="channels_last", return_indices=True), (1, 4, 6, 8, 16)),
    (PoolSpec("max", (5, 5), strides=(1, 2), dilations=(1, 2), layout="channels_last", return_indices=True),
     (1, 9, 20, 33)),
], ids=["max-2x2-64", "max-3x3-pad1-64", "argmax-3x3-pad1-64", "argmax-2x2-70", "max-dilated-33", "avg-2x2-64",
        "avg-3x3-pad1-include-64", "avg-3x3-pads-70", "argmax-2x2x2-16", "argmax-5x5-dilated-33"])
@pytest.mark.parametrize("data", ["random", "nan", "zeros"])
def test_cl_runs(spec, shape, data):
    """Float32 channels-last max (with and without indices) and avg fold runs of positions along
    the last axis whose windows lie inside the input, the taps listed once per call
    (cl_run_f32_avx512; copies for 64 channels with 4 or 9 taps; on AVX2 the argmax's tap
    numbers turn into offsets by one permute up to 8 taps, two up to 16, a gather past that: the
    5x5 case); a run ends at a clipped window,
    at a thread's last item, or at a NaN (max: that position under the full rule).  Bitwise the
    generic path: -0/+0 ties show the scan order and avg's sum from +0."""
    rng = np.random.default_rng(5)
    if data == "zeros":
        x = rng.choice([-1.0, -0.0, 0.0], size=shape).astype(np.float32)
    else:
        x = rng.uniform(-10, 10, size=shape).astype(np.float32)
    if data == "nan":
        x.flat[rng.integers(0, x.size, 5)] = np.nan
    yg, ig = CBackend(threads=1, generic_only=True).forward(spec, x)
    yr, ir = reference.forward(spec, x)
    for threads in (1, 2, 3):
        fast = CBackend(threads=threads, always_split=True)
        assert fast.kernel_path(spec, shape, "float32") == "cl"
        y, ind = fast.forward(spec, x)
        assert_same_bits(y, yg)
        if spec.mode == "max":
            np.testing.assert_array_equal(y, yr)
            if spec.return_indices:
                np.testing.assert_array_equal(ind, ig)
                np.testing.assert_array_equal(ind, ir)
        else:
            assert_close(y, yr, "float32", window_size(spec, shape))


@examples(400)
@given(data=st.data(), case=cl_cases(), threads=THREADS)
def test_cl_forward(data, case, threads):
    check_fast_forward(case, data.draw(arrays(case[1], case[2])), threads, "cl")


@examples(300)
@given(data=st.data(), case=cl_cases(), threads=THREADS)
def test_cl_forward_nan_free(data, case, threads):
    """NaN-free inputs stay on the fast folds (float32: cl_item_f32_avx512 where the CPU has it),
    with ties and -0/+0 that show the scan order in the bits."""
    check_fast_forward(case, data.draw(clean_arrays(case[1], case[2])), threads, "cl")


# ---- the parallel split on calls big enough to use every thread -------------------------------

BIG = [
    ("cf_rows_k2", PoolSpec("max", (2, 2), return_indices=True), (1, 3, 97, 301)),
    ("cf_rows_k2", PoolSpec("avg", (2, 2), pads=(1, 1, 0, 1), count_include_pad=True), (1, 3, 97, 301)),
    ("cf_rows_k3", PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), return_indices=True), (1, 2, 150, 151)),
    ("cf_rows_k3", PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True), (2, 1, 150, 151)),
    ("cf_rows_k2", PoolSpec("max", (2, 2, 2), return_indices=True), (1, 2, 9, 40, 41)),
    ("cl", PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), layout="channels_last",
                    return_indices=True), (1, 40, 41, 70)),
    ("cl", PoolSpec("avg", (2, 2), layout="channels_last"), (1, 64, 64, 33)),
    ("cl", PoolSpec("max", global_pool=True, layout="channels_last", return_indices=True), (1, 60, 60, 40)),
    ("global_cf", PoolSpec("max", global_pool=True, return_indices=True), (1, 30, 61, 67)),
    ("global_cf", PoolSpec("avg", global_pool=True), (1, 30, 61, 67)),
]


@pytest.mark.parametrize("path,spec,shape", BIG, ids=[f"{b[0]}-{b[1].mode}-{i}" for i, b in enumerate(BIG)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_big_calls_split_over_threads(path, spec, shape, dtype):
    rng = np.random.default_rng(7)
    x = rng.integers(-20, 20, size=shape).astype(dtype)  # many ties
    x.flat[rng.integers(0, x.size, 50)] = np.nan
    x.flat[rng.integers(0, x.size, 50)] = -0.0
    generic = CBackend(threads=1, generic_only=True)
    yg, indg = generic.forward(spec, x)
    for threads in (1, 2, 3):
        fast = CBackend(threads=threads, always_split=True)
        assert fast.kernel_path(spec, shape, dtype) == path
        y, ind = fast.forward(spec, x)
        if spec.mode == "max":
            assert_same_bits(y, yg)
        elif path == "global_cf":
            assert_close(y, yg, dtype, window_size(spec, shape))
        else:
            np.testing.assert_array_equal(y, yg)
        if spec.return_indices:
            np.testing.assert_array_equal(ind, indg)


# ---- backward ------------------------------------------------------------------------------

def check_fast_backward(spec, shape, dtype, x, dy_seed, threads, expected_path):
    fast, generic = CBackend(threads=threads, always_split=True), CBackend(threads=threads, generic_only=True)
    assert fast.kernel_path(spec, shape, dtype, backward=True) == expected_path
    g = spec.resolve(shape)
    dy = np.random.default_rng(dy_seed).uniform(-1, 1, size=g.output_shape).astype(dtype)
    if spec.mode == "max":
        _, ind = generic.forward(spec.replace(return_indices=True), x)
        dx = fast.backward(spec, shape, dy, indices=ind)
        assert_same_bits(dx, generic.backward(spec, shape, dy, indices=ind))  # same order of sums
        assert_close(dx, reference.backward(spec, shape, dy, indices=ind), dtype, window_size(spec, shape), scale=1.0)
    else:
        dx = fast.backward(spec, shape, dy)
        taps = window_size(spec, shape)
        assert_close(dx, generic.backward(spec, shape, dy), dtype, taps, scale=1.0)
        assert_close(dx, reference.backward(spec, shape, dy), dtype, taps, scale=1.0)


BACK_DTYPES = ("float32", "float64")


def rows_fit_scratch(g) -> bool:
    """The by-output-row avg backward paths hold input rows of W x (channels-last: C) elements."""
    return (g.in_spatial[-1] + 3) * (g.channels if g.spec.layout == "channels_last" else 1) <= 65536


def tiles_exactly(spec, shape) -> bool:
    """Windows 2 wide with stride 2 on the last axis, 1 or 2 (stride equal) on the others, no
    padding or dilation, input dimensions exactly kernel x output: the avg_back_tile path."""
    g = spec.resolve(shape)
    return (g.kernel[-1] == 2 and all(k <= 2 for k in g.kernel) and g.strides == g.kernel
            and not any(g.pads_begin + g.pads_end) and all(d == 1 for d in g.dilations)
            and all(i == k * o for i, k, o in zip(g.in_spatial, g.kernel, g.out_spatial)) and rows_fit_scratch(g))


def k3_plane(spec, shape) -> bool:
    """3 wide with stride 2 and no dilation on the last two axes of one plane (2-D, or 3-D of
    depth 1 with kernel 1 there): the avg_back_k3_2d path."""
    g = spec.resolve(shape)
    if len(g.kernel) < 2 or g.kernel[-2:] != (3, 3) or g.strides[-2:] != (2, 2) or g.dilations[-2:] != (1, 1):
        return False
    plane = len(g.kernel) == 2 or (g.in_spatial[0] == 1 and g.out_spatial[0] == 1 and g.kernel[0] == 1)
    return plane and rows_fit_scratch(g)


def covers_plane(spec, shape) -> bool:
    """One window over the whole of each plane, no padding: global pooling, or a kernel the size
    of the input."""
    g = spec.resolve(shape)
    return all(o == 1 for o in g.out_spatial) and g.kernel == g.in_spatial and not any(g.pads_begin + g.pads_end)


def avg_back_path(spec, shape) -> str:
    """The avg backward path the C backend takes for float dtypes, either layout."""
    contiguous_planes = spec.layout == "channels_first" or spec.resolve(shape).channels == 1
    if contiguous_planes and covers_plane(spec, shape):
        return "avg_back_global"
    if tiles_exactly(spec, shape):
        return "avg_back_tile"
    if k3_plane(spec, shape):
        return "avg_back_k3_2d"
    if spec.layout == "channels_last":
        return "avg_back_cl"
    g = spec.resolve(shape)
    if g.kernel[-1] in (2, 3) and g.strides[-1] == 2 and g.dilations[-1] == 1:
        return "avg_back_k2" if g.kernel[-1] == 2 else "avg_back_k3"
    return "avg_back_win"


def channels_last(spec, shape, c):
    """The same pooling on a channels-last input of c channels."""
    return spec.replace(layout="channels_last"), (shape[0], *shape[2:], c)


@st.composite
def tile_cases(draw, dtypes=FLOAT_DTYPES):
    """Average pooling whose windows tile the input: 2 (1-D), 2x2, 1x2, 2x2x2 ... with stride equal
    to the kernel on even sizes, either layout; widths cross a 16-lane vector now and then."""
    rank = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 2)) for _ in range(rank - 1)] + [2]
    out = [draw(st.integers(1, 4)) for _ in range(rank - 1)] + [draw(st.integers(1, 40))]
    spec = PoolSpec("avg", kernel, strides=kernel, ceil_mode=draw(st.booleans()),
                    count_include_pad=draw(st.booleans()))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *(k * o for k, o in zip(kernel, out)))
    if draw(st.booleans()):
        spec, shape = channels_last(spec, shape, draw(st.sampled_from([1, 3, 16, 17, 70])))
    assume(avg_back_path(spec, shape) == "avg_back_tile")  # not one window a plane: avg_back_global
    return spec, shape, draw(st.sampled_from(dtypes))


@examples(300)
@given(data=st.data(), case=st.one_of(cf_rows_cases(modes=("max",), dtypes=BACK_DTYPES),
                                      cl_cases(modes=("max",), dtypes=BACK_DTYPES),
                                      specs(modes=("max",), dtypes=BACK_DTYPES)),
       threads=THREADS)
def test_max_backward(data, case, threads):
    spec, shape, dtype = case
    x = data.draw(arrays(shape, dtype))
    check_fast_backward(spec, shape, dtype, x, data.draw(st.integers(0, 2**32 - 1)), threads, "max_back")


@examples(100)
@given(data=st.data(), threads=THREADS, dtype=st.sampled_from(["float32", "float64", "float16"]),
       moved=st.floats(0, 1))
def test_max_backward_large_planes_any_index(data, threads, dtype, moved):
    """Channels-first max backward on planes larger than the 512 elements max_back_range zeroes
    ahead of its scatter: dx is zeroed lazily, a chunk past each index that reaches beyond what is
    zeroed.  With a share of the indices sent anywhere in their plane (ahead of the zeroed part,
    far behind it, onto the first and the last element), every gradient must still land where its
    index says: bitwise the generic path, and the reference's sums."""
    h, w = data.draw(st.integers(17, 48)), data.draw(st.integers(31, 70))
    spec = PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), h, w)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(shape).astype(dtype)
    generic = CBackend(threads=threads, generic_only=True)
    _, ind = generic.forward(spec.replace(return_indices=True), x)
    planes = ind.reshape(-1, ind.shape[-2] * ind.shape[-1])  # a view: moves write through to ind
    picked = rng.random(planes.shape) < moved
    anywhere = rng.integers(0, h * w, planes.shape)
    anywhere[:, 0], anywhere[:, -1] = h * w - 1, 0  # the last element first, the first one last
    plane_start = (np.arange(planes.shape[0]) * h * w)[:, None]
    planes[picked] = (plane_start + anywhere)[picked]
    dy = rng.uniform(-1, 1, size=ind.shape).astype(dtype)
    fast = CBackend(threads=threads, always_split=True)
    assert fast.kernel_path(spec, shape, dtype, backward=True) == "max_back"
    dx = fast.backward(spec, shape, dy, indices=ind)
    assert_same_bits(dx, generic.backward(spec, shape, dy, indices=ind))
    assert_close(dx, reference.backward(spec, shape, dy, indices=ind), dtype, 9, scale=1.0)


def argmax_and_gradient(data, spec, shape, dtype, threads):
    """A drawn input's argmax by the generic path, and a gradient with -0, NaN and inf among its
    values: (rng, the generic backend, indices, dy) for a max backward test to move indices with."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = data.draw(arrays(shape, dtype))
    generic = CBackend(threads=threads, generic_only=True)
    _, ind = generic.forward(spec.replace(return_indices=True), x)
    dy = rng.uniform(-1, 1, size=ind.shape).astype(dtype)
    dy.flat[rng.integers(0, dy.size, 3)] = rng.choice([-0.0, np.nan, np.inf], 3)
    return rng, generic, ind, dy


@st.composite
def tile2_cases(draw):
    """2x2/s2 max (or 1x2x2, 1-deep windows, or 2x2x2) on even channels-first sizes; widths cross
    a 16-lane vector now and then, and rows of fewer than 8 outputs (masked) or not a multiple of
    8 (the last 8 again) come up."""
    out = [draw(st.integers(1, 4)), draw(st.integers(1, 40))]
    kernel = [2, 2]
    if draw(st.booleans()):
        out, kernel = [draw(st.integers(1, 3))] + out, [draw(st.integers(1, 2)), 2, 2]
    spec = PoolSpec("max", kernel, strides=kernel)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *(k * o for k, o in zip(kernel, out)))
    return spec, shape, draw(st.sampled_from(["float32", "float16"]))


@examples(100)
@given(data=st.data(), case=tile2_cases(), threads=THREADS, moved=st.booleans())
def test_max_backward_tile2(data, case, threads, moved):
    """2x2/s2 or 2x2x2/s2 max windows that tile a channels-first plane (max_back_tile2_avx512,
    _avx2): dx written row pair by row pair straight from dy and the indices, bitwise the generic
    scatter -- a -0 or NaN gradient included (0 + dy).  With an index moved to the next window of
    its plane (moved; anywhere: in a vector step or in a row's last, overlapping or masked, one),
    the plane goes back to the scatter, which takes it and sums the two gradients that meet."""
    spec, shape, dtype = case
    rng, generic, ind, dy = argmax_and_gradient(data, spec, shape, dtype, threads)
    if moved and ind.shape[-1] * ind.shape[-2] > 1:  # to the window after it in the same plane
        plane = ind.reshape(-1, ind.shape[-2] * ind.shape[-1])
        q, j = rng.integers(0, plane.shape[0]), rng.integers(0, plane.shape[1] - 1)
        plane[q, j] = plane[q, j + 1]
    fast = CBackend(threads=threads, always_split=True, no_fallback=not moved)  # unmoved: the tile form alone
    assert fast.kernel_path(spec, shape, dtype, backward=True) == "max_back"
    dx = fast.backward(spec, shape, dy, indices=ind)
    assert_same_bits(dx, generic.backward(spec, shape, dy, indices=ind))
    assert_close(dx, reference.backward(spec, shape, dy, indices=ind), dtype, 4, scale=1.0)


@examples(100)
@given(data=st.data(), threads=THREADS, dtype=st.sampled_from(["float16", "float32"]),
       moves=st.integers(0, 2))
def test_max_backward_k3s2(data, threads, dtype, moves):
    """3x3/s2 max with a row and column of padding before (max_back_k3s2_avx2, float16): dx
    gathered by input rows from each index's tap in its window, bitwise the generic scatter -- -0,
    NaN and inf gradients included, sums of up to four in output order; sizes odd and even, any
    padding after or ceil mode, output rows short of a vector and not a multiple of one.  With
    indices moved to another window's tap in the plane (moves), the plane goes back to the
    scatter, which takes any index in it."""
    h, w = data.draw(st.integers(2, 12)), data.draw(st.integers(4, 40))
    after = (data.draw(st.integers(0, 1)), data.draw(st.integers(0, 1)))
    spec = PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, *after), ceil_mode=data.draw(st.booleans()))
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), h, w)
    rng, generic, ind, dy = argmax_and_gradient(data, spec, shape, dtype, threads)
    planes = ind.reshape(-1, ind.shape[-2] * ind.shape[-1])  # a view: moves write through to ind
    for _ in range(moves):  # an index to another output's argmax in its plane: not its window's
        q, j, k = rng.integers(0, planes.shape[0]), *rng.integers(0, planes.shape[1], 2)
        planes[q, j] = planes[q, k]
    fast = CBackend(threads=threads, always_split=True, no_fallback=moves == 0)  # unmoved: the gather alone
    assert fast.kernel_path(spec, shape, dtype, backward=True) == "max_back"
    # a freed dx of sevens, which the allocator is likely to hand back for the next one: an
    # element the path forgets to write (a row no window reaches) then shows
    fast.backward(spec, shape, np.full_like(dy, 7), indices=ind)
    dx = fast.backward(spec, shape, dy, indices=ind)
    assert_same_bits(dx, generic.backward(spec, shape, dy, indices=ind))
    assert_close(dx, reference.backward(spec, shape, dy, indices=ind), dtype, 9, scale=1.0)


@examples(150)
@given(data=st.data(), dtype=st.sampled_from(["float16", "float32"]), moves=st.integers(0, 2),
       anywhere=st.booleans())
def test_max_backward_cl_gather(data, dtype, moves, anywhere):
    """Channels-last max backward with fewer images than threads and channels in vectors of eight
    (max_back_cl_gather_avx2): each input position's channels gathered from the windows covering
    it, the threads splitting the input rows -- bitwise the generic scatter, -0, NaN and inf
    gradients included; windows of any size, stride, dilation, padding and ceil mode, 1-D or 2-D,
    channel counts that leave 8, 16 or 24 after the 32-channel steps.  With indices moved to
    another output's argmax (moves: in or out of their window's span) or anywhere in the image,
    the codes found fall short where one leaves its span, and the scatter redoes the call."""
    rank = data.draw(st.integers(1, 2))
    k = [data.draw(st.integers(1, 4)) for _ in range(rank)]
    s = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    dil = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    pads = [data.draw(st.integers(0, (kk - 1) * dd)) for kk, dd in zip(k + k, dil + dil)]
    ceil = data.draw(st.booleans())
    threads = data.draw(st.sampled_from([2, 3]))
    batch = data.draw(st.integers(1, threads - 1))
    spatial = [data.draw(st.integers(1, 12)) for _ in range(rank)]
    shape = (batch, *spatial, data.draw(st.sampled_from([8, 16, 24, 40, 64, 88])))
    try:
        spec = PoolSpec("max", k, strides=s, dilations=dil, pads=pads, ceil_mode=ceil, layout="channels_last")
        spec.resolve(shape)
    except SpecError:
        assume(False)
    rng, generic, ind, dy = argmax_and_gradient(data, spec, shape, dtype, threads)
    images = ind.reshape(batch, -1)  # a view: moves write through to ind
    for _ in range(moves):  # an output's index to another's argmax in the image (the same channel)
        n, j = rng.integers(0, batch), rng.integers(0, images.shape[1])
        images[n, j] = images[n, j % shape[-1] + rng.integers(0, images.shape[1] // shape[-1]) * shape[-1]]
    if anywhere:  # one index to any position of its image and channel
        n, j = rng.integers(0, batch), rng.integers(0, images.shape[1])
        images[n, j] = n * np.prod(shape[1:]) + rng.integers(0, np.prod(shape[1:-1])) * shape[-1] + j % shape[-1]
    # indices left where the argmax put them: the gather itself must take the call (no_fallback)
    fast = CBackend(threads=threads, always_split=True, no_fallback=not (moves or anywhere))
    assert fast.kernel_path(spec, shape, dtype, backward=True) == "max_back"
    fast.backward(spec, shape, np.full_like(dy, 7), indices=ind)  # a freed dx of sevens: see k3s2
    dx = fast.backward(spec, shape, dy, indices=ind)
    assert_same_bits(dx, generic.backward(spec, shape, dy, indices=ind))
    assert_close(dx, reference.backward(spec, shape, dy, indices=ind), dtype, 16, scale=1.0)


@examples(300)
@given(data=st.data(), case=cf_rows_cases(modes=("avg",), dtypes=BACK_DTYPES), threads=THREADS)
def test_avg_backward_cf_rows(data, case, threads):
    spec, shape, dtype = case
    path = avg_back_path(spec, shape)
    check_fast_backward(spec, shape, dtype, None, data.draw(st.integers(0, 2**32 - 1)), threads, path)


@examples(200)
@given(data=st.data(), case=tile_cases(), threads=THREADS)
def test_avg_backward_tile(data, case, threads):
    """Each input element takes dy / divisor of its one window, the divisor a power of two: the
    generic path's values exactly (up to the sign of zero: it adds the share to a zeroed dx)."""
    spec, shape, dtype = case
    dy = data.draw(arrays(spec.resolve(shape).output_shape, dtype))
    fast, generic = CBackend(threads=threads, always_split=True), CBackend(threads=threads, generic_only=True)
    assert fast.kernel_path(spec, shape, dtype, backward=True) == "avg_back_tile"
    dx = fast.backward(spec, shape, dy)
    np.testing.assert_array_equal(dx, generic.backward(spec, shape, dy))
    np.testing.assert_array_equal(dx, reference.backward(spec, shape, dy).astype(dtype))


@st.composite
def k3_plane_cases(draw, dtypes=FLOAT_DTYPES):
    """Average 3x3 with stride 2 on the last two axes of a plane (2-D, or 3-D of depth 1), either
    layout: any pads, ceil mode, divisor; sizes from one window to a few 16-lane vectors wide."""
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    spec = PoolSpec("avg", (3, 3), strides=(2, 2), pads=pads, ceil_mode=draw(st.booleans()),
                    count_include_pad=draw(st.booleans()))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 70)))
    if draw(st.booleans()):
        spec = PoolSpec("avg", (1, 3, 3), strides=(1, 2, 2), pads=(0, pads[0], pads[1], 0, pads[2], pads[3]),
                        ceil_mode=spec.ceil_mode, count_include_pad=spec.count_include_pad)
        shape = (shape[0], shape[1], 1, *shape[2:])
    if draw(st.booleans()):
        spec, shape = channels_last(spec, shape, draw(st.sampled_from([1, 3, 16, 17, 70])))
    try:
        spec.resolve(shape)
    except SpecError:
        assume(False)
    assume(avg_back_path(spec, shape) == "avg_back_k3_2d")  # not one window a plane: avg_back_global
    return spec, shape, draw(st.sampled_from(dtypes))


@examples(300)
@given(data=st.data(), case=k3_plane_cases(), threads=THREADS)
def test_avg_backward_k3_plane(data, case, threads):
    spec, shape, dtype = case
    check_fast_backward(spec, shape, dtype, None, data.draw(st.integers(0, 2**32 - 1)), threads, "avg_back_k3_2d")


@examples(300)
@given(data=st.data(), case=cf_win_cases(modes=("avg",)), threads=THREADS)
def test_avg_backward_win(data, case, threads):
    """Any other channels-first window (avg_back_win): shares added tap by tap along the rows."""
    spec, shape, dtype = case
    check_fast_backward(spec, shape, dtype, None, data.draw(st.integers(0, 2**32 - 1)), threads, "avg_back_win")


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("include_pad", [False, True])
def test_avg_backward_stride1_plane(dtype, include_pad):
    """Stride 1 along both axes of a plane (avg_back_win's separable form): each output row's
    shares summed per input column, then each input row the sum of its output rows.  Windows
    clipped at every edge (pads up to k - 1, asymmetric, ones past the input's end), dilation,
    input rows and columns in no window, 1-D windows, a depth-1 3-D window, widths from one column
    up; within the summation-order tolerance of the generic path and the reference."""
    cases = [
        (PoolSpec("avg", (3, 3), strides=(1, 1), pads=(1, 1, 1, 1)), [(1, 3, 7, 9), (2, 2, 1, 1), (1, 2, 56, 56)]),
        (PoolSpec("avg", (2, 4), strides=(1, 1), pads=(1, 0, 0, 3)), [(1, 2, 5, 11), (1, 1, 2, 4)]),
        (PoolSpec("avg", (3, 2), strides=(1, 1), pads=(2, 0, 0, 1), dilations=(2, 3)), [(1, 2, 9, 13)]),
        # rows 1-3 and columns 1-3 in no window: their gradient is 0
        (PoolSpec("avg", (2, 2), strides=(1, 1), dilations=(4, 4)), [(1, 2, 5, 5), (1, 1, 5, 12)]),
        (PoolSpec("avg", (5,), strides=(1,), pads=(4, 2), ceil_mode=True), [(2, 3, 17), (1, 1, 3)]),
        (PoolSpec("avg", (1, 3, 3), strides=(1, 1, 1), pads=(0, 1, 2, 0, 0, 1)), [(1, 2, 1, 6, 19)]),
    ]
    seed = 0
    for spec, shapes in cases:
        spec = spec.replace(count_include_pad=include_pad)
        for shape in shapes:
            for threads in (1, 2):
                seed += 1
                check_fast_backward(spec, shape, dtype, None, seed, threads, "avg_back_win")


@st.composite
def global_back_cases(draw, mode="avg"):
    """Pooling over whole contiguous planes (channels-first, or channels-last with one channel):
    global pooling, or a kernel the size of the input; any dtype, planes from 1 to ~1000."""
    rank = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 40 if rank == 1 else 10)) for _ in range(rank))
    if draw(st.booleans()):
        spec = PoolSpec(mode, global_pool=True)
    else:
        spec = PoolSpec(mode, spatial, count_include_pad=mode == "avg" and draw(st.booleans()),
                        ceil_mode=draw(st.booleans()))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 20)), *spatial)
    if draw(st.booleans()):
        spec, shape = channels_last(spec, shape, 1)
    return spec, shape, draw(st.sampled_from(FLOAT_DTYPES))


@examples(200)
@given(data=st.data(), case=global_back_cases(), threads=THREADS)
def test_avg_backward_global(data, case, threads):
    """Each element takes its plane's dy / P (avg_back_global): the generic path's values bit for
    bit, signed zeros (+0: the generic path adds the share to zero), NaN and inf included."""
    spec, shape, dtype = case
    dy = data.draw(arrays(spec.resolve(shape).output_shape, dtype))
    fast, generic = CBackend(threads=threads, always_split=True), CBackend(threads=threads, generic_only=True)
    assert fast.kernel_path(spec, shape, dtype, backward=True) == "avg_back_global"
    dx = fast.backward(spec, shape, dy)
    assert_same_bits(dx, generic.backward(spec, shape, dy))
    assert_close(dx, reference.backward(spec, shape, dy), dtype, window_size(spec, shape), scale=1.0)


@examples(200)
@given(data=st.data(), case=global_back_cases(mode="max"), threads=THREADS)
def test_max_backward_global(data, case, threads):
    """One output a plane (max_back_range: float32 and float64 planes of up to 512 values in runs
    zeroed by one memset, each gradient then stored as + 0 plus it): the generic path's values bit
    for bit, signed zeros, NaN and inf gradients included; an index moved out of its plane, into
    the next or the one before, past the array or 2^32 away, is refused."""
    spec, shape, dtype = case
    x, dy = data.draw(arrays(shape, dtype)), data.draw(arrays(spec.resolve(shape).output_shape, dtype))
    fast, generic = CBackend(threads=threads, always_split=True), CBackend(threads=threads, generic_only=True)
    assert fast.kernel_path(spec, shape, dtype, backward=True) == "max_back"
    _, ind = generic.forward(spec.replace(return_indices=True), x)
    dx = fast.backward(spec, shape, dy, indices=ind)
    assert_same_bits(dx, generic.backward(spec, shape, dy, indices=ind))
    assert_close(dx, reference.backward(spec, shape, dy, indices=ind), dtype, window_size(spec, shape), scale=1.0)
    plane = x.size // ind.size
    bad, k = ind.copy(), data.draw(st.integers(0, ind.size - 1))
    bad.flat[k] += data.draw(st.sampled_from([plane, -plane, x.size, -x.size, 2**32]))
    with pytest.raises(_kernels.KernelError) as err:
        fast.backward(spec, shape, dy, indices=bad)
    assert err.value.status == "POOL_E_INDEX"


@examples(300)
@given(data=st.data(), case=cl_cases(modes=("avg",), dtypes=BACK_DTYPES), threads=THREADS)
def test_avg_backward_cl(data, case, threads):
    spec, shape, dtype = case
    check_fast_backward(spec, shape, dtype, None, data.draw(st.integers(0, 2**32 - 1)), threads,
                        avg_back_path(spec, shape))


@examples(300)
@given(data=st.data(), case=st.one_of(cf_rows_cases(modes=("max",), dtypes=("float16",)),
                                      cl_cases(modes=("max",), dtypes=("float16",)),
                                      specs(modes=("max",), dtypes=("float16",))),
       threads=THREADS)
def test_max_backward_float16(data, case, threads):
    """float16 max backward: summed in float32 scratch (a plane, or channels-last a plane times a
    block of channels) in output order and rounded once, as the generic path does: bitwise equal."""
    spec, shape, dtype = case
    x = data.draw(arrays(shape, dtype))
    check_fast_backward(spec, shape, dtype, x, data.draw(st.integers(0, 2**32 - 1)), threads, "max_back")


@examples(300)
@given(data=st.data(), case=cl_cases(modes=("avg",), dtypes=("float16",)), threads=THREADS)
def test_avg_backward_cl_float16(data, case, threads):
    """float16 avg backward, channels-last: the float32 path's sums in a float32 scratch block,
    rounded once; the generic path's order of sums, so bitwise equal to it."""
    spec, shape, dtype = case
    # one channel is the memory of channels-first planes: those paths (or generic) take it
    path = avg_back_path(spec, shape) if shape[-1] > 1 else CBackend().kernel_path(spec, shape, dtype, backward=True)
    check_fast_backward(spec, shape, dtype, None, data.draw(st.integers(0, 2**32 - 1)), threads, path)
    if path == "avg_back_cl":
        dy = np.random.default_rng(1).uniform(-1, 1, size=spec.resolve(shape).output_shape).astype(dtype)
        assert_same_bits(CBackend(threads=threads).backward(spec, shape, dy),
                         CBackend(threads=threads, generic_only=True).backward(spec, shape, dy))


@examples(300)
@given(data=st.data(), case=cf_rows_cases(modes=("avg",), dtypes=("float16",)), threads=THREADS)
def test_avg_backward_cf_rows_float16(data, case, threads):
    """float16 avg backward, cf_rows shapes: each input row summed in a float32 scratch row."""
    spec, shape, dtype = case
    path = avg_back_path(spec, shape)
    check_fast_backward(spec, shape, dtype, None, data.draw(st.integers(0, 2**32 - 1)), threads, path)


def test_float16_backward_big_calls_split_over_threads():
    rng = np.random.default_rng(5)
    shape = (1, 3, 97, 301)
    x = rng.integers(-20, 20, size=shape).astype(np.float16)
    for spec in (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), PoolSpec("max", (2, 2)),
                 PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), count_include_pad=True)):
        generic = CBackend(threads=1, generic_only=True)
        dy = rng.uniform(-1, 1, size=spec.resolve(shape).output_shape).astype(np.float16)
        ind = generic.forward(spec.replace(return_indices=True), x)[1] if spec.mode == "max" else None
        expected = generic.backward(spec, shape, dy, indices=ind)
        for threads in (1, 2, 3):
            dx = CBackend(threads=threads, always_split=True).backward(spec, shape, dy, indices=ind)
            if spec.mode == "max":
                assert_same_bits(dx, expected)
            else:
                assert_close(dx, expected, "float16", window_size(spec, shape), scale=1.0)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("spec,shape", [
    (PoolSpec("avg", (1, 3, 3), strides=(1, 2, 2), pads=(0, 1, 1, 0, 1, 1)), (1, 1, 2, 3, 2 * 262_145 + 1)),
    (PoolSpec("avg", (2, 3), strides=(1, 2), pads=(1, 0, 1, 1), ceil_mode=True, count_include_pad=True),
     (1, 1, 3, 2 * 262_145 + 1))])
def test_avg_backward_rows_wider_than_the_row_cache(spec, shape, dtype):
    """Rows so wide that the per-thread cache of expanded rows has one slot (2 MiB budget): the
    two output rows covering an input row then share it, and the second takes the spare slot."""
    dy = np.random.default_rng(11).uniform(-1, 1, size=spec.resolve(shape).output_shape).astype(dtype)
    expected = CBackend(generic_only=True).backward(spec, shape, dy)
    for threads in (1, 2):
        fast = CBackend(threads=threads)
        assert fast.kernel_path(spec, shape, dtype, backward=True) == "avg_back_k3"
        assert_close(fast.backward(spec, shape, dy), expected, dtype, window_size(spec, shape), scale=1.0)


@pytest.mark.parametrize("spec,shape", [
    (PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), layout="channels_last"), (1, 40, 41, 70)),
    # (stride 1 along the rows: 3x3/s2 would take avg_back_k3_2d)
    (PoolSpec("avg", (3, 3), strides=(1, 2), pads=(1, 1, 1, 1), layout="channels_last", ceil_mode=True), (2, 41, 40, 33)),
    # plane_size 40000: the float16 scratch cap (2 MiB) cuts the channel block to 16
    (PoolSpec("avg", (2, 2), layout="channels_last", count_include_pad=True, pads=(0, 1, 0, 0)), (1, 200, 200, 40)),
    (PoolSpec("max", (2, 2), layout="channels_last"), (1, 200, 200, 40)),
])
def test_float16_channels_last_backward_big_calls(spec, shape):
    """float16 channels-last backward over blocks of channels split between threads: bitwise the
    generic path (the same sums in the same order, rounded once)."""
    rng = np.random.default_rng(9)
    x = rng.integers(-20, 20, size=shape).astype(np.float16)
    generic = CBackend(threads=1, generic_only=True)
    dy = rng.uniform(-1, 1, size=spec.resolve(shape).output_shape).astype(np.float16)
    ind = generic.forward(spec.replace(return_indices=True), x)[1] if spec.mode == "max" else None
    expected = generic.backward(spec, shape, dy, indices=ind)
    for threads in (1, 2, 3):
        b = CBackend(threads=threads)
        assert b.kernel_path(spec, shape, "float16", backward=True) == ("max_back" if spec.mode == "max" else "avg_back_cl")
        assert_same_bits(b.backward(spec, shape, dy, indices=ind), expected)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("bad", ["negative", "other_plane", "past_end", "next_image", "previous_image",
                                 "between_channels", "low_bits_valid"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("channels", [3, 4, 8])
@pytest.mark.parametrize("side", [6, 40])
def test_max_backward_fast_path_refuses_bad_indices(layout, bad, dtype, channels, side):
    """Each bad index is refused (POOL_E_INDEX), never added anywhere.  Channels-last checks that
    an index is a multiple of the channel count from its channel's first element: with a mask
    where that count is a power of two (4), else through a double quotient (3); with eight
    channels and fewer images than threads it is first gathered by input rows, finds fewer
    codes than outputs and goes to the scatter.  Channels-first planes of 40 x 40 are past the
    chunk that max_back_range zeroes ahead of its scatter."""
    spec = PoolSpec("max", (2, 2), layout=layout)
    shape = (2, channels, side, side) if layout == "channels_first" else (2, side, side, channels)
    x = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    b = CBackend(threads=3, always_split=True)
    assert b.kernel_path(spec, shape, dtype, backward=True) == "max_back"
    _, ind = b.forward(spec.replace(return_indices=True), x)
    ind = ind.copy()
    first = ind.reshape(-1)
    if bad == "negative":
        first[0] = -1
    elif bad == "other_plane":
        first[-1] = 0  # the last output's window lies in another (batch, channel) plane
    elif bad == "past_end":
        first[-1] = x.size
    elif bad == "next_image":
        first[0] += x[0].size  # the same position and channel, one image later: inside the array
    elif bad == "previous_image":
        first[-1] -= x[0].size  # the same position and channel, one image earlier: inside the array
    elif bad == "low_bits_valid":
        first[0] += 2**32  # far outside, its low 32 bits still its own (the fast paths compare those)
    else:
        if layout == "channels_first":
            pytest.skip("channels-first planes are contiguous: nothing lies between them")
        first[0] += 1  # the next channel's element
    dy = np.ones(ind.shape, dtype)
    with pytest.raises(_kernels.KernelError) as err:
        b.backward(spec, shape, dy, indices=ind)
    assert err.value.status == "POOL_E_INDEX"


def test_generic_only_flag_and_unknown_flags():
    spec, shape = PoolSpec("max", (2, 2)), (1, 1, 4, 4)
    assert CBackend().kernel_path(spec, shape, "float32") == "cf_rows_k2"
    assert CBackend(generic_only=True).kernel_path(spec, shape, "float32") == "generic"
    assert CBackend().kernel_path(spec.replace(mode="lp"), shape, "float32") == "generic"
    d = _kernels.PoolDesc()
    d.mode, d.dtype, d.layout, d.rank, d.nthreads, d.batch, d.channels = 0, 0, 0, 1, 1, 1, 1
    d.in_shape[0] = d.out_shape[0] = d.kernel[0] = d.stride[0] = d.dilation[0] = 1
    x = np.zeros(1, np.float32)
    y = np.zeros(1, np.float32)
    assert _kernels.pool_forward(d, x.ctypes.data, 4, y.ctypes.data, 4, None, 0) == 0
    d.flags = 8  # no such flag
    assert _kernels.STATUS[_kernels.pool_forward(d, x.ctypes.data, 4, y.ctypes.data, 4, None, 0)] == "POOL_E_PARAM"
    assert _kernels.path(d) is None


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_small_call_path_is_lean(dtype):
    """The plan cache returns the same descriptor for the same (spec, shape, dtype), and a call
    with another shape still goes through every check."""
    b = CBackend(threads=2)
    spec = PoolSpec("max", (2, 2))
    x = np.ones((1, 16, 32, 32), dtype)
    assert b._plan(spec, x.shape, x.dtype) is b._plan(spec, x.shape, x.dtype)
    with pytest.raises(SpecError):
        b.forward(spec, np.ones((1, 16, 1, 1), dtype))
