"""The ONNX backend agrees with the numpy reference and with the C backend (three-way):
exactly for max values and indices, within tests/strategies.py's summation-order tolerance for
avg, lp and every backward.  Cases the backend refuses must be refused by supports() first and
then raise Unsupported -- never a wrong answer."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("onnxruntime", reason="the onnx backend needs onnxruntime (pip install poolserve[server])")

from poolserve import reference  # noqa: E402
from poolserve.backends.base import Unsupported  # noqa: E402
from poolserve.backends.c import CBackend  # noqa: E402
from poolserve.backends.onnx import OnnxBackend  # noqa: E402
from poolserve.spec import PoolSpec  # noqa: E402

from strategies import arrays, assert_close, examples, specs, window_size  # noqa: E402

# one backend per module: its session cache is shared by every example, as in the server
ONNX = OnnxBackend(threads=2)
C = CBackend(threads=2)


def agree(spec, actual, expected, dtype, shape):
    (y, ind), (yr, ir) = actual, expected
    assert y.shape == yr.shape and y.dtype == yr.dtype
    if spec.mode == "max":
        np.testing.assert_array_equal(y, yr)  # NaN == NaN here; -0.0 == 0.0 too (ties are equal)
        if spec.return_indices:
            assert ind.dtype == np.int64
            np.testing.assert_array_equal(ind, ir)
        else:
            assert ind is None
    else:
        assert_close(y, yr, dtype, window_size(spec, shape))


def check_forward(spec, x):
    dtype = x.dtype.name
    reason = ONNX.supports(spec, dtype)
    if reason is not None:
        with pytest.raises(Unsupported):
            ONNX.forward(spec, x)
        return False
    expected = reference.forward(spec, x)
    agree(spec, ONNX.forward(spec, x), expected, dtype, x.shape)
    agree(spec, C.forward(spec, x), expected, dtype, x.shape)
    return True


@examples(600)
@given(data=st.data(), case=specs())
def test_forward_three_way(data, case):
    spec, shape, dtype = case
    check_forward(spec, data.draw(arrays(shape, dtype)))


@examples(300)
@given(data=st.data(), case=specs(dtypes=("float32", "float64", "float16")))
def test_backward_three_way(data, case):
    spec, shape, dtype = case
    x = data.draw(arrays(shape, dtype, special=False))
    g = spec.resolve(shape)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dy = rng.uniform(-1, 1, size=g.output_shape).astype(dtype)
    reason = ONNX.supports_backward(spec, dtype)
    if reason is not None:
        with pytest.raises(Unsupported):
            ONNX.backward(spec, shape, dy, x=x, indices=np.zeros(g.output_shape, np.int64))
        return
    if spec.mode == "max":
        # route through the reference's indices so that all three scatter the same switches
        _, ind = reference.forward(spec.replace(return_indices=True), x)
        kw = {"indices": ind}
    else:
        kw = {"x": x}
    dxr = reference.backward(spec, shape, dy, **kw)
    scale = 1.0 if spec.mode != "lp" else 4.0
    for backend in (ONNX, C):
        dx = backend.backward(spec, shape, dy, **kw)
        assert dx.shape == shape and dx.dtype == dy.dtype
        assert_close(dx, dxr, dtype, window_size(spec, shape), scale=scale)
