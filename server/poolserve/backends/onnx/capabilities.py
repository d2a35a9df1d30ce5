"""What the ONNX backend can run: the one list of ONNX Runtime gaps, found by trying.

Two kinds of refusal, each with the reason a caller sees (FAILED_PRECONDITION):

* kernel gaps: ONNX Runtime's CPU provider has no kernel for the operator in that dtype
  (onnxruntime 1.32 on x86-64, graphs at opset 21; `tests/test_onnx_backend.py::test_kernel_gaps_are_real` checks
  that each listed gap still fails, so the list cannot go stale silently);
* deviations: ONNX Runtime gives another answer than the spec and the graph cannot fix it
  (``deviation``).

A global spec whose Global* operator is missing (GlobalLpPool on float64, GlobalMaxPool with
indices or on float64 and integers) runs as the plain operator over the whole extent instead
(``global_as_window``), so only the plain operator's gaps refuse it.

Anything else that ONNX Runtime refuses when the session is built also becomes Unsupported
(see sessions.SessionCache), so an unlisted gap is still reported as one.
"""

from __future__ import annotations

import onnx

from ...spec import DTYPES_BY_MODE, PoolSpec
from .graphs import GLOBAL_OP_NAMES, OP_NAMES, OPSET, compute_dtype

# (operator, dtype) pairs ONNX Runtime's CPU provider has no kernel for (or that ONNX itself does
# not define: GlobalMaxPool takes no integers), among the dtypes the spec allows for the mode.
KERNEL_GAPS = {
    ("AveragePool", "float64"), ("LpPool", "float64"),
    ("GlobalAveragePool", "float64"),
    ("GlobalMaxPool", "float64"), ("GlobalMaxPool", "int8"), ("GlobalMaxPool", "uint8"),
    ("GlobalLpPool", "float64"),
}


def onnx_takes(op: str, dtype: str) -> bool:
    """Whether the ONNX operator's schema allows the dtype at all (else no runtime can run it)."""
    allowed = onnx.defs.get_schema(op, OPSET).type_constraints[0].allowed_type_strs
    onnx_name = {"float32": "float", "float64": "double"}.get(dtype, dtype)
    return f"tensor({onnx_name})" in allowed


def operator(spec: PoolSpec) -> str:
    return (GLOBAL_OP_NAMES if spec.global_pool else OP_NAMES)[spec.mode]


def _kernel_gap(op: str, dtype: str) -> str | None:
    if (op, dtype) not in KERNEL_GAPS:
        return None
    if not onnx_takes(op, dtype):
        return f"ONNX's {op} (opset {OPSET}) does not take {dtype}; the c backend runs it"
    return f"ONNX Runtime's CPU provider has no {op} kernel for {dtype}; the c backend runs it"


def global_as_window(spec: PoolSpec, dtype: str) -> bool:
    """Whether a global spec runs as the plain pool over a window of the input's whole spatial
    extent (stride 1, no pads: the spec's own definition of global pooling), because the Global*
    operator cannot: no kernel for the dtype, no Indices output.  The
    kernel fixes the spatial shape, so there is one such graph per input spatial shape."""
    if not spec.global_pool:
        return False
    return (_kernel_gap(operator(spec), compute_dtype(spec, dtype)) is not None
            or (spec.mode == "max" and spec.return_indices))


def forward_gap(spec: PoolSpec, dtype: str, provider: str = "CPUExecutionProvider") -> str | None:
    """None when the forward graph of (spec, dtype) runs on the provider; otherwise why not."""
    if dtype not in DTYPES_BY_MODE[spec.mode]:
        return f"{spec.mode} pooling takes {', '.join(DTYPES_BY_MODE[spec.mode])}, not {dtype}"
    cdt = compute_dtype(spec, dtype)
    if global_as_window(spec, dtype):
        return _kernel_gap(OP_NAMES[spec.mode], cdt) or provider_deviation(spec, provider)
    return _kernel_gap(operator(spec), cdt) or deviation(spec) or provider_deviation(spec, provider)


def provider_deviation(spec: PoolSpec, provider: str) -> str | None:
    """Where one provider's kernels answer otherwise than the spec (and the CPU provider's do not).

    Found on an H200 with onnxruntime-gpu 1.31; tests/test_cuda.py::test_cuda_index_ties_are_real
    shows it on ONNX Runtime itself, so the entry cannot go stale silently on a GPU machine.
    Operators the CUDA provider has no kernel for at all (LpPool, GlobalLpPool) are refused when
    the session is built (sessions.WORK_OPS), not listed here.
    """
    if provider == "CUDAExecutionProvider" and spec.mode == "max" and spec.return_indices:
        # ReLU outputs are full of such ties (all-zero windows)
        return ("ONNX Runtime's CUDA MaxPool returns another index than the first among tied maxima "
                "(the spec's rule); the c backend or provider cpu returns the first")
    return None


def deviation(spec: PoolSpec) -> str | None:
    """Specs where ONNX Runtime's answer differs from the spec's and no graph-side fix exists."""
    if spec.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # ORT computes the SAME padding as (out-1)*stride + k - in: with the undilated kernel
        # (k=2, d=2, stride 1, in=2 gives 1 output instead of ceil(2/1) = 2), and without
        # clamping at 0 (k=1, stride 3, in=9 pads by -1 on each side and shifts every window
        # one to the right).  The pads depend on the input size, so the graph cannot carry
        # explicit ones instead.
        if any(d > 1 and k > 1 for d, k in zip(spec.dilations, spec.kernel_shape)):
            return (f"auto_pad={spec.auto_pad} with dilations {spec.dilations}: ONNX Runtime sizes the padding "
                    "without the dilation and returns fewer outputs than ceil(in/stride); the c backend runs it")
        strides = spec.strides or spec.kernel_shape
        if any(s > k for s, k in zip(strides, spec.kernel_shape)):
            return (f"auto_pad={spec.auto_pad} with strides {strides} larger than the kernel {spec.kernel_shape}: "
                    "ONNX Runtime pads by a negative amount and shifts the windows; the c backend runs it")
    return None


def backward_gap(spec: PoolSpec, dtype: str) -> str | None:
    """None when the backward graph of (spec, dtype) runs (given what it needs); else why not.

    max backward only scatters (any float dtype); avg and lp backward evaluate the forward
    operator (the divisor, the norm) and share its gaps.
    """
    if spec.mode == "max":
        return None
    return forward_gap(spec.replace(return_indices=False), dtype)
