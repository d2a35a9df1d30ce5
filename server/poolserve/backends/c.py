"""The C backend: poolserve's own kernels, called through ctypes.

Every size is checked here before the call (the spec resolves the geometry; buffers are
allocated from it), and the kernels check everything again on their side.

A small call (1x16x32x32) costs a few microseconds in the kernel, so the Python side is kept
lean: the work that depends only on (spec, shape, dtype) -- resolving the spec, building the
kernel descriptor, the output shape -- is done once and cached (a "plan", as
XNNPACK and oneDNN set an operator up once and run it many times); a call then allocates its
outputs, takes three addresses and calls the kernel.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..spec import DTYPES_BY_MODE, FLOAT_DTYPES, INDEX_DTYPE, Geometry, PoolSpec, SpecError
from . import _kernels as k
from .base import Unsupported

_INDEX = np.dtype(INDEX_DTYPE)
_FLOAT_NP = frozenset(np.dtype(d) for d in FLOAT_DTYPES)
_c_char = ctypes.c_char
_addressof = ctypes.addressof


def _addr(a: np.ndarray | None) -> int | None:
    """The address of a's data.  ``a.ctypes.data`` costs ~1 us; a writable array (every output,
    most inputs) is read through the buffer protocol for a third of that."""
    if a is None:
        return None
    if a.flags.writeable:
        return _addressof(_c_char.from_buffer(a))
    return a.ctypes.data


def _native_contiguous(a: np.ndarray) -> np.ndarray:
    """The array as C-contiguous, native byte order: a copy only when it is not already."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


def _as_kernel_input(a) -> np.ndarray:
    if type(a) is np.ndarray and a.flags.c_contiguous and a.dtype.isnative:
        return a  # the common case, checked in ~0.1 us
    return _native_contiguous(np.asarray(a))


@dataclass(frozen=True)
class _Plan:
    """Everything about a call that depends only on (spec, input shape, dtype, threads, flags)."""

    geometry: Geometry
    desc: object  # ctypes.pointer(PoolDesc): passed as is, converted by nothing
    output_shape: tuple[int, ...]


def _descriptor(g: Geometry, dtype: str, threads: int, flags: int) -> k.PoolDesc:
    s = g.spec
    d = k.PoolDesc()
    d.mode = k.MODES[s.mode]
    d.dtype = k.DTYPES[dtype]
    d.layout = k.LAYOUTS[s.layout]
    d.rank = g.rank
    d.ceil_mode = int(s.ceil_mode)
    d.count_include_pad = int(s.count_include_pad)
    d.nthreads = threads
    d.flags = flags
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


@lru_cache(maxsize=2048)
def _plan(spec: PoolSpec, shape: tuple[int, ...], dtype: np.dtype, threads: int, flags: int) -> _Plan:
    """Resolve once per (spec, shape, dtype, threads, flags).  Errors are raised, never cached."""
    name = dtype.name
    g = spec.resolve(shape, name)
    return _Plan(geometry=g, desc=ctypes.pointer(_descriptor(g, name, threads, flags)), output_shape=g.output_shape)


