"""The numpy reference is the oracle of every other test, so it is checked against oracles
that share none of its code: Python's builtins, PyTorch (where installed), ONNX's own reference
evaluator, finite differences, and inputs built so the answer is known by construction."""

import math
import statistics

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from poolserve import reference
from poolserve.spec import PoolSpec, SpecError

from strategies import examples

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (pip install torch==2.13.0+cpu)")


# ---- the seed's examples, against Python's builtins ---------------------------------------------
@given(st.lists(st.floats(-1e6, 1e6), min_size=4, max_size=4))
def test_2x2_max_takes_the_max_of_4_numbers(values):
    x = np.array(values, dtype=np.float64).reshape(1, 1, 2, 2)
    y, ind = reference.forward(PoolSpec("max", (2, 2), return_indices=True), x)
    assert y.item() == max(values)
    assert ind.item() == values.index(max(values))  # the first of equal maxima
    y, _ = reference.forward(PoolSpec("avg", (2, 2)), x)
    assert y.item() == pytest.approx(statistics.fmean(values), rel=1e-12, abs=1e-9)
    y, _ = reference.forward(PoolSpec("lp", (2, 2), p=2), x)
    assert y.item() == pytest.approx(math.hypot(*values), rel=1e-12)


def test_224_volume_pooled_2_2_keeps_each_quadrant_max():
    x = np.random.default_rng(0).standard_normal((1, 64, 224, 224)).astype(np.float32)
    y, _ = reference.forward(PoolSpec("max", (2, 2)), x)
    assert y.shape == (1, 64, 112, 112)
    quads = np.stack([x[..., i::2, j::2] for i in (0, 1) for j in (0, 1)])
    np.testing.assert_array_equal(y, quads.max(axis=0))


# ---- rules by construction ----------------------------------------------------------------------
@given(st.data())
def test_nan_propagates_with_the_first_nan_index(data):
    k = data.draw(st.integers(2, 4))
    x = np.array(data.draw(st.lists(st.floats(-10, 10), min_size=k, max_size=k)), dtype=np.float32)
    nan_at = sorted(data.draw(st.sets(st.integers(0, k - 1), min_size=1)))
    x[nan_at] = np.nan
    y, ind = reference.forward(PoolSpec("max", (k,), return_indices=True), x.reshape(1, 1, k))
    assert np.isnan(y.item()) and ind.item() == nan_at[0]
    for mode in ("avg", "lp"):
        assert np.isnan(reference.forward(PoolSpec(mode, (k,)), x.reshape(1, 1, k))[0].item())


def test_dilated_window_over_begin_padding():
    # k=2, dilation 2, pad 1, stride 3: window 0 taps -1 (padding) and 1; window 1 taps 2 and 4
    x = np.arange(1.0, 7.0).reshape(1, 1, 6)
    spec = PoolSpec("avg", (2,), strides=(3,), dilations=(2,), pads=(1, 0))
    y, _ = reference.forward(spec, x)
    np.testing.assert_array_equal(y[0, 0], [x[0, 0, 1], (x[0, 0, 2] + x[0, 0, 4]) / 2])


def test_padding_is_minus_inf_for_max_and_zero_for_lp():
    x = np.full((1, 1, 3), -5.0)
    y, _ = reference.forward(PoolSpec("max", (2,), strides=(1,), pads=(1, 1)), x)
    np.testing.assert_array_equal(y, np.full((1, 1, 4), -5.0))  # never the pad's value
    y, _ = reference.forward(PoolSpec("lp", (2,), strides=(1,), pads=(1, 1), p=1), x)
    np.testing.assert_array_equal(y, [[[5.0, 10.0, 10.0, 5.0]]])  # |−5| alone at the edges


@given(st.integers(1, 3), st.booleans(), st.data())
def test_layouts_are_a_relabelling(rank, with_pad, data):
    """channels_last gives the transposed result, and indices that address the same elements."""
    spec = PoolSpec("max", (2,) * rank, strides=(1,) * rank, pads=(1 if with_pad else 0,) * (2 * rank),
                    return_indices=True)
    x = np.random.default_rng(data.draw(st.integers(0, 99))).integers(-3, 4, (2, 3) + (4,) * rank).astype(np.float32)
    y_cf, i_cf = reference.forward(spec, x)
    x_cl = np.moveaxis(x, 1, -1).copy()
    y_cl, i_cl = reference.forward(spec.replace(layout="channels_last"), x_cl)
    np.testing.assert_array_equal(np.moveaxis(y_cl, -1, 1), y_cf)
    np.testing.assert_array_equal(x_cl.reshape(-1)[np.moveaxis(i_cl, -1, 1)], x.reshape(-1)[i_cf])


