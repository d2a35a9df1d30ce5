"""The backends that run a PoolSpec: ``c`` (our kernels) and ``onnx`` (ONNX Runtime).

Backends are loaded on first use, so that a server without onnxruntime still serves the C
backend, and :func:`get` says why a backend is missing instead of failing at import.
"""

from __future__ import annotations

import importlib

from .base import Backend, BackendError, Unsupported

# name -> (module, class): one line per backend
_REGISTRY = {
    "c": ("poolserve.backends.c", "CBackend"),
    "onnx": ("poolserve.backends.onnx", "OnnxBackend"),
}


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def load(name: str):
    """The backend class for ``name``; Unsupported (with the reason) when it cannot load here."""
    if name not in _REGISTRY:
        raise Unsupported(f"unknown backend {name!r}; known: {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise Unsupported(f"backend {name!r} is not available here: {e}") from e


__all__ = ["Backend", "BackendError", "Unsupported", "load", "names"]
