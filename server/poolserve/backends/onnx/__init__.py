"""The ONNX backend: pooling graphs (poolserve.backends.onnx.graphs) run on ONNX Runtime.

    backend = OnnxBackend(threads=2, providers="cpu")          # or "cuda" with onnxruntime-gpu
    y, indices = backend.forward(spec, x)
    dx = backend.backward(spec, x.shape, dy, indices=indices)

Graphs are built on first use per (spec, dtype, rank) -- or loaded from ``model_dir``, a
directory written by ``poolserve export-onnx`` -- and their sessions are kept in an LRU cache.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ...spec import FLOAT_DTYPES, INDEX_DTYPE, Geometry, PoolSpec, SpecError
from ..base import BackendError, Unsupported
from . import capabilities, graphs, sessions
from .graphs import GraphKey, graph_key


def _native_contiguous(a: np.ndarray) -> np.ndarray:
    """The array as C-contiguous, native byte order: a copy only when it is not already."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


@functools.lru_cache(maxsize=4096)
def _forward_plan(spec: PoolSpec, np_dtype: np.dtype, shape: tuple[int, ...], provider: str) -> GraphKey:
    """The forward graph for (spec, dtype, shape) on the provider, after the spec's checks and the refusals.

    Memoised: a server sees the same few (spec, shape) pairs again and again, and resolving and
    keying cost more than the rest of the wrapper (~8 of ~15 us).  Exceptions are not cached.
    """
    dtype = np_dtype.name
    g = spec.resolve(shape, dtype)  # SpecError (INVALID_ARGUMENT) before any refusal
    reason = capabilities.forward_gap(spec, dtype, provider)
    if reason:
        raise Unsupported(reason)
    return graph_key("forward", _graph_spec(spec, dtype, g), dtype, g.rank)


def _graph_spec(spec: PoolSpec, dtype: str, g: Geometry) -> PoolSpec:
    """The spec the graph is built from: the spec itself, or for a global spec that its Global*
    operator cannot run, the same pooling as one window over the resolved extent (the spec
    module's definition of global pooling: kernel = spatial extent, stride 1, no pads)."""
    if not capabilities.global_as_window(spec, dtype):
        return spec
    return PoolSpec(mode=spec.mode, kernel_shape=g.kernel, strides=g.strides, p=spec.p, layout=spec.layout,
                    count_include_pad=spec.count_include_pad, return_indices=spec.return_indices)


def _run(session, outputs, feeds):
    try:
        return session.run(outputs, feeds)
    except Exception as e:  # ORT raises its own exception types; the service maps BackendError
        raise BackendError(f"ONNX Runtime failed: {str(e).splitlines()[0]}") from e


