"""`poolserve serve`: the gRPC server, one process or N worker processes sharing a port.

One process: a grpcio server with a thread pool; the C kernels release the GIL, so requests run
in parallel inside them, but decoding, encoding and Python glue are bound by the GIL.  Hence
``--workers N``: the parent forks N processes that each bind the same port with SO_REUSEPORT
(the pattern of grpc's multiprocessing example; the kernel spreads *connections*, not calls,
across them), supervises them, and starts a new one when one dies.  The parent creates no gRPC
object at all: grpc does not survive a fork of a process that has one.

Shutdown (SIGTERM or SIGINT): the health service turns NOT_SERVING, the server keeps answering
for ``--drain-delay`` seconds so probes and load balancers see it, then refuses new calls and
gives in-flight ones up to ``--grace`` seconds; the process exits 0.

Every flag can also be set by an environment variable, POOLSERVE_<FLAG> (e.g. POOLSERVE_PORT),
for containers; a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from . import logs

# The server extra's packages, checked without importing them (prometheus_client must not be
# imported before PROMETHEUS_MULTIPROC_DIR is decided): `poolserve serve` is listed as
# unavailable, saying what to install, rather than failing after start-up.
for _module in ("grpc_health", "grpc_reflection", "grpc_status", "prometheus_client"):
    if importlib.util.find_spec(_module) is None:
        raise ImportError(f"{_module} is not installed: pip install 'poolserve[server]'")

log = logging.getLogger("poolserve.server")

MiB = 1 << 20
# glibc M_TOP_PAD the server sets (--malloc-top-pad); the benchmarks set the same (tune_malloc)
MALLOC_TOP_PAD = 256 * MiB
# glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); see tune_malloc
MALLOC_MMAP_THRESHOLD_MAX = 32 * MiB
# a 256 MiB tensor plus room for the rest of the message
DEFAULT_MAX_MESSAGE_BYTES = 256 * MiB + MiB
SERVICE_NAME = "poolserve.v1.Pooling"
EXIT_CONFIG = 2  # a worker that cannot start with these flags: the parent gives up, no restarts
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # each process drains and exits 0 on either


class StopSignal:
    """SIGTERM or SIGINT received, for a main loop that polls: wait(timeout) -> stop now?

    The handler takes no lock.  Python runs a handler in the main thread between two bytecodes,
    wherever that thread is -- also inside threading.Event.wait, holding the event's own lock --
    so a handler calling Event.set() can wait on itself forever (the signal module's docs warn of
    it).  The supervising parent hung so when stopped right after it restarted a worker.  Here
    the handler sets a flag and writes a byte to a pipe that wait() selects on: a signal that
    lands just before the select still ends it at once.
    """

    def __init__(self) -> None:
        self.received = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, *_) -> None:
        self.received = True
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:  # the pipe is full: it is readable already
            pass

    def set(self) -> None:
        """Stop without a signal (the parent, when a worker cannot start)."""
        self._handle()

    def wait(self, timeout: float) -> bool:
        if not self.received:
            select.select([self._r], [], [], timeout)  # after a handler, retried with what is left
        return self.received


def _env(name: str, default, kind=str):
    raw = os.environ.get("POOLSERVE_" + name.upper().replace("-", "_"))
    if raw is None:
        return default
    return kind(raw)


def _flag(parser, name: str, default, kind=str, help_text="", **kw):
    env = "POOLSERVE_" + name.upper().replace("-", "_")
    parser.add_argument(f"--{name}", type=kind, default=_env(name, default, kind),
                        help=f"{help_text} [env {env}; default %(default)s]", **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "host", "127.0.0.1", help_text="address to listen on (0.0.0.0 or [::] for every interface)")
    _flag(parser, "port", 50051, int, "gRPC port (0: any free port, one worker only)")
    _flag(parser, "tls-cert", None, help_text="PEM certificate chain: serve TLS (with --tls-key)")
    _flag(parser, "tls-key", None, help_text="PEM private key of --tls-cert")
    _flag(parser, "tls-client-ca", None,
          help_text="PEM CA certificates: mutual TLS, clients must present a certificate they signed")
    _flag(parser, "auth-token-file", None,
          help_text="file of bearer tokens, one a line: calls must send 'authorization: Bearer <token>' "
                    "(health stays open)")
    _flag(parser, "workers", 1, int, "worker processes sharing the port (SO_REUSEPORT), supervised")
    _flag(parser, "threads", 8, int, "gRPC handler threads per worker")
    _flag(parser, "kernel-threads", 0, int, "threads one request may use in a backend (0: CPUs / workers)")
    _flag(parser, "max-message-bytes", DEFAULT_MAX_MESSAGE_BYTES, int,
          "largest request or response message, bytes (larger: RESOURCE_EXHAUSTED)")
    _flag(parser, "max-elements", 1 << 28, int, "most elements in one tensor (more: RESOURCE_EXHAUSTED)")
    _flag(parser, "max-concurrent-rpcs", 64, int,
          "calls served at once per worker; more get RESOURCE_EXHAUSTED (0: no limit, calls queue)")
    _flag(parser, "max-connection-age", 0.0, float,
          "seconds before the server asks a client to reconnect (GOAWAY), so clients re-resolve and "
          "reach new pods behind a headless Service (0: never)")
    _flag(parser, "default-backend", "auto", help_text="backend for requests that name none: auto, c or onnx")
    _flag(parser, "backend-policy", "", str,
          "auto's table (JSON from bench/backend_policy.py); default: the one shipped in the package")
    _flag(parser, "model-repository", None,
          help_text="JSON or YAML file of Open Inference Protocol models to serve beside the defaults "
                    "(see poolserve/models.py)")
    _flag(parser, "metrics-port", 9464, int, "Prometheus metrics HTTP port (0: no metrics endpoint)")
    _flag(parser, "metrics-host", None, help_text="address of the metrics endpoint (default: --host)")
    _flag(parser, "grace", 10.0, float, "seconds in-flight calls get to finish at shutdown")
    _flag(parser, "drain-delay", 1.0, float,
          "seconds between NOT_SERVING and refusing new calls at shutdown (probes see the change)")
    _flag(parser, "malloc-top-pad", MALLOC_TOP_PAD, int,
          "glibc M_TOP_PAD, bytes, with the mmap threshold at 32 MiB: keep freed heap for the next "
          "request's buffers (0: glibc's default)")
    _flag(parser, "log-level", "info", help_text="debug (one line per request), info (periodic summary), warning")
    _flag(parser, "log-format", "text", help_text="text (key=value) or json", choices=["text", "json"])
    _flag(parser, "log-interval", 60.0, float, "seconds between INFO summary lines")


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level, args.log_format)
    if args.workers < 1:
        log.error("bad flag", extra={"fields": {"workers": args.workers}})
        return EXIT_CONFIG
    if args.kernel_threads <= 0:
        args.kernel_threads = max(1, (os.cpu_count() or 1) // args.workers)
    if bool(args.tls_cert) != bool(args.tls_key):
        log.error("--tls-cert and --tls-key go together")
        return EXIT_CONFIG
    if args.tls_client_ca and not args.tls_cert:
        log.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        return EXIT_CONFIG
    if args.workers == 1:
        return serve_worker(args, index=0, reuse_port=False)
    return supervise(args)


# -- one worker process ----------------------------------------------------------------------------
def serve_worker(args: argparse.Namespace, index: int, reuse_port: bool) -> int:
    stop = StopSignal()
    # a worker is forked with these blocked (see supervise): one sent since is delivered now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    tune_malloc(args.malloc_top_pad)
    tune_openmp()
    # grpc and the backends are imported here, after any fork (see the module docstring)
    import grpc
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from poolclient._proto.inference.grpc_service_pb2_grpc import \
        add_GRPCInferenceServiceServicer_to_server as add_inference_servicer

    from . import guard, security
    from .dispatch import Dispatcher
    from .policy import PolicyTable
    from .models import RepositoryError, load_repository
    from .services.inference import SERVICE_NAME as INFERENCE_SERVICE_NAME
    from .services.inference import InferenceServicer
    from .services.pooling import PoolingServicer, ServerFacts, add_pooling_servicer
    from .shm import SharedMemoryRegistry
    from .services.scope import STATS

    try:
        dispatcher = Dispatcher(default_backend=args.default_backend, kernel_threads=args.kernel_threads,
                                max_elements=args.max_elements, policy=PolicyTable.load(args.backend_policy),
                                max_result_bytes=args.max_message_bytes - 64 * 1024)  # room for the rest
    except ValueError as e:
        log.error("cannot start", extra={"fields": {"error": str(e)}})
        return EXIT_CONFIG
    try:
        # read before binding: a bad certificate or token file stops start-up, never a call
        creds = security.server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
        # the token check first: an unauthenticated caller's bytes are never parsed
        interceptors = ([security.BearerTokenInterceptor(security.read_tokens(args.auth_token_file))]
                        if args.auth_token_file else [])
        interceptors.append(guard.MalformedRequestInterceptor())
    except security.ConfigError as e:
        log.error("cannot start", extra={"fields": {"error": str(e)}})
        return EXIT_CONFIG
    try:
        models = load_repository(args.model_repository)
        for m in models.values():
            if m.backend and m.backend not in dispatcher.slots:
                raise RepositoryError(f"model {m.name!r}: unknown backend {m.backend!r}; "
                                      f"known: {', '.join(dispatcher.slots)}")
    except RepositoryError as e:
        log.error("cannot start", extra={"fields": {"error": str(e)}})
        return EXIT_CONFIG
    for m in models.values():  # served anyway: its requests answer FAILED_PRECONDITION, saying why
        if m.backend and not dispatcher.slots[m.backend].available:
            log.warning("model's backend is not available", extra={"fields": {
                "model": m.name, "backend": m.backend, "reason": dispatcher.slots[m.backend].reason}})
    options = [
        ("grpc.max_receive_message_length", args.max_message_bytes),
        ("grpc.max_send_message_length", args.max_message_bytes),
        # on by default in grpcio: a second server would bind the port silently; share it only on purpose
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    if args.max_connection_age > 0:
        options += [("grpc.max_connection_age_ms", int(args.max_connection_age * 1000)),
                    # calls in flight on an aged connection get as long as a shutdown gives them
                    ("grpc.max_connection_age_grace_ms", int(args.grace * 1000))]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads, thread_name_prefix="rpc"),
                         options=options, interceptors=interceptors,
                         maximum_concurrent_rpcs=args.max_concurrent_rpcs or None)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_names = ("", SERVICE_NAME, INFERENCE_SERVICE_NAME)
    for name in health_names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)  # until ready
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    facts = ServerFacts(max_message_bytes=args.max_message_bytes, max_concurrent_rpcs=args.max_concurrent_rpcs,
                        worker_threads=args.threads, worker_index=index, workers=args.workers)
    add_pooling_servicer(PoolingServicer(dispatcher, facts), server)
    # The Open Inference Protocol on the same port, over the same dispatcher
    ready = threading.Event()  # its ServerReady: set while serving, cleared when draining
    shm = SharedMemoryRegistry()
    add_inference_servicer(InferenceServicer(dispatcher, models, shm, ready=ready.is_set), server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    address = f"{args.host}:{args.port}"
    try:
        if creds is not None:
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except (RuntimeError, OSError) as e:
        log.error("cannot listen", extra={"fields": {"address": address, "error": str(e)}})
        return EXIT_CONFIG
    if args.workers == 1 and args.metrics_port and not _serve_metrics(args):
        return EXIT_CONFIG
    server.start()
    for name in health_names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    ready.set()
    backends = ",".join(b["name"] for b in dispatcher.describe()["backends"] if b["available"])
    log.info("serving", extra={"fields": {
        "address": f"{args.host}:{port}", "pid": os.getpid(), "worker": index, "tls": ("mutual" if args.tls_client_ca else bool(args.tls_cert)),
        "auth": bool(args.auth_token_file),
        "backends": backends, "default_backend": args.default_backend, "threads": args.threads,
        "kernel_threads": args.kernel_threads, "oip_models": len(models)}})

    next_summary = time.monotonic() + args.log_interval
    while not stop.wait(timeout=0.5):
        if time.monotonic() >= next_summary:
            next_summary += args.log_interval
            summary = STATS.take()
            if summary["requests"]:
                log.info("summary", extra={"fields": {"worker": index, **summary}})

    log.info("draining", extra={"fields": {"pid": os.getpid(), "drain_delay_s": args.drain_delay,
                                           "grace_s": args.grace}})
    health_servicer.enter_graceful_shutdown()  # every service NOT_SERVING, and it stays so
    ready.clear()
    time.sleep(args.drain_delay)
    server.stop(args.grace).wait()
    shm.close()
    log.info("stopped", extra={"fields": {"pid": os.getpid(), **STATS.take()}})
    return 0


def _serve_metrics(args) -> bool:
    from . import metrics

    host = args.metrics_host or args.host
    try:
        metrics.serve(args.metrics_port, host)
    except OSError as e:
        log.error("cannot serve metrics", extra={"fields": {"address": f"{host}:{args.metrics_port}", "error": str(e)}})
        return False
    return True


# -- the supervising parent ------------------------------------------------------------------------
def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind host:port with SO_REUSEPORT and keep it: picks the port for port 0, and holds it
    for the workers (who bind with the same option) without ever accepting on it."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    return sock


def supervise(args: argparse.Namespace) -> int:
    import multiprocessing

    try:
        reserved = _reserve_port(args.host, args.port)
    except OSError as e:
        log.error("cannot listen", extra={"fields": {"address": f"{args.host}:{args.port}", "error": str(e)}})
        return EXIT_CONFIG
    args.port = reserved.getsockname()[1]
    if args.metrics_port:
        # before prometheus_client is imported anywhere: workers write files, the parent sums them
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="poolserve-metrics-")
    ctx = multiprocessing.get_context("fork")

    def start(index: int):
        # The stop signals stay blocked from the fork until the worker has its own handlers: in
        # between, the child runs the parent's handler (a copy of its flag, that nobody reads),
        # and a SIGTERM sent then was lost -- the worker served on until _stop_workers killed it
        # and the server exited 1 (a shutdown right after a worker restart).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            p = ctx.Process(target=_worker_main, args=(args, index), name=f"poolserve-worker-{index}", daemon=False)
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log.info("worker started", extra={"fields": {"worker": index, "pid": p.pid}})
        return p, time.monotonic()

    procs = {i: start(i) for i in range(args.workers)}
    if args.metrics_port and not _serve_metrics(args):
        _stop_workers(args, procs)
        return EXIT_CONFIG
    stop = StopSignal()
    log.info("supervising", extra={"fields": {"pid": os.getpid(), "workers": args.workers,
                                              "address": f"{args.host}:{args.port}"}})
    try:
        status = _supervise_loop(args, procs, start, stop)
    finally:  # whatever happened here, the workers are stopped and waited for
        stopped = _stop_workers(args, procs)
        reserved.close()
        if args.metrics_port:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    status = status or stopped
    log.info("stopped", extra={"fields": {"pid": os.getpid(), "exit": status}})
    return status


def _supervise_loop(args, procs, start, stop) -> int:
    backoff = {i: 0.0 for i in procs}
    restart_at: dict[int, float] = {}
    status = 0
    while not stop.wait(timeout=0.2):
        for i, (p, started) in list(procs.items()):
            if p is None:
                if time.monotonic() >= restart_at[i]:
                    procs[i] = start(i)
                continue
            if p.is_alive():
                continue
            p.join()
            if args.metrics_port:
                from . import metrics

                metrics.worker_died(p.pid)
            if p.exitcode == EXIT_CONFIG:
                log.error("worker cannot start with these flags; stopping", extra={"fields": {"worker": i}})
                status = EXIT_CONFIG
                stop.set()
                break
            # a worker that dies right after starting is restarted with a growing delay (crash loop)
            quick = time.monotonic() - started < 5.0
            backoff[i] = min(30.0, max(0.5, backoff[i] * 2)) if quick else 0.0
            log.warning("worker died; restarting", extra={"fields": {
                "worker": i, "pid": p.pid, "exitcode": p.exitcode, "restart_in_s": backoff[i]}})
            procs[i], restart_at[i] = (None, 0.0), time.monotonic() + backoff[i]
    return status


def _stop_workers(args, procs) -> int:
    """SIGTERM every live worker and wait for each to drain; non-zero if one failed to."""
    status = 0
    alive = [p for p, _ in procs.values() if p is not None and p.is_alive()]
    for p in alive:
        os.kill(p.pid, signal.SIGTERM)
    for p in alive:
        p.join(args.drain_delay + args.grace + 5.0)
        if p.is_alive():
            log.error("worker did not stop; killing", extra={"fields": {"pid": p.pid}})
            p.kill()
            p.join()
            status = status or 1
        elif p.exitcode != 0:
            status = status or 1
    return status


def _worker_main(args: argparse.Namespace, index: int) -> None:
    _exit_with_parent()
    logs.setup(args.log_level, args.log_format)
    sys.exit(serve_worker(args, index=index, reuse_port=True))


def _exit_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies (even by SIGKILL), so that no orphan
    keeps serving on the port unsupervised."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() == 1:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)  # pending until serve_worker unblocks it
    except (OSError, AttributeError):
        pass  # not Linux: the parent still stops its workers on a normal shutdown


# libgomp's spin count (pause loops, ~10-30 us here) for a kernel thread at a region's edge
GOMP_SPINCOUNT = "1000"


def tune_openmp() -> None:
    """OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=1000, unless the environment says otherwise;
    call it before the kernels load (libgomp reads both when it starts).

    libgomp's default lets a thread that reaches the end of a parallel region spin 300000 times,
    then sleep, waiting for the others.  On a machine whose cores are shared with the gRPC
    threads, the client and other processes, the second kernel thread is often not running, and
    the call waits for the scheduler instead: max pool 2x2 of 1x64x56x56 float32 with 2 kernel
    threads, p50 8.0 ms with the default policy against 1.27 ms passive (1 thread: 1.25 ms),
    measured on this 2-vCPU machine at load average ~5 (README, "Service performance").

    Passive alone spins zero times, so every two-thread call sleeps twice: the worker, woken by a
    futex, and the caller, waiting at the join for it.  On these VMs a sleeping vCPU wakes slowly:
    an empty two-thread region cost 146-180 us on 2026-12-07 (40 us on 11-26), more than many
    whole calls.  A short spin (GOMP_SPINCOUNT overrides the policy's zero) keeps the caller awake
    at the join and the worker awake between calls that follow each other: the same region cost
    3.4 us with 10-30 us between calls, and 36-65 us after 100-1000 us idle (the commit that set
    it has the table); a worker spins for ~10-30 us after a region, not the default's
    milliseconds.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)


