"""Latency against tensor size through the service, one call in flight: Pool (one message)
against PoolChunked (1 MiB chunks) against a bare gRPC echo of the same bytes, in one run.

    .venv/bin/python bench/service_sizes.py                 # 4 KiB .. 256 MiB, a few minutes
    .venv/bin/python bench/service_sizes.py --max-mib 16    # a quicker look

The workload is max pooling 2x2/s2 of a float32 1 x C x 256 x (size/1 KiB) tensor (output: a
quarter of the input).  Paths, each timed end to end in the client (numpy in, numpy out):

  unary          PoolClient.pool with chunk_threshold=None: one PoolRequest, one PoolResponse
  chunked        PoolClient.pool_chunked: header + 1 MiB chunks up, header + 1 MiB chunks down
  echo           the harness's bare echo server (no protobuf, no work): the input's bytes as
                 one raw message up, a quarter of them back -- the transport's floor for one message
  echo_chunked   the same bytes as 1 MiB raw messages on one stream, a quarter back per message

Every size runs every path in turn (rotating the order), so machine drift hits them alike; the
median of the repetitions is reported (fewer repetitions at the big end, to keep the run short).
It prints the threshold from which chunked beats unary at every larger size: the client's
DEFAULT_CHUNK_THRESHOLD comes from this.  JSON and a PNG go to bench/results/service_sizes.*.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from poolclient import PoolClient, Spec
from poolclient.loadtest.echo import REPLY_BYTES_KEY, EchoServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KiB, MiB = 1 << 10, 1 << 20
CHUNK = 1 * MiB
PATHS = ("unary", "chunked", "echo", "echo_chunked")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "poolserve.app", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--metrics-port", "0", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    with PoolClient(target, timeout=2, retries=0) as c:
        for _ in range(600):  # bounded: 60 s
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                c.server_info()
                return proc, target
            except Exception:  # noqa: BLE001 -- not up yet
                time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("server did not start in 60 s")


def reps_for(nbytes: int, scale: float) -> int:
    """Fewer repetitions as calls get slower; at least 3."""
    base = 40 if nbytes <= MiB else 15 if nbytes <= 16 * MiB else 5 if nbytes <= 64 * MiB else 3
    return max(3, int(base * scale))


def sizes(min_kib: int, max_mib: int) -> list[int]:
    out, n = [], min_kib * KiB
    while n <= max_mib * MiB:
        out.append(n)
        n *= 2 if n < MiB else 2
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min-kib", type=int, default=4)
    ap.add_argument("--max-mib", type=int, default=256)
    ap.add_argument("--reps-scale", type=float, default=1.0, help="multiply every size's repetitions")
    ap.add_argument("--server-args", default="", help="extra `poolserve serve` flags, space-separated")
    ap.add_argument("--name", default="service_sizes")
    a = ap.parse_args(argv)

    proc, target = start_server(a.server_args.split())
    echo = EchoServer().start()
    spec = Spec("max", 2, 2)
    rows = []
    load_before = os.getloadavg()
    try:
        unary = PoolClient(target, chunk_threshold=None, retries=0, timeout=300)
        chunked = PoolClient(target, chunk_threshold=0, chunk_bytes=CHUNK, retries=0, timeout=300)
        opts = [("grpc.max_receive_message_length", 512 * MiB), ("grpc.max_send_message_length", 512 * MiB)]
        ech = grpc.insecure_channel(echo.target, options=opts)
        # no (de)serializers: bytes in, bytes out, as the echo server itself
        echo_unary = ech.unary_unary("/poolserve.loadtest.Echo/Unary")
        echo_stream = ech.stream_stream("/poolserve.loadtest.Echo/Stream")

        for nbytes in sizes(a.min_kib, a.max_mib):
            x = np.random.default_rng(0).standard_normal(nbytes // 4, dtype=np.float32)
            x = x.reshape(1, -1, 256, 256) if nbytes >= 256 * KiB else x.reshape(1, 1, -1, 256)
            expected = x.reshape(*x.shape[:2], x.shape[2] // 2, 2, 128, 2).max(axis=(3, 5))
            out_bytes = expected.nbytes
            raw = x.tobytes()  # the echo's input: already bytes, as the harness sends them

            def run_unary():
                return unary.pool(x, spec)

            def run_chunked():
                return chunked.pool_chunked(x, spec)

            def run_echo():
                return echo_unary(raw, metadata=((REPLY_BYTES_KEY, str(out_bytes)),), timeout=300)

            def run_echo_chunked():
                chunks = (raw[i:i + CHUNK] for i in range(0, len(raw), CHUNK))
                per = str(max(1, min(CHUNK, len(raw)) // 4))
                return list(echo_stream(chunks, metadata=((REPLY_BYTES_KEY, per),), timeout=300))

            fns = {"unary": run_unary, "chunked": run_chunked, "echo": run_echo, "echo_chunked": run_echo_chunked}
            for p in ("unary", "chunked"):  # warm-up, and correctness of both paths on this size
                np.testing.assert_array_equal(fns[p](), expected)
            run_echo(), run_echo_chunked()
            n = reps_for(nbytes, a.reps_scale)
            times = {p: [] for p in PATHS}
            for r in range(n):
                for p in PATHS[r % 4:] + PATHS[:r % 4]:
                    t0 = time.perf_counter()
                    fns[p]()
                    times[p].append(time.perf_counter() - t0)
            row = {"bytes": nbytes, "shape": list(x.shape), "reps": n,
                   **{f"{p}_ms": float(np.median(times[p]) * 1e3) for p in PATHS},
                   **{f"{p}_min_ms": float(np.min(times[p]) * 1e3) for p in PATHS}}
            rows.append(row)
            print(f"{nbytes / KiB:>9.0f} KiB  n={n:<3} " + "  ".join(f"{p} {row[p + '_ms']:8.2f}" for p in PATHS)
                  + f"  unary/echo {row['unary_ms'] / row['echo_ms']:.2f}  chunked/unary "
                  f"{row['chunked_ms'] / row['unary_ms']:.2f}", flush=True)
            del x, raw, expected
        unary.close(), chunked.close(), ech.close()
    finally:
        echo.stop()
        proc.terminate()
        proc.wait(30)

    # the smallest size from which chunked is faster than unary at that size and every larger one
    threshold = None
    for i in range(len(rows)):
        if all(r["chunked_ms"] < r["unary_ms"] for r in rows[i:]):
            threshold = rows[i]["bytes"]
            break
    print(f"chunked beats unary from {threshold} bytes on" if threshold else "chunked never beats unary throughout")
    result = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
              "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
              "command": " ".join(["bench/service_sizes.py", *(argv if argv is not None else sys.argv[1:])]),
              "op": "max 2x2/s2 float32", "chunk_bytes": CHUNK, "threshold_bytes": threshold, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{a.name}.png")
    print(f"wrote {RESULTS / (a.name + '.json')} and .png")
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    mib = [r["bytes"] / MiB for r in rows]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 8), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    style = {"unary": ("Pool (one message)", "o-"), "chunked": ("PoolChunked (1 MiB chunks)", "s-"),
             "echo": ("bare echo, one raw message", "^--"), "echo_chunked": ("bare echo, 1 MiB raw chunks", "v--")}
    for p in PATHS:
        label, fmt = style[p]
        ax.plot(mib, [r[f"{p}_ms"] for r in rows], fmt, label=label)
    if result["threshold_bytes"]:
        for a_ in (ax, ax2):
            a_.axvline(result["threshold_bytes"] / MiB, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", yscale="log", ylabel="p50 latency (ms), one call in flight",
           title=f"poolserve: latency vs tensor size ({result['op']}), {result['date_utc']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax2.plot(mib, [r["unary_ms"] / r["echo_ms"] for r in rows], "o-", label="Pool / echo")
    ax2.plot(mib, [r["chunked_ms"] / r["echo_chunked_ms"] for r in rows], "s-", label="PoolChunked / chunked echo")
    ax2.plot(mib, [r["chunked_ms"] / r["unary_ms"] for r in rows], "d-", label="PoolChunked / Pool")
    ax2.axhline(1.0, color="k", lw=0.6)
    ax2.set(xscale="log", xlabel="input tensor size (MiB)", ylabel="ratio")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
