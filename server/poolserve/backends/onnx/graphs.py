"""ONNX graphs for a PoolSpec: forward (one pooling node) and backward, built with onnx.helper.

Every graph has symbolic batch, channel and spatial dimensions, so one InferenceSession serves
every input shape of its (spec, dtype, rank).  The pooling attributes are the spec's own, one to
one (kernel_shape, strides, pads or auto_pad, dilations, ceil_mode, count_include_pad, p,
storage_order 0); the spec module decides what they mean and ONNX Runtime agrees (the tests check
it against the numpy reference).  Where ONNX Runtime's kernels differ from the spec the graph
carries the correction, each one next to the reason:

* MaxPool ignores NaN (``x > best`` is false for NaN), and its value-only path starts from the
  type's lowest finite value, so a window of only -inf yields -FLT_MAX.  Float max graphs pool a
  small uint8 "class" tensor alongside (2 = NaN, 1 = other, 0 = -inf) and take NaN / -inf / the
  first NaN's index from it (:func:`_max_special_values`), inside an If that runs the fix only
  when the input holds a NaN or a -inf.
* LpPool takes an integer ``p``; other exponents are written as |x|^p summed by LpPool(p=1),
  then ^(1/p).
* float16 Lp pooling with a non-integer p is computed in float32 inside the graph (Cast in,
  Cast out): |x|^p would overflow float16 before the sum (see :func:`compute_dtype`).
* Channels-last inputs are transposed inside the graph, and MaxPool's channels-first Indices are
  rewritten into flat offsets of the channels-last input.

Backward graphs: max scatters the gradient through the forward's Indices (ScatterElements with
reduction "add" over the flattened input); avg and lp use the adjoint of the window sum, a
ConvTranspose with an all-ones kernel (:func:`_window_adjoint`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...spec import PoolSpec

# Opset 21, not 22: opset 22 changed the pooling operators only by adding bfloat16 (which
# poolserve does not serve), and ONNX Runtime's CUDA provider (1.31) has no kernel for MaxPool-22,
# so at opset 22 every MaxPool ran on the CPU (tests/test_cuda.py).  IR 10 is what opset 21
# needs, so the files also load in older runtimes that know that opset.
OPSET = 21
IR_VERSION = 10

OP_NAMES = {"max": "MaxPool", "avg": "AveragePool", "lp": "LpPool"}
GLOBAL_OP_NAMES = {"max": "GlobalMaxPool", "avg": "GlobalAveragePool", "lp": "GlobalLpPool"}


def compute_dtype(spec: PoolSpec, dtype: str) -> str:
    """The dtype the forward graph pools in.  The input's own, except float16 Lp pooling with a
    non-integer p: its |x|^p is a separate Pow node, whose float16 result would overflow
    (2000^1.5 > 65504) before LpPool sums it.  (ONNX Runtime's float16 AveragePool and LpPool
    kernels themselves sum in float32: measured exact to the float16 rounding of the result.)"""
    if dtype == "float16" and spec.mode == "lp" and not float(spec.p).is_integer():
        return "float32"
    return dtype


def _tensor_type(dtype: str) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


@dataclass(frozen=True)
class GraphKey:
    """What a graph depends on: the spec, the dtype and (global pooling only) the spatial rank."""

    kind: str  # "forward" or "backward"
    spec: PoolSpec
    dtype: str
    rank: int

    def __hash__(self) -> int:
        # computed once: the session cache hashes the key on every call, and PoolSpec's
        # generated __hash__ is Python code over all its fields
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.kind, self.spec, self.dtype, self.rank))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def name(self) -> str:
        """A readable, file-system-safe name that identifies the graph (used for .onnx files)."""
        s = self.spec
        parts = [f"{s.mode}pool", f"{self.rank}d", self.dtype,
                 "nchw" if s.layout == "channels_first" else "nhwc"]
        if s.global_pool:
            parts.append("global")
        else:
            j = lambda v: "x".join(str(i) for i in v)  # noqa: E731
            parts.append(f"k{j(s.kernel_shape)}")
            parts.append(f"s{j(s.strides or s.kernel_shape)}")
            if s.auto_pad != "NOTSET":
                parts.append(s.auto_pad.lower().replace("_", ""))
            elif any(s.pads):
                parts.append("p" + "-".join(str(p) for p in s.pads))
            if s.dilations and any(d != 1 for d in s.dilations):
                parts.append(f"d{j(s.dilations)}")
            if s.ceil_mode:
                parts.append("ceil")
        if s.count_include_pad:
            parts.append("inclpad")
        if s.mode == "lp":
            parts.append(f"norm{s.p:g}".replace(".", "_"))
        if s.return_indices and self.kind == "forward":
            parts.append("indices")
        parts.append(self.kind)
        return "_".join(parts)

    @property
    def doc(self) -> str:
        s = self.spec
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(s).items())
        return (f"poolserve {self.kind} graph: {s.mode} pooling over {self.rank} spatial axes, {self.dtype}, "
                f"{s.layout}.  PoolSpec({fields}).  Semantics: poolserve.spec (DESIGN.md, 'Pooling semantics').")


def graph_key(kind: str, spec: PoolSpec, dtype: str, rank: int | None = None) -> GraphKey:
    rank = spec.rank if spec.rank is not None else rank
    if rank is None:
        raise ValueError("a global spec needs the input's spatial rank to build a graph")
    if kind == "backward":
        spec = spec.replace(return_indices=False)  # the backward graph is the same either way
    return GraphKey(kind, spec, dtype, rank)


class _Builder:
    """Accumulates nodes and initializers with unique, readable value names.

    A subgraph (an If branch) gets a child builder that shares the parent's counter, so that no
    name in the branch shadows one outside it.
    """

    def __init__(self, parent: "_Builder | None" = None):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._root = parent._root if parent is not None else self
        self._n = 0

    def _next(self) -> int:
        self._root._n += 1
        return self._root._n

    def op(self, op_type: str, inputs, n_out: int = 1, name: str | None = None, **attrs):
        n = self._next()
        base = name or op_type.lower()
        outs = [f"{base}_{n}" + (f"_{i}" if n_out > 1 else "") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{n}", **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype, name: str) -> str:
        full = f"{name}_{self._next()}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), full))
        return full

    def branch(self, name: str, outputs: list[tuple[str, int]]) -> onnx.GraphProto:
        """This builder's nodes as an If branch returning ``outputs`` ((value, element type))."""
        return helper.make_graph(self.nodes, name, [], [helper.make_tensor_value_info(v, t, None) for v, t in outputs],
                                 initializer=self.inits)