def tune_malloc(top_pad: int) -> None:
    """mallopt(M_TOP_PAD) and mallopt(M_MMAP_THRESHOLD): keep tensor buffers in the process.

    Every request allocates and frees buffers of its tensors' size (protobuf bytes, numpy
    outputs).  By default glibc returns large blocks to the kernel at once (mmap/munmap and heap
    trimming), so the next request page-faults all of it in again.  A large top pad keeps the
    heap's freed memory in the process.  Measured on this 2-core machine (two servers, calls
    interleaved, max pool 2x2, client-side p50): 3 MiB input 15.7 -> 12.7 ms and 23.4 -> 19.3 ms;
    16 MiB 223 -> 160 ms and 261 -> 202 ms (DESIGN.md, "Transport facts").

    Setting a malloc parameter by mallopt also freezes glibc's mmap threshold where it stands
    (the environment variable does not).  The server calls this after its imports, when glibc
    had already raised the threshold; a process that calls it first (the kernel benchmark)
    froze it at 128 KiB, and every buffer over that went to a fresh mmap and a page fault per
    4 KiB: 2.2-2.7 ms more per 3 MiB pooling output (vgg-pool1 max through the C backend,
    2026-11-28: 0.24-0.36 ms -> 2.3-2.5 ms).  So the threshold is set explicitly, to 32 MiB,
    the most glibc takes; larger buffers are mmapped as before.  The server's p50 did not move
    (1x64x224x224 max 2x2: 16.1-16.9 ms before and after).  An explicit MALLOC_TOP_PAD_ in the
    environment wins.
    """
    if top_pad <= 0 or "MALLOC_TOP_PAD_" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        M_TOP_PAD, M_MMAP_THRESHOLD = -2, -3
        libc = ctypes.CDLL(None)
        libc.mallopt(M_TOP_PAD, int(top_pad))
        libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_MAX)
    except (OSError, AttributeError):
        pass  # not glibc
