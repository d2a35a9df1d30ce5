"""What every RPC shares: a request id, the exception -> status mapping, the request's log line,
its metrics, and the test-only hooks.

    with Scope(env, "Pool", context) as s:
        ...; s.op, s.backend = "max", "c"; s.bytes_in += n

On an exception the client gets the status of :func:`poolserve.errors.classify` (with the
request id and worker pid in the trailing metadata); an unexpected one is logged with its
traceback and the request id, and the client sees only "internal error (request id ...)".

Test hooks (off unless the server's environment has POOLSERVE_TEST_HOOKS=1, which only the test
suite sets): request metadata ``poolserve-test-sleep-ms: N`` makes the call sleep N ms before
its work (for shutdown, deadline and worker-kill tests), ``poolserve-test-raise: 1`` raises an
unexpected exception (for the INTERNAL path).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time

import grpc

from .. import metrics
from ..errors import DeadlinePassed, classify, new_request_id, to_status

log = logging.getLogger("poolserve.request")
TEST_HOOKS = os.environ.get("POOLSERVE_TEST_HOOKS") == "1"
STREAMING_RPCS = ("PoolStream", "ModelStreamInfer")  # their servicers record each item


class Stats:
    """Counts since the last INFO summary line (server.py logs it periodically)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._reset()

    def _reset(self):
        self.count = collections.Counter()  # (rpc, code) -> n
        self.micros = 0
        self.bytes = 0

    def add(self, rpc: str, code: str, micros: int, nbytes: int):
        with self._lock:
            self.count[(rpc, code)] += 1
            self.micros += micros
            self.bytes += nbytes

    def take(self) -> dict:
        with self._lock:
            n = sum(self.count.values())
            out = {"requests": n, "bytes": self.bytes, "mean_us": self.micros // n if n else 0,
                   **{f"{rpc}.{code}": c for (rpc, code), c in sorted(self.count.items())}}
            self._reset()
            return out


STATS = Stats()


class Scope:
    def __init__(self, rpc: str, context: grpc.ServicerContext):
        self.rpc, self.context = rpc, context
        md = dict(context.invocation_metadata() or ())
        self.metadata = md
        self.request_id = md.get("x-request-id") or new_request_id()
        self.op = self.backend = ""
        self.shape: tuple = ()
        self.bytes_in = self.bytes_out = 0

    def __enter__(self) -> "Scope":
        self.t0 = time.perf_counter()
        metrics.child(metrics.IN_FLIGHT, self.rpc).inc()
        if TEST_HOOKS:
            try:
                self._test_hooks()
            except Exception as e:  # a with-statement does not call __exit__ for its __enter__
                self.__exit__(type(e), e, e.__traceback__)
        return self

    def _test_hooks(self):
        sleep_ms = self.metadata.get("poolserve-test-sleep-ms")
        if sleep_ms:
            time.sleep(int(sleep_ms) / 1000)
        if self.metadata.get("poolserve-test-raise"):
            raise RuntimeError("test hook: an unexpected exception")

    def check_deadline(self):
        """Before the work: skip it when nobody is waiting for the answer any more."""
        left = self.context.time_remaining()
        if left is not None and left <= 0:
            raise DeadlinePassed()

    def record(self, code: str, op: str | None = None, backend: str | None = None,
               bytes_in: int = 0, bytes_out: int = 0, t0: float | None = None):
        """Metrics and the DEBUG line for one pooling operation (a call, or one stream item)."""
        op = op if op is not None else self.op
        backend = backend if backend is not None else self.backend
        seconds = time.perf_counter() - (t0 if t0 is not None else self.t0)
        labels = (self.rpc, op or "-", backend or "-")
        metrics.child(metrics.REQUESTS, *labels, code).inc()
        metrics.child(metrics.LATENCY, *labels).observe(seconds)
        metrics.child(metrics.BYTES_IN, self.rpc).inc(bytes_in)
        metrics.child(metrics.BYTES_OUT, self.rpc).inc(bytes_out)
        micros = int(seconds * 1e6)
        STATS.add(self.rpc, code, micros, bytes_in + bytes_out)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra={"fields": {
                "rpc": self.rpc, "op": op, "backend": backend, "shape": "x".join(map(str, self.shape)),
                "bytes_in": bytes_in, "bytes_out": bytes_out, "us": micros, "status": code,
                "request_id": self.request_id}})

    def trailing(self):
        return (("poolserve-worker-pid", str(os.getpid())), ("poolserve-request-id", self.request_id))

    def __exit__(self, exc_type, exc, tb):
        metrics.child(metrics.IN_FLIGHT, self.rpc).dec()
        if exc is None:
            left = self.context.time_remaining()
            code = "DEADLINE_EXCEEDED" if left is not None and left <= 0 else "OK"
            if self.rpc not in STREAMING_RPCS:  # stream items are recorded one by one
                self.record(code, bytes_in=self.bytes_in, bytes_out=self.bytes_out)
            self.context.set_trailing_metadata(self.trailing())
            return False
        if not isinstance(exc, Exception) or isinstance(exc, grpc.RpcError):
            # GeneratorExit, or the request iterator's RpcError: the client cancelled a stream
            # (or went away); there is nobody to answer
            self.record("CANCELLED", bytes_in=self.bytes_in)
            return False
        failure = classify(exc, self.request_id)
        if failure.internal:
            log.error("unexpected exception", exc_info=(exc_type, exc, tb), extra={"fields": {
                "rpc": self.rpc, "op": self.op, "request_id": self.request_id}})
        self.record(failure.code.name, bytes_in=self.bytes_in)
        # abort raises: the client gets the status, the servicer's frame ends here
        self.context.abort_with_status(to_status(failure, self.trailing()))
