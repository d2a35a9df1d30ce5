"""Exceptions -> gRPC status codes: the one definition (DESIGN.md, "Errors").

The data plane raises plain Python exceptions (SpecError, Unsupported, ...); every servicer maps
them here, so the native API and any later protocol answer the same code for the same fault.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from poolclient.tensors import ElementLimit, TensorError

from .backends.base import BackendError, Unsupported
from .spec import SpecError

log = logging.getLogger("poolserve.errors")


class LimitExceeded(ValueError):
    """A valid request over one of this server's limits (RESOURCE_EXHAUSTED)."""

    def __init__(self, field: str, value, message: str):
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r}: {message}")


class NotFound(LookupError):
    """A named thing the server does not have: a model, a version, a shared-memory region (NOT_FOUND)."""


class AlreadyExists(ValueError):
    """A name that is taken, e.g. a shared-memory region registered twice (ALREADY_EXISTS)."""


class DeadlinePassed(Exception):
    """The call's deadline passed before the work started: skip it (DEADLINE_EXCEEDED)."""


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    message: str
    field: str | None = None  # for a google.rpc.BadRequest detail
    internal: bool = False     # unexpected: logged with its traceback


def new_request_id() -> str:
    return os.urandom(8).hex()  # 16 hex digits, as uuid4().hex[:16] gave, at a quarter of its cost


def classify(exc: BaseException, request_id: str) -> Failure:
    """The status a client gets for ``exc``.  Never a traceback: INTERNAL says only the id."""
    # order matters: ElementLimit is a TensorError, and both are ValueErrors
    if isinstance(exc, (ElementLimit, LimitExceeded)):
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.field)
    if isinstance(exc, (SpecError, TensorError)):
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc), exc.field)
    if isinstance(exc, NotFound):
        return Failure(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, AlreadyExists):
        return Failure(grpc.StatusCode.ALREADY_EXISTS, str(exc))
    if isinstance(exc, DeadlinePassed):
        return Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was served")
    if isinstance(exc, Unsupported):
        return Failure(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, BackendError):
        return Failure(grpc.StatusCode.INTERNAL, f"backend failure (request id {request_id})", internal=True)
    return Failure(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})", internal=True)


class _Status(grpc.Status):
    def __init__(self, code, details, trailing_metadata):
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


def to_status(failure: Failure, metadata=()) -> grpc.Status:
    """A grpc.Status carrying a google.rpc.Status, with a BadRequest detail naming the field.

    ``metadata``: more trailing metadata (abort_with_status replaces whatever was set before).
    """
    details = []
    if failure.field:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=failure.field, description=failure.message)])
        detail = any_pb2.Any()
        detail.Pack(bad)
        details.append(detail)
    code = getattr(code_pb2, failure.code.name)
    st = rpc_status.to_status(status_pb2.Status(code=code, message=failure.message, details=details))
    return _Status(st.code, st.details, tuple(st.trailing_metadata) + tuple(metadata))