# -- pieces shared by forward and backward ------------------------------------------------------

def _to_channels_first(b: _Builder, x: str, spec: PoolSpec, rank: int) -> str:
    if spec.layout == "channels_first":
        return x
    return b.op("Transpose", [x], perm=[0, rank + 1] + list(range(1, rank + 1)), name="to_nchw")


def _to_layout(b: _Builder, x: str, spec: PoolSpec, rank: int) -> str:
    if spec.layout == "channels_first":
        return x
    return b.op("Transpose", [x], perm=[0] + list(range(2, rank + 2)) + [1], name="to_nhwc")


def _pool_attrs(spec: PoolSpec, rank: int) -> dict:
    """The spec's pooling attributes, one to one (ONNX pads order is the spec's own)."""
    if spec.global_pool:
        return {}
    a = {"kernel_shape": list(spec.kernel_shape),
         "strides": list(spec.strides or spec.kernel_shape),
         "dilations": list(spec.dilations or (1,) * rank),
         "ceil_mode": int(spec.ceil_mode)}
    if spec.auto_pad != "NOTSET":
        a["auto_pad"] = spec.auto_pad
    else:
        a["pads"] = list(spec.pads or (0,) * (2 * rank))
    return a


def _pool(b: _Builder, mode: str, x: str, spec: PoolSpec, rank: int, n_out: int = 1, **extra):
    op = (GLOBAL_OP_NAMES if spec.global_pool else OP_NAMES)[mode]
    attrs = _pool_attrs(spec, rank)
    if mode == "max" and not spec.global_pool:
        attrs["storage_order"] = 0
    attrs.update(extra)
    return b.op(op, [x], n_out=n_out, name=op.lower(), **attrs)


def _lp_norm(b: _Builder, x: str, spec: PoolSpec, rank: int, dtype: str) -> str:
    """||window||_p.  LpPool's p is an integer attribute; other p go through |x|^p and p=1."""
    if float(spec.p).is_integer():
        return _pool(b, "lp", x, spec, rank, p=int(spec.p))
    powered = b.op("Pow", [b.op("Abs", [x]), b.const(spec.p, dtype, "p")])
    summed = _pool(b, "lp", powered, spec, rank, p=1)
    return b.op("Pow", [summed, b.const(1.0 / spec.p, dtype, "inv_p")])


