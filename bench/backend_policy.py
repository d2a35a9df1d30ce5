"""Measure every available backend on each key of the `auto` policy and write its table.

    .venv/bin/python bench/backend_policy.py            # -> server/poolserve/backend_policy.json
                                                         #    and bench/results/backend_policy.json

Keys: mode (max, avg, lp) x window ("2x2/s2", "s1" = 3x3/s1/p1, "other" = 3x3/s2/p1, "global") x dtype (float32,
float16, float64; int8 and uint8 for max) x input-size bucket (<64 KiB, <1 MiB, <16 MiB,
larger; timed at 16 KiB, 256 KiB, 4 MiB and 32 MiB).  Each backend runs in this process with the
server's default thread count (all CPUs), on the same array, alternating backends repetition by
repetition so that machine drift hits both alike; the median wins.  Before timing, the backends'
outputs are compared (max exactly, avg/lp to a summation-order tolerance): a key where they
disagree is an error, not a table entry.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from poolserve.server import MALLOC_TOP_PAD, tune_malloc, tune_openmp

tune_openmp()  # as the server does: time what the server runs.  Before the kernels load.

from poolserve import backends  # noqa: E402
from poolserve.policy import DEFAULT_BUCKET_BOUNDS, DEFAULT_PATH  # noqa: E402
from poolserve.spec import DTYPES_BY_MODE, PoolSpec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KiB, MiB = 1 << 10, 1 << 20
SIZES = (16 * KiB, 256 * KiB, 4 * MiB, 32 * MiB)  # one per bucket of DEFAULT_BUCKET_BOUNDS
WINDOW_SPECS = {
    "2x2/s2": dict(kernel_shape=(2, 2), strides=(2, 2)),
    "s1": dict(kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1)),
    "other": dict(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    "global": dict(global_pool=True),
}


def instances(threads: int) -> dict:
    out = {}
    for name in backends.names():
        try:
            cls = backends.load(name)
        except backends.Unsupported as e:
            print(f"skipping {name}: {e}", file=sys.stderr)
            continue
        out[name] = cls(threads=threads) if name == "c" else cls(threads=threads, providers=["CPUExecutionProvider"])
    return out


def tensor(nbytes: int, dtype: str) -> np.ndarray:
    item = np.dtype(dtype).itemsize
    n = max(1, nbytes // item)
    c = max(1, n // (64 * 64))  # 64x64 planes: a realistic feature-map size
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal((1, c, 64, 64)).astype(dtype)
    return rng.integers(-100 if dtype == "int8" else 0, 100, (1, c, 64, 64)).astype(dtype)


def agree(mode: str, dtype: str, a: np.ndarray, b: np.ndarray) -> bool:
    if mode == "max":
        return np.array_equal(a, b, equal_nan=True)
    tol = {"float16": 1e-2, "float32": 1e-4, "float64": 1e-10}[dtype]
    return np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=tol, atol=tol)


def time_key(insts: dict, spec: PoolSpec, x: np.ndarray, budget_s: float) -> dict:
    for inst in insts.values():  # warm-up: sessions built, pages touched
        inst.forward(spec, x)
    times = {n: [] for n in insts}
    deadline = time.perf_counter() + budget_s
    r = 0
    while r < 3 or (time.perf_counter() < deadline and r < 50):
        order = list(insts) if r % 2 == 0 else list(insts)[::-1]
        for n in order:
            # untimed calls first: ONNX Runtime's workers spin for a while after its call, and
            # would take the cores from the C backend's second thread timed straight after it
            # (c read 13 ms instead of 1 on float16 avg s1 at 4 MiB)
            for _ in range(2):
                insts[n].forward(spec, x)
            t0 = time.perf_counter()
            insts[n].forward(spec, x)
            times[n].append(time.perf_counter() - t0)
        r += 1
    return {n: float(np.median(t) * 1e6) for n, t in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="backend threads (server default)")
    ap.add_argument("--budget", type=float, default=0.12, help="seconds of timing per key")
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    a = ap.parse_args(argv)

    # the server's malloc setting too: without it each big output page-faults in afresh, which
    # ONNX Runtime's own arena never does, and the table would measure malloc rather than kernels
    tune_malloc(MALLOC_TOP_PAD)
    insts = instances(a.threads)
    entries = []
    t_start = time.time()
    for mode in ("max", "avg", "lp"):
        for window, kw in WINDOW_SPECS.items():
            spec = PoolSpec(mode, p=2.0, **kw)
            for dtype in DTYPES_BY_MODE[mode]:
                for bucket, nbytes in enumerate(SIZES):
                    x = tensor(nbytes, dtype)
                    runs = {n: i for n, i in insts.items() if not i.supports(spec, dtype)}
                    if not runs:
                        continue
                    outs = {n: i.forward(spec, x)[0] for n, i in runs.items()}
                    first = next(iter(outs.values()))
                    for n, y in outs.items():
                        if not agree(mode, dtype, first, y):
                            raise SystemExit(f"backends disagree on {mode} {window} {dtype} {x.shape}: {n}")
                    micros = time_key(runs, spec, x, a.budget) if len(runs) > 1 else {
                        n: time_key(runs, spec, x, 0.0)[n] for n in runs}
                    best = min(micros, key=micros.get)
                    entries.append({"mode": mode, "window": window, "dtype": dtype, "bucket": bucket,
                                    "timed_bytes": int(x.nbytes), "backend": best,
                                    "micros": {n: round(v, 1) for n, v in micros.items()}})
                    print(f"{mode:3} {window:6} {dtype:7} {x.nbytes / KiB:8.0f} KiB  "
                          + "  ".join(f"{n} {v:10.1f} us" for n, v in micros.items()) + f"  -> {best}",
                          flush=True)
    doc = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
           "cpus": os.cpu_count(), "threads": a.threads, "load_average": os.getloadavg(),
           "seconds": round(time.time() - t_start, 1), "backends": list(insts),
           "bucket_bounds": list(DEFAULT_BUCKET_BOUNDS), "entries": entries}
    text = json.dumps(doc, indent=1) + "\n"
    Path(a.out).write_text(text)
    results = ROOT / "bench" / "results" / "backend_policy.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text)
    picks = {}
    for e in entries:
        picks[e["backend"]] = picks.get(e["backend"], 0) + 1
    print(f"wrote {a.out} and {results}: {len(entries)} keys, picks {picks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
