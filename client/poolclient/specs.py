"""Pooling parameters the PyTorch way (kernel_size, stride, padding, ...; ints or tuples), and
their translation into the wire's PoolSpec once the input's rank is known."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence, Union

from ._proto.poolserve.v1 import pooling_pb2 as pb

IntOrTuple = Union[int, Sequence[int]]
MODES = {"max": pb.MAX, "avg": pb.AVG, "lp": pb.LP}
AUTO_PADS = {"NOTSET": pb.NOTSET, "SAME_UPPER": pb.SAME_UPPER, "SAME_LOWER": pb.SAME_LOWER, "VALID": pb.VALID}


@dataclass(frozen=True)
class Spec:
    """What to pool.  Ints apply to every spatial axis; tuples give one entry per axis.

    mode:              "max", "avg" or "lp".
    kernel_size:       window size (not with global_pool).
    stride:            default: kernel_size.
    padding:           symmetric padding per axis (PyTorch's), or "same" / "valid".
    pads:              asymmetric padding, ONNX order (begins then ends); overrides padding.
    dilation:          spacing between taps; default 1.
    ceil_mode:         round the output size up.
    count_include_pad: avg only; default False (ONNX's default; PyTorch's avg_pool uses True).
    p:                 lp only: the norm's exponent; default 2.
    return_indices:    max only: also return int64 argmax offsets into the input.
    global_pool:       one window over the whole spatial extent.
    backend, provider: "c" / "onnx" and "cpu" / "cuda"; None: the server's policy.
    """

    mode: str = "max"
    kernel_size: IntOrTuple | None = None
    stride: IntOrTuple | None = None
    padding: IntOrTuple | str = 0
    pads: Sequence[int] | None = None
    dilation: IntOrTuple = 1
    ceil_mode: bool = False
    count_include_pad: bool = False
    p: float | None = None
    return_indices: bool = False
    global_pool: bool = False
    backend: str | None = None
    provider: str | None = None

    def replace(self, **changes) -> "Spec":
        return Spec(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def to_proto(self, rank: int) -> pb.PoolSpec:
        """The wire message for an input with ``rank`` spatial axes."""
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: must be one of {', '.join(MODES)}")
        m = pb.PoolSpec(mode=MODES[self.mode], ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad,
                        return_indices=self.return_indices, global_pool=self.global_pool,
                        backend=self.backend or "", provider=self.provider or "")
        if self.p is not None:
            m.p = float(self.p)
        if self.global_pool:
            return m
        if self.kernel_size is None:
            raise ValueError("kernel_size is required (or global_pool=True)")
        m.kernel_shape.extend(_ntuple(self.kernel_size, rank, "kernel_size"))
        if self.stride is not None:
            m.strides.extend(_ntuple(self.stride, rank, "stride"))
        if self.dilation != 1:
            m.dilations.extend(_ntuple(self.dilation, rank, "dilation"))
        if self.pads is not None:
            m.pads.extend(int(v) for v in self.pads)
        elif isinstance(self.padding, str):
            name = {"same": "SAME_UPPER", "valid": "VALID"}.get(self.padding.lower(), self.padding.upper())
            if name not in AUTO_PADS:
                raise ValueError(f"padding={self.padding!r}: an int, a tuple, 'same' or 'valid'")
            m.auto_pad = AUTO_PADS[name]
        elif self.padding != 0:
            per_axis = _ntuple(self.padding, rank, "padding")
            m.pads.extend(per_axis + per_axis)  # begins, then ends
        return m


def _ntuple(v: IntOrTuple, rank: int, name: str) -> list[int]:
    if isinstance(v, int):
        return [v] * rank
    out = [int(e) for e in v]
    if len(out) != rank:
        raise ValueError(f"{name}={tuple(v)}: needs {rank} entries, one per spatial axis of the input")
    return out
