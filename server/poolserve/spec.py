"""The pooling specification: the one place where every pooling rule is written down.

A :class:`PoolSpec` says *what* to compute, independent of any input.  Resolving it against an
input shape (:meth:`PoolSpec.resolve`) gives a :class:`Geometry`: explicit per-axis pads, the
output shape and the element counts.  The numpy reference, both backends, the service and the
docs all take their rules from here; nothing else re-derives an output size.

The rules (DESIGN.md, "Pooling semantics"):

* Output size per spatial axis, floor mode:
  ``out = floor((in + pad_begin + pad_end - dilation*(k-1) - 1) / stride) + 1``.
  Ceil mode uses ``ceil`` instead, and then drops the last window if it would start at or past
  the end of the input (``(out-1)*stride >= in + pad_begin``), the rule PyTorch and ONNX share.
* ``auto_pad`` SAME_UPPER / SAME_LOWER give ``out = ceil(in / stride)`` with the total padding
  ``max(0, (out-1)*stride + dilation*(k-1) + 1 - in)`` split evenly, the odd one at the end
  (UPPER) or the beginning (LOWER); VALID means no padding.  Both resolve to explicit pads, so
  only one output-size formula exists.
* Padded positions are -inf for max, 0 for lp, and for avg they are excluded from the divisor
  unless ``count_include_pad``; then the divisor counts the taps inside the *padded* input (taps
  that hang past the end padding in ceil mode never count).
* A window must see at least one input element; a spec whose padding and dilation make a window
  see only padding is rejected (its value would be -inf or 0/0).
* Max indices are flat offsets into the whole input tensor in its own layout (ONNX ``Indices``,
  storage_order 0), int64.  Ties go to the first maximum in window scan order (row-major over the
  kernel taps); a window containing NaN yields NaN and the index of its first NaN.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

MODES = ("max", "avg", "lp")
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
LAYOUTS = ("channels_first", "channels_last")
MAX_SPATIAL_RANK = 3

# dtypes by numpy name.  Every mode takes the float types; max also takes the 8-bit integers
# (averages and norms of integers would need a rounding rule nobody asked for).
FLOAT_DTYPES = ("float32", "float64", "float16")
INT_DTYPES = ("int8", "uint8")
DTYPES_BY_MODE = {
    "max": FLOAT_DTYPES + INT_DTYPES,
    "avg": FLOAT_DTYPES,
    "lp": FLOAT_DTYPES,
}
INDEX_DTYPE = "int64"

# Requests are refused past this many elements in one tensor; the service may set a lower limit.
MAX_ELEMENTS = 1 << 40
# Largest kernel, stride or dilation entry: the C kernels refuse larger ones (PARAM_LIMIT in
# kernels/poolkernels.c), so the spec refuses them first, naming the field.
MAX_PARAM = 1 << 31


class SpecError(ValueError):
    """A pooling parameter or input that cannot work.  ``field`` names the offending field."""

    def __init__(self, field: str, value, message: str):
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r}: {message}")


def _tuple(value, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise SpecError(name, value, "must be a sequence of integers") from None
    if any(o != v for o, v in zip(out, value)):
        raise SpecError(name, value, "must hold integers")
    return out


@dataclass(frozen=True)
class PoolSpec:
    """What to pool.  Unset sequences take the defaults of DESIGN.md.

    mode:              "max", "avg" or "lp".
    kernel_shape:      one entry per spatial axis (1 to 3); empty for global pooling.
    strides:           default equal to kernel_shape (the common F=2, S=2 setting).
    pads:              ONNX order [x1_begin, x2_begin, ..., x1_end, x2_end, ...]; default zeros.
    auto_pad:          NOTSET (use pads), SAME_UPPER, SAME_LOWER or VALID.
    dilations:         default ones.
    ceil_mode:         round the output size up instead of down (explicit pads only).
    count_include_pad: avg only: padded taps count in the divisor.
    p:                 lp only: the norm's exponent, > 0.
    layout:            "channels_first" (N, C, *spatial) or "channels_last" (N, *spatial, C).
    return_indices:    max only: also return the int64 argmax offsets.
    global_pool:       the kernel covers the whole spatial extent (ONNX Global*Pool).
    """

    mode: str = "max"
    kernel_shape: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    dilations: tuple[int, ...] = ()
    ceil_mode: bool = False
    count_include_pad: bool = False
    p: float = 2.0
    layout: str = "channels_first"
    return_indices: bool = False
    global_pool: bool = False

    def __post_init__(self):
        for name in ("kernel_shape", "strides", "pads", "dilations"):
            object.__setattr__(self, name, _tuple(getattr(self, name), name))
        object.__setattr__(self, "ceil_mode", bool(self.ceil_mode))
        object.__setattr__(self, "count_include_pad", bool(self.count_include_pad))
        object.__setattr__(self, "return_indices", bool(self.return_indices))
        object.__setattr__(self, "global_pool", bool(self.global_pool))
        self.validate()

    # -- shape-independent checks -----------------------------------------------------------
    def validate(self) -> None:
        """Reject every combination that cannot work for any input."""
        if self.mode not in MODES:
            raise SpecError("mode", self.mode, f"must be one of {', '.join(MODES)}")
        if self.layout not in LAYOUTS:
            raise SpecError("layout", self.layout, f"must be one of {', '.join(LAYOUTS)}")
        if self.auto_pad not in AUTO_PADS:
            raise SpecError("auto_pad", self.auto_pad, f"must be one of {', '.join(AUTO_PADS)}")
        if self.return_indices and self.mode != "max":
            raise SpecError("return_indices", True, f"indices exist only for max pooling, not {self.mode}")
        if self.count_include_pad and self.mode != "avg":
            raise SpecError("count_include_pad", True, f"applies only to avg pooling, not {self.mode}")
        if self.mode == "lp":
            if not (isinstance(self.p, (int, float)) and math.isfinite(self.p) and self.p > 0):
                raise SpecError("p", self.p, "must be a finite number > 0")
        if self.global_pool:
            for name in ("kernel_shape", "strides", "pads", "dilations"):
                if getattr(self, name):
                    raise SpecError(name, getattr(self, name), "must be empty for global pooling")
            if self.auto_pad != "NOTSET":
                raise SpecError("auto_pad", self.auto_pad, "must be NOTSET for global pooling")
            if self.ceil_mode:
                raise SpecError("ceil_mode", True, "does not apply to global pooling")
            return
        r = len(self.kernel_shape)
        if not 1 <= r <= MAX_SPATIAL_RANK:
            raise SpecError("kernel_shape", self.kernel_shape,
                            f"needs 1 to {MAX_SPATIAL_RANK} entries, one per spatial axis")
        if any(k < 1 for k in self.kernel_shape):
            raise SpecError("kernel_shape", self.kernel_shape, "entries must be >= 1")
        for name in ("kernel_shape", "strides", "dilations"):
            if any(v > MAX_PARAM for v in getattr(self, name)):
                raise SpecError(name, getattr(self, name), f"entries must be <= {MAX_PARAM}")
        if self.strides and len(self.strides) != r:
            raise SpecError("strides", self.strides, f"needs {r} entries, one per spatial axis")
        if any(s < 1 for s in self.strides):
            raise SpecError("strides", self.strides, "entries must be >= 1")
        if self.dilations and len(self.dilations) != r:
            raise SpecError("dilations", self.dilations, f"needs {r} entries, one per spatial axis")
        if any(d < 1 for d in self.dilations):
            raise SpecError("dilations", self.dilations, "entries must be >= 1")
        if self.pads:
            if self.auto_pad != "NOTSET":
                raise SpecError("pads", self.pads, f"must be empty when auto_pad={self.auto_pad}")
            if len(self.pads) != 2 * r:
                raise SpecError("pads", self.pads,
                                f"needs {2 * r} entries: {r} begin pads, then {r} end pads")
            if any(p < 0 for p in self.pads):
                raise SpecError("pads", self.pads, "entries must be >= 0")
            for i, pad in enumerate(self.pads):
                k = self.kernel_shape[i % r]
                if pad >= k:
                    raise SpecError("pads", self.pads,
                                    f"pad {pad} on spatial axis {i % r} must be smaller than the kernel ({k})")
        if self.ceil_mode and self.auto_pad != "NOTSET":
            raise SpecError("ceil_mode", True, f"applies only to explicit pads, not auto_pad={self.auto_pad}")

    # -- defaults -------------------------------------------------------------------------------
    @property
    def rank(self) -> int | None:
        """Number of spatial axes, or None for global pooling (any rank)."""
        return None if self.global_pool else len(self.kernel_shape)

    def replace(self, **changes) -> "PoolSpec":
        return dataclasses.replace(self, **changes)

    # -- resolution against an input shape ------------------------------------------------------
    def resolve(self, input_shape: Sequence[int], dtype: str | None = None) -> "Geometry":
        """Check the spec against an input shape (and dtype) and return the full geometry."""
        shape = tuple(int(d) for d in input_shape)
        if dtype is not None and str(dtype) not in DTYPES_BY_MODE[self.mode]:
            raise SpecError("dtype", str(dtype),
                            f"{self.mode} pooling takes {', '.join(DTYPES_BY_MODE[self.mode])}")
        if self.global_pool:
            if not 3 <= len(shape) <= 2 + MAX_SPATIAL_RANK:
                raise SpecError("shape", shape,
                                f"global pooling needs 1 to {MAX_SPATIAL_RANK} spatial axes: rank 3 to 5")
        elif len(shape) != 2 + self.rank:
            raise SpecError("shape", shape,
                            f"a {self.rank}-D kernel needs a rank-{2 + self.rank} input "
                            f"(batch, channels, {self.rank} spatial axes)")
        if any(d < 1 for d in shape):
            raise SpecError("shape", shape, "every dimension must be >= 1")
        if math.prod(shape) > MAX_ELEMENTS:
            raise SpecError("shape", shape, f"more than {MAX_ELEMENTS} elements")
        if self.layout == "channels_first":
            n, c, spatial = shape[0], shape[1], shape[2:]
        else:
            n, c, spatial = shape[0], shape[-1], shape[1:-1]
        r = len(spatial)
        if self.global_pool:
            if any(d > MAX_PARAM for d in spatial):
                raise SpecError("shape", shape, f"global pooling takes spatial axes of at most {MAX_PARAM}")
            kernel, strides, dil = spatial, (1,) * r, (1,) * r
            pb, pe = (0,) * r, (0,) * r
        else:
            kernel = self.kernel_shape
            strides = self.strides or kernel
            dil = self.dilations or (1,) * r
            pb, pe = self._pads_for(spatial, kernel, strides, dil)
        out = []
        for a in range(r):
            ek = dil[a] * (kernel[a] - 1) + 1  # extent of the dilated kernel
            span = spatial[a] + pb[a] + pe[a] - ek
            if span < 0:
                raise SpecError("kernel_shape", tuple(kernel),
                                f"dilated kernel extent {ek} on spatial axis {a} is larger than the "
                                f"padded input ({spatial[a]} + pads {pb[a]}+{pe[a]})")
            if self.ceil_mode:
                o = -(-span // strides[a]) + 1
                if (o - 1) * strides[a] >= spatial[a] + pb[a]:
                    o -= 1  # the last window would start in the end padding
            else:
                o = span // strides[a] + 1
            # A window sees input iff one of its taps lands in [0, in).  Windows that start at
            # or after 0 always do (every start is < in); only those starting in the begin
            # padding can miss the input when dilation steps over it.
            for i in range(o):
                start = i * strides[a] - pb[a]
                if start >= 0:
                    break
                first_inside = start + (-start + dil[a] - 1) // dil[a] * dil[a]
                taps_before = (first_inside - start) // dil[a]
                if taps_before >= kernel[a] or first_inside >= spatial[a]:
                    raise SpecError("pads", tuple(pb) + tuple(pe),
                                    f"window {i} on spatial axis {a} covers only padding "
                                    f"(dilation {dil[a]}); reduce the pads or the dilation")
            out.append(o)
        return Geometry(spec=self, input_shape=shape, batch=n, channels=c,
                        in_spatial=tuple(spatial), out_spatial=tuple(out), kernel=tuple(kernel),
                        strides=tuple(strides), dilations=tuple(dil),
                        pads_begin=tuple(pb), pads_end=tuple(pe))

    def _pads_for(self, spatial, kernel, strides, dil):
        r = len(spatial)
        if self.auto_pad == "NOTSET":
            pads = self.pads or (0,) * (2 * r)
            return pads[:r], pads[r:]
        if self.auto_pad == "VALID":
            return (0,) * r, (0,) * r
        pb, pe = [], []
        for a in range(r):
            out = -(-spatial[a] // strides[a])
            total = max(0, (out - 1) * strides[a] + dil[a] * (kernel[a] - 1) + 1 - spatial[a])
            small, large = total // 2, total - total // 2
            if self.auto_pad == "SAME_UPPER":
                pb.append(small), pe.append(large)
            else:
                pb.append(large), pe.append(small)
        return tuple(pb), tuple(pe)


@dataclass(frozen=True)
class Geometry:
    """A spec resolved against one input shape: everything a kernel needs, all explicit."""

    spec: PoolSpec
    input_shape: tuple[int, ...]
    batch: int
    channels: int
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.in_spatial)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.spec.layout == "channels_first":
            return (self.batch, self.channels) + self.out_spatial
        return (self.batch,) + self.out_spatial + (self.channels,)

    @property
    def input_elements(self) -> int:
        return math.prod(self.input_shape)

    @property
    def output_elements(self) -> int:
        return math.prod(self.output_shape)

    @property
    def pads(self) -> tuple[int, ...]:
        """Resolved pads in ONNX order (begins, then ends)."""
        return self.pads_begin + self.pads_end