# ---- against PyTorch ----------------------------------------------------------------------------
def _torch_pool(rank, name):
    return getattr(F, f"{name}{rank}d")


@st.composite
def torch_cases(draw, dilation=True):
    """Specs inside what PyTorch accepts: symmetric pads <= k/2."""
    rank = draw(st.integers(1, 3))
    k = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    s = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    d = draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank)) if dilation else [1] * rank
    p = [draw(st.integers(0, kk // 2)) for kk in k]
    size = [draw(st.integers(dd * (kk - 1) + 1, dd * (kk - 1) + 5)) for kk, dd in zip(k, d)]
    ceil = draw(st.booleans())
    x = np.random.default_rng(draw(st.integers(0, 2**31))).integers(-4, 5, (2, 2, *size)).astype(np.float64)
    return rank, k, s, d, p, ceil, x


@needs_torch
@examples(200)
@given(torch_cases())
def test_max_matches_pytorch(case):
    rank, k, s, d, p, ceil, x = case
    spec = PoolSpec("max", k, strides=s, dilations=d, pads=p + p, ceil_mode=ceil, return_indices=True)
    try:
        y, ind = reference.forward(spec, x)
    except SpecError:
        return  # refused: a window over padding only (test_spec covers the rule)
    ty, tind = _torch_pool(rank, "max_pool")(torch.from_numpy(x), k, s, p, d, ceil_mode=ceil, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    plane = int(np.prod(x.shape[2:]))  # PyTorch's indices are offsets within each plane
    np.testing.assert_array_equal(ind % plane, tind.numpy())


@needs_torch
@examples(200)
@given(torch_cases(dilation=False), st.booleans())
def test_avg_matches_pytorch(case, count_include_pad):
    rank, k, s, _, p, ceil, x = case
    spec = PoolSpec("avg", k, strides=s, pads=p + p, ceil_mode=ceil, count_include_pad=count_include_pad)
    y, _ = reference.forward(spec, x)
    ty = _torch_pool(rank, "avg_pool")(torch.from_numpy(x), k, s, p, ceil_mode=ceil, count_include_pad=count_include_pad)
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-12, atol=1e-12)


@needs_torch
@examples(100)
@given(torch_cases(), st.sampled_from(["max", "avg"]))
def test_backward_matches_pytorch_autograd(case, mode):
    rank, k, s, d, p, ceil, x = case
    x = x + np.random.default_rng(0).uniform(0, 0.1, x.shape)  # distinct values: no tie ambiguity
    if mode == "avg":
        d = [1] * rank
    spec = PoolSpec(mode, k, strides=s, dilations=d, pads=p + p, ceil_mode=ceil)
    try:
        y, _ = reference.forward(spec, x)
    except SpecError:
        return
    dy = np.random.default_rng(1).standard_normal(y.shape)
    tx = torch.from_numpy(x).requires_grad_()
    if mode == "max":
        ty = _torch_pool(rank, "max_pool")(tx, k, s, p, d, ceil_mode=ceil)
    else:
        ty = _torch_pool(rank, "avg_pool")(tx, k, s, p, ceil_mode=ceil, count_include_pad=False)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(reference.backward(spec, x.shape, dy, x=x), tx.grad.numpy(), rtol=1e-10, atol=1e-12)


@needs_torch
def test_max_with_asymmetric_pads_matches_pytorch_on_a_minus_inf_padded_input():
    """Asymmetric pads (and so SAME padding) are outside PyTorch's max_pool; padding the input with
    -inf by hand and pooling without padding is the same function."""
    rng = np.random.default_rng(3)
    for pads, k, d in [((0, 2, 1, 0), (3, 3), (1, 1)), ((1, 0, 0, 1), (2, 3), (2, 1)), ((2, 1, 0, 0), (3, 2), (1, 2))]:
        x = rng.integers(-3, 4, (2, 3, 7, 6)).astype(np.float64)
        spec = PoolSpec("max", k, strides=(1, 2), dilations=d, pads=pads, return_indices=True)
        y, ind = reference.forward(spec, x)
        padded = F.pad(torch.from_numpy(x), (pads[1], pads[3], pads[0], pads[2]), value=-math.inf)
        ty, tind = F.max_pool2d(padded, k, (1, 2), 0, d, return_indices=True)
        np.testing.assert_array_equal(y, ty.numpy())
        pw = padded.shape[-1]
        rows, cols = tind.numpy() // pw - pads[0], tind.numpy() % pw - pads[1]
        np.testing.assert_array_equal(ind % (7 * 6), rows * 6 + cols)


# ---- against ONNX's reference evaluator (asymmetric pads, dilations, auto_pad) ------------------
@examples(150)
@given(st.data())
def test_avg_and_lp_match_onnx_reference_evaluator(data):
    """onnx.reference implements AveragePool and LpPool independently of us.  (Its MaxPool
    mishandles padding -- index errors and wrong shapes -- so max is checked against PyTorch.)"""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    rank = data.draw(st.integers(1, 3))
    mode = data.draw(st.sampled_from(["avg", "lp"]))
    k = data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    s = data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    d = data.draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))
    auto_pad = data.draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    pads = [data.draw(st.integers(0, kk - 1)) for kk in k + k] if auto_pad == "NOTSET" else []
    if auto_pad != "NOTSET" or any(pads):
        # the evaluator ignores dilations when it sizes auto_pad (shapes: test_spec), and shifts
        # dilated windows that start in the begin padding (test_dilated_window_over_begin_padding)
        d = [1] * rank
    # ceil mode is checked against PyTorch instead: with begin padding the evaluator shifts the
    # windows in ceil mode too (in 3, k 3, s 3, pad 1: window 0 must average x0 and x1 only)
    ceil = False
    size = [data.draw(st.integers(dd * (kk - 1) + 1, dd * (kk - 1) + 4)) for kk, dd in zip(k, d)]
    if auto_pad.startswith("SAME"):
        # where the stride skips past the end, ONNX's SAME formula gives a negative total pad; we
        # clamp it to 0 (as TensorFlow does), the evaluator crashes on it: compare the rest
        assume(all((-(-n // st_) - 1) * st_ + dd * (kk - 1) + 1 >= n for n, st_, dd, kk in zip(size, s, d, k)))
    x = np.random.default_rng(data.draw(st.integers(0, 2**31))).standard_normal((1, 2, *size))
    attrs = dict(kernel_shape=k, strides=s, dilations=d, auto_pad=auto_pad)
    if pads:
        attrs["pads"] = pads
    if mode == "avg":
        cip = data.draw(st.booleans())
        attrs.update(ceil_mode=int(ceil), count_include_pad=int(cip))
        spec = PoolSpec("avg", k, strides=s, dilations=d, pads=pads, auto_pad=auto_pad, ceil_mode=ceil,
                        count_include_pad=cip)
    else:
        p = data.draw(st.sampled_from([1, 2, 3]))
        attrs["p"] = p
        spec = PoolSpec("lp", k, strides=s, dilations=d, pads=pads, auto_pad=auto_pad, p=p)
    try:
        y, _ = reference.forward(spec, x)
    except SpecError:
        return
    node = helper.make_node("AveragePool" if mode == "avg" else "LpPool", ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)


# ---- backward against finite differences --------------------------------------------------------
@examples(40)
@given(st.data())
def test_backward_matches_finite_differences(data):
    rank = data.draw(st.integers(1, 2))
    mode = data.draw(st.sampled_from(["max", "avg", "lp"]))
    k = data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    s = data.draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))
    pads = [data.draw(st.integers(0, kk - 1)) for kk in k + k]
    size = [data.draw(st.integers(kk, kk + 3)) for kk in k]
    layout = data.draw(st.sampled_from(["channels_first", "channels_last"]))
    extra = {"count_include_pad": data.draw(st.booleans())} if mode == "avg" else {}
    if mode == "lp":
        extra["p"] = data.draw(st.sampled_from([1.5, 2.0, 3.0]))
    spec = PoolSpec(mode, k, strides=s, pads=pads, layout=layout, **extra)
    shape = (1, 2, *size) if layout == "channels_first" else (1, *size, 2)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    # distinct values away from 0: max has a unique argmax, lp is smooth
    x = (rng.permutation(np.prod(shape)) + 1.0).reshape(shape) * rng.choice([-1, 1], shape) / 7
    try:
        y, _ = reference.forward(spec, x)
    except SpecError:
        return
    dy = rng.standard_normal(y.shape)
    h = 1e-6
    numeric = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = h
        e = e.reshape(shape)
        numeric.reshape(-1)[i] = ((reference.forward(spec, x + e)[0] - reference.forward(spec, x - e)[0]) * dy).sum() / (2 * h)
    np.testing.assert_allclose(reference.backward(spec, shape, dy, x=x), numeric, rtol=1e-5, atol=1e-6)