def _max_special_values(b: _Builder, x: str, y: str, ind: str | None, spec: PoolSpec, rank: int, dtype: str):
    """Make MaxPool's answer the spec's for windows with NaN or only -inf.

    ONNX Runtime's MaxPool skips NaN, and its value-only path starts from the lowest finite
    value (an all -inf window gives -FLT_MAX).  The fix: a class tensor (2 = NaN, 1 = anything
    else, 0 = -inf) max-pooled with the same attributes; class 2 means the window holds a NaN
    (value NaN, index of the first NaN, which MaxPool's first-strictly-greater scan gives),
    class 0 means only -inf (value -inf; the index path already gets those windows right).

    The fix costs several passes over the input, so it runs only when the input holds a NaN or
    a -inf, inside an If: the sum of the input is finite or +inf exactly when neither is there
    (IEEE: a NaN or -inf term makes any sum NaN or -inf; overflow of finite terms only makes
    the fix run when it was not needed, never the reverse).
    """
    total = b.op("ReduceSum", [x], keepdims=0, name="input_sum")
    special = b.op("Or", [b.op("IsNaN", [total]), b.op("IsInf", [total], detect_positive=0, detect_negative=1)],
                   name="has_nan_or_neg_inf")

    fix = _Builder(b)
    cls_dtype = dtype if spec.global_pool else "uint8"  # the Global pools have no uint8 kernel
    is_nan = fix.op("IsNaN", [x])
    neg_inf = fix.op("IsInf", [x], detect_positive=0, detect_negative=1)
    cls = fix.op("Where", [is_nan, fix.const(2, cls_dtype, "nan_class"),
                           fix.op("Where", [neg_inf, fix.const(0, cls_dtype, "neginf_class"),
                                            fix.const(1, cls_dtype, "other_class")])], name="max_class")
    if ind is not None:
        cls_max, cls_ind = _pool(fix, "max", cls, spec, rank, n_out=2)
    else:
        cls_max, cls_ind = _pool(fix, "max", cls, spec, rank), None
    has_nan = fix.op("Equal", [cls_max, fix.const(2, cls_dtype, "nan_class")], name="has_nan")
    fixed_y = fix.op("Where", [has_nan, fix.const(np.nan, dtype, "nan"), y])
    if ind is None:
        only_neg_inf = fix.op("Equal", [cls_max, fix.const(0, cls_dtype, "neginf_class")], name="only_neginf")
        fixed_y = fix.op("Where", [only_neg_inf, fix.const(-np.inf, dtype, "neg_inf"), fixed_y])
        fixed = [(fixed_y, _tensor_type(dtype))]
    else:
        fixed = [(fixed_y, _tensor_type(dtype)), (fix.op("Where", [has_nan, cls_ind, ind]), TensorProto.INT64)]

    keep = _Builder(b)
    kept = [(keep.op("Identity", [v]), t) for v, t in [(y, _tensor_type(dtype))] + ([(ind, TensorProto.INT64)]
                                                                                    if ind is not None else [])]
    outs = b.op("If", [special], n_out=len(fixed), name="nan_neginf_fix",
                then_branch=fix.branch("fix_nan_and_neg_inf", fixed), else_branch=keep.branch("as_pooled", kept))
    return (outs[0], outs[1]) if ind is not None else (outs, None)


def _channels_last_indices(b: _Builder, ind: str, x_nhwc: str, rank: int) -> str:
    """Flat channels-first offsets (MaxPool ran on the transposed input) -> channels-last offsets.

    With S = prod(spatial) and i = (n*C + c)*S + s, the channels-last offset is (n*S + s)*C + c.
    """
    shape = b.op("Shape", [x_nhwc])
    c = b.op("Slice", [shape, b.const([rank + 1], np.int64, "c_at"), b.const([rank + 2], np.int64, "c_end")])
    s = b.op("ReduceProd", [b.op("Slice", [shape, b.const([1], np.int64, "sp_begin"),
                                                b.const([rank + 1], np.int64, "sp_end")])], keepdims=1)
    nc, sp = b.op("Div", [ind, s]), b.op("Mod", [ind, s])
    n, ch = b.op("Div", [nc, c]), b.op("Mod", [nc, c])
    return b.op("Add", [b.op("Mul", [b.op("Add", [b.op("Mul", [n, s]), sp]), c]), ch], name="indices_nhwc")


