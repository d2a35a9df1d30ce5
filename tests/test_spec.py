"""PoolSpec: output shapes against independent sources, and every impossible combination refused
with an error that names the field."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolserve.spec import PoolSpec, SpecError

from strategies import examples

try:
    import torch
except ImportError:  # the PyTorch cross-checks below skip, saying so
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (pip install torch==2.13.0+cpu)")


# ---- the seed's examples ----------------------------------------------------------------------
def test_seed_224_volume_pooled_2_2_keeps_depth_and_discards_three_quarters():
    g = PoolSpec("max", (2, 2)).resolve((1, 64, 224, 224))
    assert g.output_shape == (1, 64, 112, 112)       # W2 = (W1 - F)/S + 1, depth preserved
    assert 1 - g.output_elements / g.input_elements == 0.75
    g = PoolSpec("max", (2, 2), layout="channels_last").resolve((1, 224, 224, 64))
    assert g.output_shape == (1, 112, 112, 64)


def test_seed_overlapping_f3_s2_shapes():
    # AlexNet's overlapping pooling: 55 -> 27; ResNet's stem: 112 -> 56 with pad 1
    assert PoolSpec("max", (3, 3), strides=(2, 2)).resolve((1, 96, 55, 55)).out_spatial == (27, 27)
    assert PoolSpec("max", (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)).resolve((1, 64, 112, 112)).out_spatial == (56, 56)


def test_strides_default_to_kernel():
    assert PoolSpec("avg", (3,)).resolve((1, 1, 10)).out_spatial == (3,)


# ---- output sizes against PyTorch and ONNX's own shape rules ------------------------------------
@needs_torch
@examples(300)
@given(rank=st.integers(1, 3), data=st.data())
def test_output_shape_matches_pytorch(rank, data):
    k = data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))
    s = data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    d = data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    p = [data.draw(st.integers(0, kk // 2)) for kk in k]  # PyTorch: symmetric pads <= k/2
    ceil = data.draw(st.booleans())
    size = [data.draw(st.integers(dd * (kk - 1) + 1 - 2 * pp if dd * (kk - 1) + 1 > 2 * pp else 1, 20))
            for kk, dd, pp in zip(k, d, p)]
    spec = PoolSpec("max", k, strides=s, dilations=d, pads=p + p, ceil_mode=ceil)
    fn = [torch.nn.functional.max_pool1d, torch.nn.functional.max_pool2d, torch.nn.functional.max_pool3d][rank - 1]
    try:
        expected = tuple(fn(torch.zeros(1, 1, *size), k, s, p, d, ceil_mode=ceil).shape[2:])
    except RuntimeError:
        expected = None  # PyTorch refuses it (output size < 1)
    try:
        got = spec.resolve((1, 1, *size)).out_spatial
    except SpecError as e:
        # we refuse what PyTorch refuses, and windows that see only padding, which PyTorch
        # would fill with -inf
        assert expected is None or "covers only padding" in str(e), (expected, e)
        return
    assert got == expected


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("size,k,s,d", [(7, 3, 2, 1), (8, 2, 2, 1), (10, 3, 3, 2), (5, 4, 1, 1), (6, 1, 4, 1)])
def test_auto_pad_matches_onnx_shape_inference(auto_pad, size, k, s, d):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, shape_inference

    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], dilations=[d, d],
                            auto_pad=auto_pad)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    inferred = shape_inference.infer_shapes(helper.make_model(graph), strict_mode=True)
    dims = tuple(dim.dim_value for dim in inferred.graph.output[0].type.tensor_type.shape.dim)
    g = PoolSpec("max", (k, k), strides=(s, s), dilations=(d, d), auto_pad=auto_pad).resolve((1, 1, size, size))
    assert g.output_shape == dims
    if auto_pad.startswith("SAME"):
        assert g.out_spatial == (math.ceil(size / s),) * 2
        total = g.pads_begin[0] + g.pads_end[0]
        big, small = total - total // 2, total // 2
        assert (g.pads_begin[0], g.pads_end[0]) == ((small, big) if auto_pad == "SAME_UPPER" else (big, small))


def test_ceil_mode_drops_a_window_that_would_start_in_the_end_padding():
    # in=5, k=2, s=2, pads 1/1: ceil gives 4 windows, but the 4th would start at 6 = in + pad_begin
    g = PoolSpec("max", (2,), strides=(2,), pads=(1, 1), ceil_mode=True).resolve((1, 1, 5))
    assert g.out_spatial == (3,)
    if torch is not None:
        assert torch.nn.functional.max_pool1d(torch.zeros(1, 1, 5), 2, 2, 1, ceil_mode=True).shape[-1] == 3


def test_global_pooling_takes_the_whole_extent():
    g = PoolSpec("avg", global_pool=True).resolve((2, 3, 5, 7, 9))
    assert g.output_shape == (2, 3, 1, 1, 1) and g.kernel == (5, 7, 9)
    g = PoolSpec("max", global_pool=True, layout="channels_last").resolve((2, 5, 3))
    assert g.output_shape == (2, 1, 3)


# ---- refusals name the field --------------------------------------------------------------------
BAD = [
    (dict(mode="median", kernel_shape=(2,)), "mode"),
    (dict(kernel_shape=()), "kernel_shape"),
    (dict(kernel_shape=(2, 2, 2, 2)), "kernel_shape"),
    (dict(kernel_shape=(0, 2)), "kernel_shape"),
    (dict(kernel_shape=(2, 2), strides=(0, 1)), "strides"),
    (dict(kernel_shape=(2, 2), strides=(-1, 1)), "strides"),
    (dict(kernel_shape=(2, 2), strides=(2,)), "strides"),
    (dict(kernel_shape=(2, 2), dilations=(1, 0)), "dilations"),
    (dict(kernel_shape=(2, 2), dilations=(1, 1, 1)), "dilations"),
    (dict(kernel_shape=(2, 2), pads=(1, 1)), "pads"),
    (dict(kernel_shape=(2, 2), pads=(2, 0, 0, 0)), "pads"),
    (dict(kernel_shape=(3,), pads=(-1, 0)), "pads"),
    (dict(kernel_shape=(2,), pads=(1, 1), auto_pad="SAME_UPPER"), "pads"),
    (dict(kernel_shape=(2,), auto_pad="SAME"), "auto_pad"),
    (dict(kernel_shape=(2,), auto_pad="VALID", ceil_mode=True), "ceil_mode"),
    (dict(mode="avg", kernel_shape=(2,), return_indices=True), "return_indices"),
    (dict(mode="lp", kernel_shape=(2,), return_indices=True), "return_indices"),
    (dict(mode="max", kernel_shape=(2,), count_include_pad=True), "count_include_pad"),
    (dict(mode="lp", kernel_shape=(2,), p=0), "p"),
    (dict(mode="lp", kernel_shape=(2,), p=-2), "p"),
    (dict(mode="lp", kernel_shape=(2,), p=float("nan")), "p"),
    (dict(kernel_shape=(2,), layout="NHWC"), "layout"),
    (dict(global_pool=True, kernel_shape=(2,)), "kernel_shape"),
    (dict(global_pool=True, ceil_mode=True), "ceil_mode"),
    (dict(kernel_shape=(2.5,)), "kernel_shape"),
    (dict(kernel_shape=(1,), strides=(1 << 40,)), "strides"),       # past the kernels' limit
    (dict(kernel_shape=(1 << 32,)), "kernel_shape"),
    (dict(kernel_shape=(1,), dilations=(1 << 33,)), "dilations"),
]


@pytest.mark.parametrize("kwargs,field", BAD, ids=[f for _, f in BAD])
def test_impossible_specs_name_the_field(kwargs, field):
    with pytest.raises(SpecError) as e:
        PoolSpec(**kwargs)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}=")


BAD_INPUTS = [
    (PoolSpec("max", (2, 2)), (1, 1, 4), "float32", "shape"),                  # rank mismatch
    (PoolSpec("max", (2, 2)), (1, 1, 4, 0), "float32", "shape"),               # zero dimension
    (PoolSpec("max", (5, 5)), (1, 1, 4, 4), "float32", "kernel_shape"),        # kernel > input
    (PoolSpec("max", (3,), dilations=(3,)), (1, 1, 6), "float32", "kernel_shape"),  # dilated extent 7 > 6
    (PoolSpec("avg", (2,)), (1, 1, 4), "int8", "dtype"),                       # avg of integers
    (PoolSpec("max", (2,)), (1, 1, 4), "bfloat16", "dtype"),
    (PoolSpec("max", global_pool=True), (1, 1), "float32", "shape"),           # no spatial axis
    (PoolSpec("max", global_pool=True), (1, 1, 2, 2, 2, 2), "float32", "shape"),  # 4 spatial axes
    # dilation 5 steps the first window from the pad at -1 straight past the input (0..3)
    (PoolSpec("max", (2,), strides=(1,), dilations=(5,), pads=(1, 1)), (1, 1, 4), "float32", "pads"),
]


@pytest.mark.parametrize("spec,shape,dtype,field", BAD_INPUTS, ids=[f"{f}-{s}" for _, s, _, f in BAD_INPUTS])
def test_impossible_inputs_name_the_field(spec, shape, dtype, field):
    with pytest.raises(SpecError) as e:
        spec.resolve(shape, dtype)
    assert e.value.field == field


def test_only_windows_that_see_no_input_are_refused():
    # brute force over small 1-D specs: refused exactly when some window's taps all miss the input
    for k in range(1, 4):
        for d in range(1, 4):
            for pb in range(k):
                for size in range(d * (k - 1) + 1 - pb, 9):
                    out = (size + pb - d * (k - 1) - 1) // 1 + 1
                    empty = any(all(not 0 <= o - pb + j * d < size for j in range(k)) for o in range(out))
                    spec = PoolSpec("max", (k,), strides=(1,), dilations=(d,), pads=(pb, 0))
                    if empty:
                        with pytest.raises(SpecError, match="covers only padding"):
                            spec.resolve((1, 1, size))
                    else:
                        assert spec.resolve((1, 1, size)).out_spatial == (out,)
