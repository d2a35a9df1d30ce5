"""Prometheus metrics, served as text on their own HTTP port (prometheus-client).

With ``--workers N`` every worker process writes its samples to files in
PROMETHEUS_MULTIPROC_DIR and the supervising parent serves the sum; that variable must be set
before prometheus_client is first imported, so the server imports this module only after it has
decided (see server.py).
"""

from __future__ import annotations

import functools
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LABELS = ["rpc", "op", "backend"]

REQUESTS = Counter("poolserve_requests", "Finished requests by RPC, pooling op, backend and gRPC status code",
                   _LABELS + ["code"])
LATENCY = Histogram("poolserve_request_duration_seconds", "Time from receiving a request to its answer", _LABELS,
                    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                             0.5, 1.0, 2.5, 5.0, 10.0))
BYTES_IN = Counter("poolserve_received_bytes", "Tensor bytes received", ["rpc"])
BYTES_OUT = Counter("poolserve_sent_bytes", "Tensor bytes sent", ["rpc"])
IN_FLIGHT = Gauge("poolserve_in_flight_requests", "Requests being served now", ["rpc"],
                  multiprocess_mode="livesum")


@functools.lru_cache(maxsize=4096)
def child(metric, *labels):
    """``metric.labels(*labels)``, remembered: labels() validates and locks on every call (~2.5 us,
    six times per request); the children it returns live as long as the metric anyway.  The
    label values are few (rpc x op x backend x code), so the cache never evicts in practice."""
    return metric.labels(*labels)


def serve(port: int, host: str) -> None:
    """Start the metrics HTTP server on a daemon thread (the sum over workers if multiprocess)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(port, addr=host, registry=registry)
    else:
        start_http_server(port, addr=host)


def worker_died(pid: int) -> None:
    """Drop a dead worker's live gauges from the multiprocess sum."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
