"""Closed-loop load on the Open Inference Protocol, the way perf_analyzer measures it.

``--concurrency N`` keeps N requests in flight (N threads, each with its own channel and a
synchronous client, as perf_analyzer's concurrency mode does) for ``--seconds`` after a warm-up,
and reports throughput and latency percentiles.  In the same run, the same load goes through:

  oip       tritonclient.grpc, raw_input_contents / raw_output_contents
  oip_shm   tritonclient.grpc with the input and output in system shared memory
  native    poolclient (poolserve.v1.Pool) with the same tensor and pooling
  echo      a bare gRPC server that answers the same bytes with an output-sized reply and does
            no work: the transport's own floor on this machine, now

Start a server first (``make serve``) or let the harness start one on a free port:

    .venv/bin/python bench/oip_load.py --shape 1,64,56,56 --concurrency 1 4
    .venv/bin/python bench/oip_load.py --target 127.0.0.1:50051 --modes oip

Results go to bench/results/oip_load.json (and stdout).  Shared 2-core machines drift: compare
rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODEL = "maxpool_2x2_s2"
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# -- the bare echo server (a subprocess: `oip_load.py --echo-server PORT --reply-bytes N`) ---------
def echo_server(port: int, reply_bytes: int) -> None:
    import grpc

    reply = b"\0" * reply_bytes

    def handle(request: bytes, context) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None, response_serializer=None)})
    server = grpc.server(futures.ThreadPoolExecutor(8), options=[
        ("grpc.max_receive_message_length", 512 * MiB), ("grpc.max_send_message_length", 512 * MiB),
        ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


# -- one worker's call, per mode -------------------------------------------------------------------
def make_call(mode: str, target: str, x: np.ndarray, echo_target: str):
    """A zero-argument function doing one request, and a cleanup function."""
    import grpc

    if mode in ("oip", "oip_shm"):
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(target)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        out = tc.InferRequestedOutput("output")
        if mode == "oip":
            inp.set_data_from_numpy(x)

            def call():
                client.infer(MODEL, [inp], outputs=[out])

            return call, client.close
        import tritonclient.utils.shared_memory as shm

        tag = uuid.uuid4().hex[:8]
        out_bytes = x.nbytes // 4
        h_in = shm.create_shared_memory_region(f"in_{tag}", f"/bench_in_{tag}", x.nbytes)
        h_out = shm.create_shared_memory_region(f"out_{tag}", f"/bench_out_{tag}", out_bytes)
        shm.set_shared_memory_region(h_in, [x])
        client.register_system_shared_memory(f"in_{tag}", f"/bench_in_{tag}", x.nbytes)
        client.register_system_shared_memory(f"out_{tag}", f"/bench_out_{tag}", out_bytes)
        inp.set_shared_memory(f"in_{tag}", x.nbytes)
        out.set_shared_memory(f"out_{tag}", out_bytes)

        def call():
            client.infer(MODEL, [inp], outputs=[out])

        def close():
            client.unregister_system_shared_memory(f"in_{tag}")
            client.unregister_system_shared_memory(f"out_{tag}")
            shm.destroy_shared_memory_region(h_in)
            shm.destroy_shared_memory_region(h_out)
            client.close()

        return call, close
    if mode == "native":
        import poolclient

        client = poolclient.PoolClient(target)

        def call():
            client.max_pool(x, 2)

        return call, client.close
    if mode == "echo":
        channel = grpc.insecure_channel(echo_target, options=[
            ("grpc.max_receive_message_length", 512 * MiB), ("grpc.max_send_message_length", 512 * MiB)])
        rpc = channel.unary_unary("/bench.Echo/Call")
        payload = x.tobytes()

        def call():
            rpc(payload)

        return call, channel.close
    raise ValueError(mode)


def run_load(mode: str, target: str, echo_target: str, x: np.ndarray, concurrency: int,
             seconds: float, warmup: float) -> dict:
    calls = [make_call(mode, target, x, echo_target) for _ in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start = threading.Barrier(concurrency + 1)
    t_measure = [0.0, 0.0]

    def worker(i: int):
        call = calls[i][0]
        start.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= t_measure[1]:
                return
            try:
                call()
            except Exception:  # noqa: BLE001 -- counted and reported, never hidden
                errors[i] += 1
                continue
            t1 = time.perf_counter()
            if t0 >= t_measure[0] and t1 <= t_measure[1]:
                latencies[i].append(t1 - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    t_measure[0], t_measure[1] = now + warmup, now + warmup + seconds
    start.wait()
    for t in threads:
        t.join()
    for _, close in calls:
        close()
    lat = np.array([v for per in latencies for v in per]) * 1e3
    return {"mode": mode, "concurrency": concurrency, "requests": int(lat.size), "errors": sum(errors),
            "throughput_per_s": round(lat.size / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
            "p90_ms": round(float(np.percentile(lat, 90)), 3) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", help="a running server (default: start one on a free port)")
    ap.add_argument("--shape", default="1,64,56,56")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--modes", nargs="+", default=["oip", "oip_shm", "native", "echo"],
                    choices=["oip", "oip_shm", "native", "echo"])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--server-args", default="", help="extra flags for the server the harness starts")
    ap.add_argument("--out", type=Path, default=RESULTS / "oip_load.json")
    ap.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--reply-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        echo_server(args.echo_server, args.reply_bytes)
        return 0

    shape = tuple(int(d) for d in args.shape.split(","))
    load_before = os.getloadavg()  # other work on the machine: context for every figure
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    procs = []
    try:
        target = args.target
        if not target:
            port = free_port()
            cmd = [sys.executable, "-m", "poolserve.app", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--metrics-port", "0", "--log-level", "warning", *args.server_args.split()]
            procs.append(subprocess.Popen(cmd, cwd=ROOT))
            wait_port(port)
            target = f"127.0.0.1:{port}"
        echo_target = ""
        if "echo" in args.modes:
            eport = free_port()
            procs.append(subprocess.Popen([sys.executable, __file__, "--echo-server", str(eport),
                                           "--reply-bytes", str(x.nbytes // 4)]))
            wait_port(eport)
            echo_target = f"127.0.0.1:{eport}"
        rows = []
        for c in args.concurrency:
            for mode in args.modes:
                row = run_load(mode, target, echo_target, x, c, args.seconds, args.warmup)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    doc = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
           "cpus": os.cpu_count(), "model": MODEL, "shape": list(shape), "dtype": "float32",
           "seconds": args.seconds, "warmup": args.warmup,
           "loadavg_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
