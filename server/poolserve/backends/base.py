"""What every backend offers, and the errors a backend raises.

A backend knows numpy and nothing of protobuf: it takes a validated :class:`PoolSpec` and
arrays, and returns arrays.  The service maps these exceptions to gRPC status codes
(DESIGN.md, "Errors").
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..spec import PoolSpec


class BackendError(RuntimeError):
    """The backend failed on an input the spec accepted (maps to INTERNAL)."""


class Unsupported(RuntimeError):
    """This backend cannot run this spec/dtype here (maps to FAILED_PRECONDITION)."""


class Backend(Protocol):
    name: str

    def supports(self, spec: PoolSpec, dtype: str) -> str | None:
        """None when the backend runs (spec, dtype); otherwise the reason it does not."""

    def forward(self, spec: PoolSpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Pool x; return (y, indices), indices None unless spec.return_indices."""

    def backward(self, spec: PoolSpec, input_shape, grad_output: np.ndarray, *,
                 x: np.ndarray | None = None, indices: np.ndarray | None = None) -> np.ndarray:
        """Gradient of the input.  max needs indices (or x to recompute them); lp needs x."""