def _dims(spec: PoolSpec, rank: int, prefix: str) -> list[str]:
    spatial = [f"{prefix}{i + 1}" for i in range(rank)]
    return ["N", "C"] + spatial if spec.layout == "channels_first" else ["N"] + spatial + ["C"]


def _model(b: _Builder, key: GraphKey, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, key.name, inputs, outputs, initializer=b.inits, doc_string=key.doc)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="poolserve", doc_string=key.doc)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


# -- forward -------------------------------------------------------------------------------------

def forward_model(key: GraphKey) -> onnx.ModelProto:
    """Inputs X; outputs Y, and Indices (int64) when the spec asks for them."""
    spec, dtype, rank = key.spec, key.dtype, key.rank
    b = _Builder()
    x = _to_channels_first(b, "X", spec, rank)
    want_ind = spec.return_indices
    cdt = compute_dtype(spec, dtype)
    xc = b.op("Cast", [x], to=_tensor_type(cdt)) if cdt != dtype else x
    ind = None
    if spec.mode == "max":
        if want_ind:
            y, ind = _pool(b, "max", xc, spec, rank, n_out=2)
        else:
            y = _pool(b, "max", xc, spec, rank)
        if np.dtype(dtype).kind == "f":
            y, ind = _max_special_values(b, xc, y, ind, spec, rank, cdt)
    elif spec.mode == "avg":
        extra = {} if spec.global_pool else {"count_include_pad": int(spec.count_include_pad)}
        y = _pool(b, "avg", xc, spec, rank, **extra)
    else:
        y = _lp_norm(b, xc, spec, rank, cdt)
    if cdt != dtype:
        y = b.op("Cast", [y], to=_tensor_type(dtype))
    y = _to_layout(b, y, spec, rank)
    b.nodes.append(helper.make_node("Identity", [y], ["Y"], name="Y"))
    outputs = [helper.make_tensor_value_info("Y", _tensor_type(dtype), _dims(spec, rank, "O"))]
    if want_ind:
        if spec.layout == "channels_last":
            ind = _channels_last_indices(b, _to_layout(b, ind, spec, rank), "X", rank)
        b.nodes.append(helper.make_node("Identity", [ind], ["Indices"], name="Indices"))
        outputs.append(helper.make_tensor_value_info("Indices", TensorProto.INT64, _dims(spec, rank, "O")))
    inputs = [helper.make_tensor_value_info("X", _tensor_type(dtype), _dims(spec, rank, "D"))]
    return _model(b, key, inputs, outputs)


# -- backward ------------------------------------------------------------------------------------

def _window_adjoint(b: _Builder, g: str, spec: PoolSpec, rank: int, in_spatial: str, pads_begin: str,
                    dtype: str) -> str:
    """For each input position, the sum of ``g`` over the windows that contain it (in-input taps).

    ``g`` is channels-first (N, C, *out).  Batch and channels fold into one axis so that a single
    all-ones kernel serves every channel; ConvTranspose without pads lays each window over the
    padded input, then the begin pads are cut off and positions that no window reaches (the tail
    of a floor-mode axis) are filled with zeros.
    """
    shape = b.op("Shape", [g])
    n_c = b.op("Slice", [shape, b.const([0], np.int64, "nc_begin"), b.const([2], np.int64, "nc_end")])
    if spec.global_pool:  # one window covers everything: every position gets its window's g
        return b.op("Expand", [g, b.op("Concat", [n_c, in_spatial], axis=0)])
    folded = b.op("Reshape", [g, b.op("Concat", [b.const([-1, 1], np.int64, "fold"),
                                                  b.op("Slice", [shape, b.const([2], np.int64, "sp_begin"),
                                                                 b.const([rank + 2], np.int64, "sp_end")])],
                                       axis=0)])
    ones = b.const(np.ones((1, 1) + tuple(spec.kernel_shape)), dtype, "window_ones")
    ct = b.op("ConvTranspose", [folded, ones], strides=list(spec.strides or spec.kernel_shape),
              dilations=list(spec.dilations or (1,) * rank), name="window_adjoint")
    # spatial length the ConvTranspose covers, and how much is missing after the input's end
    covered = b.op("Slice", [b.op("Shape", [ct]), b.const([2], np.int64, "sp_begin"),
                             b.const([rank + 2], np.int64, "sp_end")])
    short = b.op("Max", [b.op("Sub", [b.op("Add", [in_spatial, pads_begin]), covered]),
                         b.const(np.zeros(rank), np.int64, "zeros")])
    spatial_axes = b.const(list(range(2, rank + 2)), np.int64, "spatial_axes")
    padded = b.op("Pad", [ct, b.op("Concat", [b.const(np.zeros(rank), np.int64, "no_pad"), short], axis=0),
                          b.const(0, dtype, "zero"), spatial_axes])
    cut = b.op("Slice", [padded, pads_begin, b.op("Add", [pads_begin, in_spatial]), spatial_axes])
    return b.op("Reshape", [cut, b.op("Concat", [n_c, in_spatial], axis=0)])


