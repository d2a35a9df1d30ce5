"""The transport baseline: a bare gRPC echo server that does no pooling work.

`--baseline echo` sends the service's exact request bytes, on the same method path, to this
server, so the difference between the two runs is the service's own cost (decode, validate,
pool, encode) over what gRPC, HTTP/2, loopback and the Python client cost anyway.

It answers *any* method with generic handlers and no (de)serializers: requests arrive as raw
bytes, the reply is raw bytes.  By default the reply is the request itself; a client that sets
the metadata key ``x-echo-reply-bytes`` gets that many zero bytes instead (from a cache, so no
per-request work), which lets the baseline return as many bytes as the service would.

It is also the test double for the harness: ``--stall-every/--stall-for`` freeze it
periodically (every call that arrives inside a stall window waits until the window ends, like a
GC pause or a stop-the-world lock), ``--fail-every/--fail-code`` make every N-th call fail with
a chosen status, ``--wrong-every`` corrupts every N-th reply.

Run it as a process of its own (``python -m poolclient.loadtest.echo --port 0`` prints
``PORT <n>`` once it serves), or use :class:`EchoServer` which does exactly that: keeping gRPC
servers out of the harness's own process is what lets the harness fork its load workers.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

REPLY_BYTES_KEY = "x-echo-reply-bytes"
# Methods answered as bidirectional streams (one reply per request, in order); every other
# method is unary.  The list holds the streaming RPCs of the APIs the harness drives.
STREAM_METHODS = frozenset({
    "/poolserve.v1.Pooling/PoolStream",
    "/inference.GRPCInferenceService/ModelStreamInfer",
    "/poolserve.loadtest.Echo/Stream",
})
MAX_MESSAGE_BYTES = 512 << 20


class _Behaviour:
    """Shared by all handler threads: call counter, stall schedule, failure injection."""

    def __init__(self, stall_every: float, stall_for: float, fail_every: int, fail_code: str, wrong_every: int):
        self.start = time.monotonic()
        self.stall_every, self.stall_for = stall_every, stall_for
        self.fail_every, self.wrong_every = fail_every, wrong_every
        self.fail_code = fail_code
        self._count = itertools.count(1)  # next() on itertools.count is atomic under the GIL
        self._zeros: dict[int, bytes] = {}

    def before_reply(self, context) -> int:
        """Stall if inside a stall window, fail if this call is chosen to; return the call's number."""
        n = next(self._count)
        if self.stall_every > 0:
            # The stall window is the last `stall_for` seconds of every `stall_every` period,
            # counted from server start: every call arriving inside it waits until it ends.
            phase = (time.monotonic() - self.start) % self.stall_every
            wait = phase - (self.stall_every - self.stall_for)
            if wait > 0:
                time.sleep(self.stall_for - wait)
        if self.fail_every and n % self.fail_every == 0:
            import grpc

            context.abort(getattr(grpc.StatusCode, self.fail_code), f"echo: injected failure on call {n}")
        return n

    def reply(self, request: bytes, n: int, reply_bytes: int | None) -> bytes:
        if reply_bytes is None:
            out = request
        else:
            out = self._zeros.get(reply_bytes)
            if out is None:
                out = self._zeros.setdefault(reply_bytes, bytes(reply_bytes))
        if self.wrong_every and n % self.wrong_every == 0 and out:
            out = bytes([out[0] ^ 0xFF]) + out[1:]
        return out


def _reply_bytes(context) -> int | None:
    for key, value in context.invocation_metadata():
        if key == REPLY_BYTES_KEY:
            return int(value)
    return None


def build_server(host: str = "127.0.0.1", port: int = 0, threads: int = 8, **behaviour):
    """A started-not grpc.server and its bound port."""
    import grpc

    b = _Behaviour(**behaviour)

    def unary(request: bytes, context) -> bytes:
        n = b.before_reply(context)
        return b.reply(request, n, _reply_bytes(context))

    def stream(requests, context):
        size = _reply_bytes(context)
        for request in requests:
            n = b.before_reply(context)
            yield b.reply(request, n, size)

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            # no request_deserializer / response_serializer: bytes in, bytes out
            if details.method in STREAM_METHODS:
                return grpc.stream_stream_rpc_method_handler(stream)
            return grpc.unary_unary_rpc_method_handler(unary)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads),
        handlers=[Handler()],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)],  # never share a port by accident
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"echo: cannot bind {host}:{port}")
    return server, bound


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m poolclient.loadtest.echo", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed as 'PORT <n>')")
    p.add_argument("--threads", type=int, default=8, help="handler threads (the service's default is 8)")
    p.add_argument("--stall-every", type=float, default=0.0, help="seconds between stalls (0: never)")
    p.add_argument("--stall-for", type=float, default=0.2, help="length of each stall, seconds")
    p.add_argument("--fail-every", type=int, default=0, help="fail every N-th call (0: never)")
    p.add_argument("--fail-code", default="RESOURCE_EXHAUSTED", help="gRPC status name of injected failures")
    p.add_argument("--wrong-every", type=int, default=0, help="corrupt every N-th reply (0: never)")
    a = p.parse_args(argv)
    if a.stall_every and not 0 < a.stall_for < a.stall_every:
        p.error("--stall-for must be > 0 and shorter than --stall-every")
    server, port = build_server(a.host, a.port, a.threads, stall_every=a.stall_every, stall_for=a.stall_for,
                                fail_every=a.fail_every, fail_code=a.fail_code, wrong_every=a.wrong_every)
    server.start()
    # The handler takes no lock: Python runs it wherever the main thread is, and an Event.set()
    # there can wait on the event's lock held by the very code it interrupted (a hang).
    done: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: done.append(signum))
    print(f"PORT {port}", flush=True)
    while not done:
        time.sleep(0.05)
    server.stop(grace=1.0).wait()
    return 0


class EchoServer:
    """Run the echo server in a child process for the duration of a ``with`` block.

    >>> with EchoServer(threads=8) as echo:
    ...     run_load(..., target=echo.target)
    """

    def __init__(self, host: str = "127.0.0.1", threads: int = 8, stall_every: float = 0.0, stall_for: float = 0.2,
                 fail_every: int = 0, fail_code: str = "RESOURCE_EXHAUSTED", wrong_every: int = 0,
                 start_timeout: float = 30.0):
        self.host = host
        self.args = ["--host", host, "--port", "0", "--threads", str(threads),
                     "--stall-every", str(stall_every), "--stall-for", str(stall_for),
                     "--fail-every", str(fail_every), "--fail-code", fail_code, "--wrong-every", str(wrong_every)]
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "EchoServer":
        # -c rather than -m: `-m poolclient.loadtest.echo` would import the module twice (once as
        # part of the package, once as __main__), which runpy warns about
        code = "import sys; from poolclient.loadtest.echo import main; sys.exit(main(sys.argv[1:]))"
        self.proc = subprocess.Popen([sys.executable, "-c", code, *self.args],
                                     stdout=subprocess.PIPE, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.start_timeout)
        if not line or not line[0].startswith("PORT "):
            self.stop()
            raise RuntimeError(f"echo server did not start within {self.start_timeout:g} s")
        self.port = int(line[0].split()[1])
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> "EchoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
