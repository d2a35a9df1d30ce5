"""gRPC status codes -> typed exceptions, each carrying the server's message.

    try:
        client.max_pool(x, 5)
    except poolclient.InvalidArgument as e:
        print(e.field, e.details)   # "spec.kernel_shape", "spec.kernel_shape=(5, 5): ..."
"""

from __future__ import annotations

import grpc


class PoolError(Exception):
    """A failed call.  ``code``: the grpc.StatusCode; ``details``: the server's message;
    ``field``: the request field at fault when the server named one (google.rpc.BadRequest);
    ``request_id``: the id the server's log line carries."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, *, code: grpc.StatusCode | None = None, field: str | None = None,
                 request_id: str | None = None, worker_pid: int | None = None):
        if code is not None:
            self.code = code
        self.details, self.field, self.request_id, self.worker_pid = details, field, request_id, worker_pid
        super().__init__(f"{self.code.name}: {details}")


class InvalidArgument(PoolError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(PoolError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(PoolError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(PoolError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(PoolError, ConnectionError):
    code = grpc.StatusCode.UNAVAILABLE


class Internal(PoolError):
    code = grpc.StatusCode.INTERNAL


class Cancelled(PoolError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(PoolError):
    code = grpc.StatusCode.UNIMPLEMENTED


_BY_CODE = {cls.code: cls for cls in (InvalidArgument, ResourceExhausted, FailedPrecondition, DeadlineExceeded,
                                      Unavailable, Internal, Cancelled, Unimplemented)}


def _bad_request_field(trailing) -> str | None:
    """The field of a google.rpc.BadRequest detail, where googleapis-common-protos is installed
    (it comes with grpcio-status; the client does not require it)."""
    blob = next((v for k, v in trailing if k == "grpc-status-details-bin"), None)
    if blob is None:
        return None
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:
        return None
    status = status_pb2.Status.FromString(blob)
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                return bad.field_violations[0].field
    return None


def from_rpc_error(e: grpc.RpcError) -> PoolError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    trailing = tuple(e.trailing_metadata() or ()) if hasattr(e, "trailing_metadata") else ()
    md = {k: v for k, v in trailing if isinstance(v, str)}
    pid = md.get("poolserve-worker-pid")
    cls = _BY_CODE.get(code, PoolError)
    return cls(details, code=code, field=_bad_request_field(trailing), request_id=md.get("poolserve-request-id"),
               worker_pid=int(pid) if pid else None)
