"""The C backend: poolserve's own kernels, called through ctypes.

Every size is checked here before the call (the spec resolves the geometry; buffers are
allocated from it), and the kernels check everything again on their side.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from ..spec import DTYPES_BY_MODE, FLOAT_DTYPES, INDEX_DTYPE, Geometry, PoolSpec, SpecError
from . import _kernels as k
from .base import Unsupported

_I64P = ctypes.POINTER(ctypes.c_int64)


def _ptr(a: np.ndarray | None):
    return None if a is None else a.ctypes.data


def _native_contiguous(a: np.ndarray) -> np.ndarray:
    """The array as C-contiguous, native byte order: a copy only when it is not already."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


class CBackend:
    name = "c"

    def __init__(self, threads: int | None = None):
        threads = threads or os.cpu_count() or 1
        if not 1 <= threads <= k.MAX_THREADS:
            raise ValueError(f"threads={threads}: must be between 1 and {k.MAX_THREADS}")
        self.threads = threads

    @staticmethod
    def isa() -> str:
        """The widest instruction set the kernels use on this CPU."""
        return k.isa()

    def supports(self, spec: PoolSpec, dtype: str) -> str | None:
        if dtype not in DTYPES_BY_MODE[spec.mode]:
            return f"the C backend runs {spec.mode} pooling on {', '.join(DTYPES_BY_MODE[spec.mode])}, not {dtype}"
        return None

    def _desc(self, g: Geometry, dtype: str) -> k.PoolDesc:
        s = g.spec
        d = k.PoolDesc()
        d.mode = k.MODES[s.mode]
        d.dtype = k.DTYPES[dtype]
        d.layout = k.LAYOUTS[s.layout]
        d.rank = g.rank
        d.ceil_mode = int(s.ceil_mode)
        d.count_include_pad = int(s.count_include_pad)
        d.nthreads = self.threads
        d.batch, d.channels = g.batch, g.channels
        d.p = float(s.p)
        for a in range(g.rank):
            d.in_shape[a] = g.in_spatial[a]
            d.out_shape[a] = g.out_spatial[a]
            d.kernel[a] = g.kernel[a]
            d.stride[a] = g.strides[a]
            d.dilation[a] = g.dilations[a]
            d.pad_begin[a] = g.pads_begin[a]
            d.pad_end[a] = g.pads_end[a]
        return d

    def forward(self, spec: PoolSpec, x: np.ndarray):
        x = _native_contiguous(np.asarray(x))
        reason = self.supports(spec, x.dtype.name)
        if reason:
            raise Unsupported(reason)
        g = spec.resolve(x.shape, x.dtype.name)
        y = np.empty(g.output_shape, dtype=x.dtype)
        ind = np.empty(g.output_shape, dtype=np.int64) if spec.return_indices else None
        k.check(k.pool_forward(ctypes.byref(self._desc(g, x.dtype.name)), _ptr(x), x.nbytes, _ptr(y), y.nbytes,
                               None if ind is None else ind.ctypes.data_as(_I64P),
                               0 if ind is None else ind.nbytes))
        return y, ind

    def backward(self, spec: PoolSpec, input_shape, grad_output: np.ndarray, *,
                 x: np.ndarray | None = None, indices: np.ndarray | None = None) -> np.ndarray:
        dy = _native_contiguous(np.asarray(grad_output))
        dtype = dy.dtype.name
        if dtype not in FLOAT_DTYPES:
            raise SpecError("grad_output.dtype", dtype, f"must be one of {', '.join(FLOAT_DTYPES)}")
        g = spec.resolve(input_shape)
        if dy.shape != g.output_shape:
            raise SpecError("grad_output.shape", dy.shape, f"must equal the forward output shape {g.output_shape}")
        if x is not None:
            x = _native_contiguous(np.asarray(x))
            if x.shape != g.input_shape:
                raise SpecError("input.shape", x.shape, f"must equal input_shape {g.input_shape}")
        if spec.mode == "max":
            if indices is None:
                if x is None:
                    raise SpecError("indices", None, "max backward needs the forward indices or the input")
                _, indices = self.forward(spec.replace(return_indices=True), x)
            indices = _native_contiguous(np.asarray(indices))
            if indices.dtype.name != INDEX_DTYPE or indices.shape != g.output_shape:
                raise SpecError("indices", f"{indices.dtype.name}{list(indices.shape)}",
                                f"must be {INDEX_DTYPE} of the forward output shape {g.output_shape}")
            x = None  # the kernel routes by indices alone
        else:
            indices = None
        if spec.mode == "lp":
            if x is None:
                raise SpecError("input", None, "lp backward needs the forward input")
            if x.dtype != dy.dtype:
                raise SpecError("input.dtype", x.dtype.name, f"must equal grad_output's dtype {dtype}")
        else:
            x = None
        dx = np.empty(g.input_shape, dtype=dy.dtype)
        k.check(k.pool_backward(ctypes.byref(self._desc(g, dtype)), _ptr(dy), dy.nbytes,
                                _ptr(x), 0 if x is None else x.nbytes,
                                None if indices is None else indices.ctypes.data_as(_I64P),
                                0 if indices is None else indices.nbytes,
                                _ptr(dx), dx.nbytes))
        return dx