def _taps_inside(b: _Builder, ones: str, spec: PoolSpec, rank: int, in_spatial: str, out_spatial: str,
                 pads_begin: str, dtype: str) -> str:
    """How many taps of each window lie inside the input, (1, 1, *out): the window sum of ``ones``
    (a (1, 1, *in) plane of ones).

    A Conv of the ones with an all-ones kernel over the input zero-padded by pads_begin in front and
    behind by what the last window reaches past it (end pads, ceil mode, SAME), then Slice to the
    output's windows (a floor-mode axis may leave room for more).  Not LpPool(ones, p=1): ONNX
    Runtime's CUDA provider has no LpPool.  Round: cuDNN may pick an inexact (Winograd, FFT)
    algorithm for the Conv, and these are small integers.
    """
    strides = list(spec.strides or spec.kernel_shape)
    dilations = list(spec.dilations or (1,) * rank)
    reach = [(k - 1) * d + 1 for k, d in zip(spec.kernel_shape, dilations)]
    # the extent the windows span, from the first window's start: (out - 1) * stride + reach
    span = b.op("Add", [b.op("Mul", [b.op("Sub", [out_spatial, b.const(1, np.int64, "one")]),
                                     b.const(strides, np.int64, "strides")]), b.const(reach, np.int64, "reach")])
    zeros = b.const(np.zeros(rank), np.int64, "zeros")
    behind = b.op("Max", [b.op("Sub", [span, b.op("Add", [in_spatial, pads_begin])]), zeros])
    spatial_axes = b.const(list(range(2, rank + 2)), np.int64, "spatial_axes")
    padded = b.op("Pad", [ones, b.op("Concat", [pads_begin, behind], axis=0), b.const(0, dtype, "zero"), spatial_axes])
    sums = b.op("Conv", [padded, b.const(np.ones((1, 1) + tuple(spec.kernel_shape)), dtype, "window_ones")],
                strides=strides, dilations=dilations, name="taps_inside")
    return b.op("Round", [b.op("Slice", [sums, zeros, out_spatial, spatial_axes])])


