"""The C backend equals the numpy reference: exactly for max values and indices, within the
summation-order tolerance of tests/strategies.py for avg, lp and every backward."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolserve import reference
from poolserve.backends.c import CBackend
from poolserve.spec import PoolSpec, SpecError

from strategies import arrays, assert_close, assert_matches_reference, examples, specs, window_size

pytestmark = pytest.mark.kernels


def check_forward(backend, spec, x):
    assert_matches_reference(spec, x, *backend.forward(spec, x))


@examples(1000)
@given(data=st.data(), case=specs(), threads=st.sampled_from([1, 2, 3]))
def test_forward_matches_reference(data, case, threads):
    spec, shape, dtype = case
    x = data.draw(arrays(shape, dtype))
    check_forward(CBackend(threads=threads), spec, x)


@examples(400)
@given(data=st.data(), case=specs(dtypes=("float32", "float64", "float16")))
def test_backward_matches_reference(data, case):
    spec, shape, dtype = case
    x = data.draw(arrays(shape, dtype, special=False))
    b = CBackend(threads=2)
    g = spec.resolve(shape)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dy = rng.uniform(-1, 1, size=g.output_shape).astype(dtype)
    if spec.mode == "max":
        _, ind = b.forward(spec.replace(return_indices=True), x)
        dx = b.backward(spec, shape, dy, indices=ind)
        dxr = reference.backward(spec, shape, dy, indices=ind)
        # the same gradient from the input alone (indices recomputed)
        assert_close(b.backward(spec, shape, dy, x=x), dxr, dtype, 64, scale=1.0)
    else:
        dx = b.backward(spec, shape, dy, x=x)
        dxr = reference.backward(spec, shape, dy, x=x)
    assert dx.shape == shape and dx.dtype == dy.dtype
    # every input element collects at most prod(kernel) window gradients of |dy| <= 1
    scale = 1.0 if spec.mode != "lp" else 4.0
    assert_close(dx, dxr, dtype, window_size(spec, shape), scale=scale)


def test_non_contiguous_and_byte_swapped_inputs():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 3, 10, 12)).astype(np.float32)
    spec = PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), return_indices=True)
    view = base[:, :, ::2, ::-1]  # strided and reversed: made contiguous once, explicitly
    check_forward(CBackend(), spec, view)
    check_forward(CBackend(), spec, base.astype(">f4"))


def test_thread_counts_agree():
    x = np.random.default_rng(1).standard_normal((3, 5, 17, 13)).astype(np.float32)
    spec = PoolSpec("avg", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    ys = [CBackend(threads=t).forward(spec, x)[0] for t in (1, 2, 7, 64)]
    for y in ys[1:]:
        np.testing.assert_array_equal(y, ys[0])  # planes are split, never the sums


def test_max_backward_sums_overlapping_windows():
    # 3x3/s1 windows overlap: the single maximum collects the gradient of every window it wins
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = 1.0
    spec = PoolSpec("max", (3, 3), strides=(1, 1))
    dy = np.ones((1, 1, 3, 3), np.float32)
    dx = CBackend().backward(spec, x.shape, dy, x=x)
    assert dx[0, 0, 2, 2] == 9.0 and dx.sum() == 9.0


EDGE = st.one_of(st.integers(1, 4), st.sampled_from([2**31 - 1, 2**31, 2**31 + 1, 2**40, 2**62]))


@examples(300)
@given(kernel=st.lists(EDGE, min_size=1, max_size=3), data=st.data())
def test_what_the_spec_accepts_the_kernels_accept(kernel, data):
    """The two layers of checks agree: a spec that resolves never gets a kernel refusal (which
    the service would have to report as INTERNAL).  Edge values sit around the kernels' limits."""
    r = len(kernel)
    strides = data.draw(st.lists(EDGE, min_size=r, max_size=r))
    dil = data.draw(st.lists(EDGE, min_size=r, max_size=r))
    try:
        spec = PoolSpec("max", kernel, strides=strides, dilations=dil, ceil_mode=data.draw(st.booleans()))
        shape = (1, 1) + tuple(data.draw(st.integers(1, 6)) for _ in range(r))
        spec.resolve(shape)
    except SpecError:
        return
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    check_forward(CBackend(), spec, x)


@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
def test_backward_refuses_a_gradient_that_is_not_float(dtype):
    """The gradient's dtype is checked against np.dtype objects (not dtype.name, which costs
    microseconds in NumPy 2): an integer or bool gradient is still refused by name."""
    spec = PoolSpec("avg", (2, 2), strides=(2, 2))
    with pytest.raises(SpecError, match=f"grad_output.dtype.*{dtype}.*must be one of float32, float64, float16"):
        CBackend(threads=1).backward(spec, (1, 1, 4, 4), np.ones((1, 1, 2, 2), dtype))
    dy = np.arange(4, dtype="float64").reshape(1, 1, 2, 2)  # every float dtype passes
    np.testing.assert_array_equal(CBackend(threads=1).backward(spec, (1, 1, 4, 4), dy),
                                  reference.backward(spec, (1, 1, 4, 4), dy))