class CBackend:
    name = "c"

    def __init__(self, threads: int | None = None, generic_only: bool = False, always_split: bool = False,
                 no_fallback: bool = False):
        """threads: kernel worker threads (default: one per CPU); a small call (under 6 MiB
        moved, weighted by its cost per byte: team_work in poolkernels.c) runs on the calling
        thread alone, where waking another costs more than it saves.  generic_only: run
        the generic kernels even where a specialised fast path exists, and always_split: use every
        thread even on a small call (the tests use both, to check the fast paths and their split).
        no_fallback: a max backward fast path that reads indices as taps of their window raises
        (POOL_E_INDEX) on one that is not, instead of handing the call to the scatter (the tests
        use it to show that the fast path took a call)."""
        threads = threads or os.cpu_count() or 1
        if not 1 <= threads <= k.MAX_THREADS:
            raise ValueError(f"threads={threads}: must be between 1 and {k.MAX_THREADS}")
        self.threads = threads
        self.generic_only = bool(generic_only)
        self._flags = ((k.FLAG_GENERIC_ONLY if generic_only else 0) | (k.FLAG_ALWAYS_SPLIT if always_split else 0)
                       | (k.FLAG_NO_FALLBACK if no_fallback else 0))
        self._last = None  # (spec, shape, dtype, plan) of the latest call

    @staticmethod
    def isa() -> str:
        """The instruction set the kernels run with on this CPU."""
        return k.isa()

    def supports(self, spec: PoolSpec, dtype: str) -> str | None:
        if dtype not in DTYPES_BY_MODE[spec.mode]:
            return f"the C backend runs {spec.mode} pooling on {', '.join(DTYPES_BY_MODE[spec.mode])}, not {dtype}"
        return None

    def _plan(self, spec: PoolSpec, shape, dtype: np.dtype) -> _Plan:
        # A one-entry memo in front of the LRU cache: a caller that repeats one spec object on one
        # shape (a server's hot loop) skips even hashing the spec (~0.6 us for the dataclass).
        last = self._last
        if last is not None and last[0] is spec and last[1] == shape and last[2] == dtype:
            return last[3]
        try:
            plan = _plan(spec, shape, dtype, self.threads, self._flags)
            self._last = (spec, shape, dtype, plan)
            return plan
        except SpecError:
            reason = self.supports(spec, dtype.name)
            if reason:
                raise Unsupported(reason) from None
            raise

    def kernel_path(self, spec: PoolSpec, shape, dtype, backward: bool = False) -> str:
        """The kernel that forward (or backward) runs for this call: "generic" or the name of a
        fast path (tests use it to show that a case reaches the path it is meant to test)."""
        return k.path(self._plan(spec, tuple(shape), np.dtype(dtype)).desc, backward)

    def forward(self, spec: PoolSpec, x: np.ndarray):
        x = _as_kernel_input(x)
        plan = self._plan(spec, x.shape, x.dtype)
        y = np.empty(plan.output_shape, dtype=x.dtype)
        if spec.return_indices:
            ind = np.empty(plan.output_shape, dtype=_INDEX)
            rc = k.pool_forward(plan.desc, _addr(x), x.nbytes, _addr(y), y.nbytes, _addr(ind), ind.nbytes)
        else:
            ind = None
            rc = k.pool_forward(plan.desc, _addr(x), x.nbytes, _addr(y), y.nbytes, None, 0)
        if rc:
            k.check(rc)
        return y, ind

    def backward(self, spec: PoolSpec, input_shape, grad_output: np.ndarray, *,
                 x: np.ndarray | None = None, indices: np.ndarray | None = None) -> np.ndarray:
        dy = _as_kernel_input(grad_output)
        if dy.dtype not in _FLOAT_NP:  # not dtype.name: a 2.6 us property in NumPy 2.4
            raise SpecError("grad_output.dtype", dy.dtype.name, f"must be one of {', '.join(FLOAT_DTYPES)}")
        input_shape = tuple(map(int, input_shape))
        plan = self._plan(spec, input_shape, dy.dtype)
        g = plan.geometry
        if dy.shape != g.output_shape:
            raise SpecError("grad_output.shape", dy.shape, f"must equal the forward output shape {g.output_shape}")
        if x is not None:
            x = _as_kernel_input(x)
            if x.shape != g.input_shape:
                raise SpecError("input.shape", x.shape, f"must equal input_shape {g.input_shape}")
        if spec.mode == "max":
            if indices is None:
                if x is None:
                    raise SpecError("indices", None, "max backward needs the forward indices or the input")
                _, indices = self.forward(spec.replace(return_indices=True), x)
            indices = _as_kernel_input(indices)
            if indices.dtype != _INDEX or indices.shape != g.output_shape:
                raise SpecError("indices", f"{indices.dtype.name}{list(indices.shape)}",
                                f"must be {INDEX_DTYPE} of the forward output shape {g.output_shape}")
            x = None  # the kernel routes by indices alone
        else:
            indices = None
        if spec.mode == "lp":
            if x is None:
                raise SpecError("input", None, "lp backward needs the forward input")
            if x.dtype != dy.dtype:
                raise SpecError("input.dtype", x.dtype.name, f"must equal grad_output's dtype {dy.dtype.name}")
        else:
            x = None
        dx = np.empty(g.input_shape, dtype=dy.dtype)
        k.check(k.pool_backward(plan.desc, _addr(dy), dy.nbytes,
                                _addr(x), 0 if x is None else x.nbytes,
                                _addr(indices), 0 if indices is None else indices.nbytes,
                                _addr(dx), dx.nbytes))
        return dx
