"""A real poolserve server in a subprocess on a free loopback port, for the service tests.

    with ServerProcess("--workers", "2") as srv:
        client = PoolClient(srv.target)

The server runs with POOLSERVE_TEST_HOOKS=1 (see poolserve/services/scope.py): request metadata
can make a call sleep or raise.  Every server is stopped by SIGTERM at the end and must exit 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import re
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(target: str, service: str = "", timeout: float = 1.0) -> str:
    """SERVING / NOT_SERVING / ..., or the gRPC error code's name when the call fails."""
    with grpc.insecure_channel(target) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll every `interval` s until predicate() is truthy (bounded); return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def in_flight(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'^poolserve_in_flight_requests\{rpc="Pool"\} (\S+)$', text, re.M))


class ServerProcess:
    def __init__(self, *args: str, metrics: bool = False, env: dict | None = None, startup_s: float = 60.0):
        self.port = free_port()
        self.metrics_port = free_port() if metrics else 0
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", str(self.metrics_port),
                     "--threads", "4", "--kernel-threads", "1", "--drain-delay", "0", *args]
        self.env = {**os.environ, "POOLSERVE_TEST_HOOKS": "1", **(env or {})}
        self.startup_s = startup_s
        self.log_path = None
        self.proc = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        import tempfile

        fd, self.log_path = tempfile.mkstemp(prefix="poolserve-test-", suffix=".log")
        self._log = os.fdopen(fd, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "poolserve.app", "serve", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if health_status(self.target, timeout=0.5) == "SERVING":
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {self.startup_s}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return Path(self.log_path).read_text()

    def signal(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def children(self) -> set[int]:
        """Worker pids (--workers N): the parent's child processes."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return {int(p) for p in path.read_text().split()} if path.exists() else set()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        code = self.stop()
        os.unlink(self.log_path)
        if exc[0] is None:
            assert code == 0, f"server exited with {code}"


def backend_params():
    """pytest params for every registered backend: those that cannot load here skip, saying why."""
    import pytest

    from poolserve import backends

    out = []
    for name in backends.names():
        try:
            backends.load(name)
            out.append(pytest.param(name, id=name))
        except backends.Unsupported as e:
            out.append(pytest.param(name, id=name, marks=pytest.mark.skip(reason=str(e))))
    return out