def backward_model(key: GraphKey) -> onnx.ModelProto:
    """The input gradient.

    max: inputs dY, Indices, input_shape (int64, the forward input's shape)
    avg: inputs dY, input_shape, pads_begin
    lp:  inputs dY, X, pads_begin
    pads_begin (int64, one per spatial axis) is the resolved begin padding, Geometry.pads_begin:
    with auto_pad SAME_* it depends on the input size, and the spec module owns that rule.
    output dX (the forward input's shape and layout, dY's dtype).
    """
    spec, dtype, rank = key.spec, key.dtype, key.rank
    b = _Builder()
    out_dims, in_dims = _dims(spec, rank, "O"), _dims(spec, rank, "D")
    tt = _tensor_type(dtype)
    inputs = [helper.make_tensor_value_info("dY", tt, out_dims)]
    # float16 gradients are summed in float32 (the accumulator the spec's tolerance assumes)
    acc = "float32" if dtype == "float16" else dtype
    dy = b.op("Cast", ["dY"], to=_tensor_type(acc)) if acc != dtype else "dY"
    if spec.mode == "max":
        inputs += [helper.make_tensor_value_info("Indices", TensorProto.INT64, out_dims),
                   helper.make_tensor_value_info("input_shape", TensorProto.INT64, [rank + 2])]
        # Indices are flat offsets into the input in its own layout: no transposes needed
        zeros = b.op("ConstantOfShape", [b.op("ReduceProd", ["input_shape"], keepdims=1)],
                     value=numpy_helper.from_array(np.zeros(1, acc)))
        flat = b.const([-1], np.int64, "flat")
        dx = b.op("ScatterElements", [zeros, b.op("Reshape", ["Indices", flat]), b.op("Reshape", [dy, flat])],
                  axis=0, reduction="add", name="route_gradient")
        dx = b.op("Reshape", [dx, "input_shape"])
    else:
        dy_cf = _to_channels_first(b, dy, spec, rank)
        inputs.append(helper.make_tensor_value_info("pads_begin", TensorProto.INT64, [rank]))
        if spec.mode == "avg":
            inputs.append(helper.make_tensor_value_info("input_shape", TensorProto.INT64, [rank + 2]))
            x_shape = "input_shape"
        else:
            inputs.append(helper.make_tensor_value_info("X", tt, in_dims))
            x_shape = b.op("Shape", ["X"])
        lo, hi = (2, rank + 2) if spec.layout == "channels_first" else (1, rank + 1)
        in_spatial = b.op("Slice", [x_shape, b.const([lo], np.int64, "sp_begin"), b.const([hi], np.int64, "sp_end")])
        if spec.mode == "avg":
            # 1/divisor per window: AveragePool(ones) / #taps inside the input, which is 1/#taps
            # inside the input, or with count_include_pad 1/#taps inside the padded input -- the
            # forward's own divisor rule, taken from the forward operator itself.  One (1, 1, ...)
            # plane of them serves every image and channel.
            if spec.global_pool:  # no pads: the divisor is the spatial size
                weight = b.op("Reciprocal", [b.op("Cast", [b.op("ReduceProd", [in_spatial], keepdims=1)],
                                                  to=_tensor_type(acc))], name="inv_divisor")
            else:
                plane = b.op("Concat", [b.const([1, 1], np.int64, "one_one"), in_spatial], axis=0)
                ones = b.op("ConstantOfShape", [plane], value=numpy_helper.from_array(np.ones(1, acc)))
                mean = _pool(b, "avg", ones, spec, rank, count_include_pad=int(spec.count_include_pad))
                out_spatial = b.op("Slice", [b.op("Shape", [dy_cf]), b.const([2], np.int64, "sp_begin"),
                                             b.const([rank + 2], np.int64, "sp_end")])
                taps = _taps_inside(b, ones, spec, rank, in_spatial, out_spatial, "pads_begin", acc)
                weight = b.op("Div", [mean, taps], name="inv_divisor")
            dx = _window_adjoint(b, b.op("Mul", [dy_cf, weight]), spec, rank, in_spatial, "pads_begin", acc)
        else:
            # d||w||_p / dw_i = sign(w_i)|w_i|^(p-1) / ||w||^(p-1), 0 where w_i == 0 or ||w|| == 0:
            # the per-window factor dy/||w||^(p-1) is summed by the adjoint, then scaled per input.
            x = b.op("Cast", ["X"], to=_tensor_type(acc)) if acc != dtype else "X"
            x_cf = _to_channels_first(b, x, spec, rank)
            norm = _lp_norm(b, x_cf, spec, rank, acc)
            zero = b.const(0, acc, "zero")
            safe = b.op("Where", [b.op("Greater", [norm, zero]), norm, b.const(1, acc, "one")])
            factor = b.op("Where", [b.op("Greater", [norm, zero]),
                                    b.op("Div", [dy_cf, b.op("Pow", [safe, b.const(spec.p - 1, acc, "p_minus_1")])]),
                                    zero])
            summed = _window_adjoint(b, factor, spec, rank, in_spatial, "pads_begin", acc)
            absx = b.op("Abs", [x_cf])
            nonzero = b.op("Greater", [absx, zero])
            safe_abs = b.op("Where", [nonzero, absx, b.const(1, acc, "one")])
            local = b.op("Mul", [b.op("Sign", [x_cf]), b.op("Pow", [safe_abs, b.const(spec.p - 1, acc, "p_minus_1")])])
            dx = b.op("Where", [nonzero, b.op("Mul", [local, summed]), zero])
        dx = _to_layout(b, dx, spec, rank)
    if acc != dtype:
        dx = b.op("Cast", [dx], to=tt)
    b.nodes.append(helper.make_node("Identity", [dx], ["dX"], name="dX"))
    outputs = [helper.make_tensor_value_info("dX", tt, in_dims)]
    return _model(b, key, inputs, outputs)


def build(key: GraphKey) -> onnx.ModelProto:
    return forward_model(key) if key.kind == "forward" else backward_model(key)