class OnnxBackend:
    name = "onnx"

    def __init__(self, threads: int | None = None, providers: str | Sequence[str] | None = None,
                 model_dir: str | Path | None = None, build_missing: bool = True, cache_size: int = 64):
        """threads: ONNX Runtime intra-op threads (default: all CPUs).
        providers: "cpu" (default), "cuda", or ONNX Runtime provider names; each must be available.
        model_dir: a directory of exported .onnx files, used in preference to building graphs;
        with build_missing=False, specs without a file there are refused.
        """
        if not build_missing and model_dir is None:
            raise ValueError("build_missing=False needs a model_dir to serve from")
        threads = threads or os.cpu_count() or 1
        if threads < 1:
            raise ValueError(f"threads={threads}: must be >= 1")
        self.threads = threads
        self.providers = sessions.resolve_providers(providers)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        if self.model_dir is not None and not self.model_dir.is_dir():
            raise ValueError(f"model_dir={str(model_dir)!r}: not a directory")
        self.build_missing = build_missing
        self._cache = sessions.SessionCache(self.providers, threads, cache_size)

    @staticmethod
    def available_providers() -> tuple[str, ...]:
        return sessions.available_providers()

    # -- capabilities ------------------------------------------------------------------------
    def supports(self, spec: PoolSpec, dtype: str) -> str | None:
        return capabilities.forward_gap(spec, dtype, self.providers[0]) or self._missing_files("forward", spec, dtype)

    def supports_backward(self, spec: PoolSpec, dtype: str) -> str | None:
        """Like supports(), for backward (max backward scatters only, so it has fewer gaps)."""
        return capabilities.backward_gap(spec, dtype) or self._missing_files("backward", spec, dtype)

    def _missing_files(self, kind: str, spec: PoolSpec, dtype: str) -> str | None:
        """With build_missing=False: why no graph file serves the spec (a global spec: any rank)."""
        if self.build_missing:
            return None
        keys = [graph_key(kind, spec, dtype, r) for r in ([spec.rank] if spec.rank else (1, 2, 3))]
        if any(sessions.model_file(self.model_dir, k.name).exists() for k in keys):
            return None
        return self._missing_file(keys[0])

    def _missing_file(self, key: GraphKey) -> str:
        return f"{sessions.model_file(self.model_dir, key.name)} does not exist (export it with poolserve export-onnx)"

    # -- sessions ----------------------------------------------------------------------------
    def session(self, key: GraphKey):
        """The cached InferenceSession for a graph (built or loaded on first use)."""
        return self._cache.get(key, lambda: key.name, lambda: self._model_bytes(key))

    def _model_bytes(self, key: GraphKey) -> bytes:
        if self.model_dir is not None:
            path = sessions.model_file(self.model_dir, key.name)
            if path.exists():
                return path.read_bytes()
            if not self.build_missing:
                raise Unsupported(self._missing_file(key))
        return graphs.build(key).SerializeToString()

    # -- compute -----------------------------------------------------------------------------
    def forward(self, spec: PoolSpec, x: np.ndarray):
        x = _native_contiguous(np.asarray(x))
        # keyed by the dtype object: numpy's dtype.name is Python code that, right after a
        # multi-megabyte call (cold caches), cost 6-30 us per call in bench/onnx_overhead.py
        session = self.session(_forward_plan(spec, x.dtype, x.shape, self.providers[0]))
        if spec.return_indices:
            y, ind = _run(session, ("Y", "Indices"), {"X": x})
            return y, ind
        (y,) = _run(session, ("Y",), {"X": x})
        return y, None

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
        reason = capabilities.backward_gap(spec, dtype)
        if reason:
            raise Unsupported(reason)
        shape = np.asarray(g.input_shape, dtype=np.int64)
        pads_begin = np.asarray(g.pads_begin, dtype=np.int64)
        if spec.mode == "max":
            if indices is None:
                if x is None:
                    raise SpecError("indices", None, "max backward needs the forward indices or the input")
                _, indices = self.forward(spec.replace(return_indices=True), x)
            indices = _native_contiguous(np.asarray(indices))
            if indices.dtype.name != INDEX_DTYPE or indices.shape != g.output_shape:
                raise SpecError("indices", f"{indices.dtype.name}{list(indices.shape)}",
                                f"must be {INDEX_DTYPE} of the forward output shape {g.output_shape}")
            # ScatterElements would fail on an out-of-range index; name the field instead
            if indices.size and (indices.min() < 0 or indices.max() >= g.input_elements):
                raise SpecError("indices", f"[{indices.min()}, {indices.max()}]",
                                f"must be flat offsets into the input, in [0, {g.input_elements})")
            feeds = {"dY": dy, "Indices": indices, "input_shape": shape}
        elif spec.mode == "avg":
            feeds = {"dY": dy, "input_shape": shape, "pads_begin": pads_begin}
        else:
            if x is None:
                raise SpecError("input", None, "lp backward needs the forward input")
            if x.dtype != dy.dtype:
                raise SpecError("input.dtype", x.dtype.name, f"must equal grad_output's dtype {dtype}")
            feeds = {"dY": dy, "X": x, "pads_begin": pads_begin}
        session = self.session(graph_key("backward", _graph_spec(spec, dtype, g), dtype, g.rank))
        (dx,) = _run(session, ("dX",), feeds)
        return dx


__all__ = ["OnnxBackend", "GraphKey", "graph_key"]
