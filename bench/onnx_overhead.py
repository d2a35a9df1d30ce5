"""Per-call overhead of poolserve's ONNX backend over a bare InferenceSession.run.

For each shape of DESIGN.md's standard set, on the same graph and the same session:

  bare_run      session.run(["Y"], {"X": x})                      -- the floor we compare with
  bare_run_again  the same call again: a control that shows the noise floor of the run
  bare_iobind   IOBinding with the output bound to a preallocated numpy buffer (reused)
  bare_iobind_fresh  IOBinding to a new numpy array per call (what a backend returning y could do)
  bare_ortvals  session.run_with_ort_values on an OrtValue made from x
  backend       OnnxBackend.forward(spec, x)                        -- what the service calls

and prints backend / bare_run (target: < 1.10 for inputs >= 1 MB).  The other bare variants
are there to decide, by measurement, whether the backend should call run differently.
The overhead is timed on the backend, the bare call and the control alone; the variants in a
second phase against their own bare calls.  Calls alternate in a shuffled order, so that drift on a shared machine hits all of them alike;
each figure is the median per-call time, and the ratio of the fastest calls is printed too
(the least disturbed call of each method; the steadier figure when other work shares the CPUs).
Results: bench/results/onnx_overhead.json.

    .venv/bin/python bench/onnx_overhead.py [--mode max|avg|lp] [--threads N] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort

from poolserve.backends.onnx import OnnxBackend, graph_key
from poolserve.spec import PoolSpec

# DESIGN.md, "Performance method": name, input shape (NCHW), kernel / stride / pad
SHAPES = [
    ("tiny", (1, 16, 32, 32), 2, 2, 0),
    ("resnet-stem", (1, 64, 112, 112), 3, 2, 1),
    ("vgg-pool1", (1, 64, 224, 224), 2, 2, 0),
    ("batch32", (32, 64, 56, 56), 2, 2, 0),
    ("wide-overlap", (8, 256, 56, 56), 3, 2, 1),
    ("video3d", (2, 32, 16, 56, 56), 2, 2, 0),
]


def spec_for(mode: str, rank: int, k: int, s: int, p: int) -> PoolSpec:
    return PoolSpec(mode=mode, kernel_shape=(k,) * rank, strides=(s,) * rank, pads=(p,) * (2 * rank))


def sample(methods: dict, budget_s: float) -> dict[str, list[float]]:
    """Per-call seconds of each method, one call of each per round so that every method sees
    the same moments of a shared machine's load, in a new random order every round so that
    none always follows the same neighbour (the allocator state a call leaves matters for
    megabyte outputs); about budget_s in all."""
    samples = {m: [] for m in methods}
    order = list(methods)
    rng = random.Random(0)
    start = time.perf_counter()
    while min(len(v) for v in samples.values()) < 5 or time.perf_counter() - start < budget_s:
        rng.shuffle(order)
        for m in order:
            fn = methods[m]
            t = time.perf_counter()
            fn()
            samples[m].append(time.perf_counter() - t)
    return samples


def bench_shape(backend: OnnxBackend, mode: str, name, shape, k, s, p, budget_s: float) -> dict:
    rank = len(shape) - 2
    spec = spec_for(mode, rank, k, s, p)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    session = backend.session(graph_key("forward", spec, "float32", rank))
    y_ref, _ = backend.forward(spec, x)  # builds the session once, outside the timing

    binding = session.io_binding()
    binding.bind_cpu_input("X", x)
    y_buf = np.empty_like(y_ref)
    binding.bind_output("Y", "cpu", 0, np.float32, list(y_buf.shape), y_buf.ctypes.data)
    x_val = ort.OrtValue.ortvalue_from_numpy(x)
    run_opts = ort.RunOptions()

    def iobind_fresh():
        # what the backend could do: bind a new output array per call (it hands y to the caller)
        y = np.empty(y_ref.shape, np.float32)
        b = session.io_binding()
        b.bind_cpu_input("X", x)
        b.bind_output("Y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
        session.run_with_iobinding(b)
        return y

    # Two phases: the overhead figure from the backend and the bare call alone (plus the
    # control), then the call variants among themselves.  Mixed into one phase, the variants'
    # big allocations disturbed the calls that followed them and inflated the medians.
    overhead = {
        "bare_run": lambda: session.run(["Y"], {"X": x}),
        "bare_run_again": lambda: session.run(["Y"], {"X": x}),  # control: the noise floor
        "backend": lambda: backend.forward(spec, x),
    }
    variants = {
        "bare_run": overhead["bare_run"],
        "bare_iobind": lambda: session.run_with_iobinding(binding),
        "bare_iobind_fresh": iobind_fresh,
        "bare_ortvals": lambda: session.run_with_ort_values(["Y"], {"X": x_val}, run_opts)[0].numpy(),
    }
    for fn in list(overhead.values()) + list(variants.values()):  # warm up every path
        fn()
    np.testing.assert_array_equal(y_buf, y_ref)  # the bound output really is the answer
    samples = sample(overhead, budget_s * 0.6)
    var_samples = sample(variants, budget_s * 0.4)
    med = {m: statistics.median(v) for m, v in samples.items()}
    low = {m: min(v) for m, v in samples.items()}  # the least disturbed call: robust to load
    var_med = {m: statistics.median(v) for m, v in var_samples.items()}
    return {
        "name": name, "shape": list(shape), "kernel": k, "stride": s, "pad": p, "mode": mode,
        "input_bytes": int(x.nbytes), "calls": {m: len(v) for m, v in samples.items()},
        "variant_calls": {m: len(v) for m, v in var_samples.items()},
        "median_s": med, "min_s": low,
        "ratio_backend_vs_bare_run": med["backend"] / med["bare_run"],
        "ratio_backend_vs_bare_run_min": low["backend"] / low["bare_run"],
        "ratio_control_vs_bare_run": med["bare_run_again"] / med["bare_run"],
        "variants_median_s": var_med,
        "ratio_iobind_vs_bare_run": var_med["bare_iobind"] / var_med["bare_run"],
        "ratio_iobind_fresh_vs_bare_run": var_med["bare_iobind_fresh"] / var_med["bare_run"],
        "ratio_ortvals_vs_bare_run": var_med["bare_ortvals"] / var_med["bare_run"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="max", choices=("max", "avg", "lp"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=3.0, help="time budget per shape")
    ap.add_argument("--only", action="append", help="shape names to run (repeatable)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "onnx_overhead.json")
    args = ap.parse_args(argv)

    backend = OnnxBackend(threads=args.threads)
    rows = []
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op threads, mode {args.mode}, float32")
    print("times: median per call; columns after 'bare run' are ratios to it ('control' is bare run "
          "measured again: the noise floor)")
    print(f"{'shape':<13} {'MB':>6} {'bare run':>10} {'control':>8} {'iobind':>7} {'iob.new':>7} {'ortvals':>7} "
          f"{'backend':>10} {'overhead':>9} {'(min)':>7}")
    for name, shape, k, s, p in SHAPES:
        if args.only and name not in args.only:
            continue
        r = bench_shape(backend, args.mode, name, shape, k, s, p, args.seconds)
        rows.append(r)
        m = r["median_s"]
        print(f"{name:<13} {r['input_bytes'] / 2**20:6.2f} {m['bare_run'] * 1e3:8.3f}ms "
              f"{r['ratio_control_vs_bare_run']:7.3f}x {r['ratio_iobind_vs_bare_run']:6.3f}x "
              f"{r['ratio_iobind_fresh_vs_bare_run']:6.3f}x {r['ratio_ortvals_vs_bare_run']:6.3f}x "
              f"{m['backend'] * 1e3:8.3f}ms {100 * (r['ratio_backend_vs_bare_run'] - 1):+8.1f}% "
              f"{100 * (r['ratio_backend_vs_bare_run_min'] - 1):+6.1f}%")
        sys.stdout.flush()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "onnxruntime": ort.__version__, "threads": args.threads, "results": rows,
    }, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
